"""``jobs.task``: Django's ``@task`` plus the queue's options: ``max_attempts``, ``timeout``,
``backoff``, and job control (``unique``, ``concurrency_key``/``concurrency_limit``,
``rate_limit``: see ``jobs.limits``).

The extra options ride on a ``Task`` subclass, so a task declared here is still a
plain Django task: it can be enqueued on any backend (one that does not know the
options ignores them), and apps stay portable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .framework import DEFAULT_TASK_BACKEND_ALIAS, DEFAULT_TASK_QUEUE_NAME, Task


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTask(Task):
    """A task with the queue's per-task options; None means the backend's default."""

    # Runs of a job before it ends FAILED (overrides OPTIONS["max_attempts"]).
    max_attempts: int | None = None
    # Seconds one attempt may run before it fails as timed out.
    timeout: float | None = None
    # (exception, task_result) -> seconds before the next attempt, or None: no retry.
    backoff: Callable[[BaseException, Any], float | None] | None = None
    # At most one READY job per key: True (the task and its arguments) or (*args, **kwargs) -> str.
    unique: bool | Callable[..., str] = False
    # At most concurrency_limit jobs with the same key RUNNING: a str or (*args, **kwargs) -> str.
    concurrency_key: str | Callable[..., str] | None = None
    concurrency_limit: int | None = None
    # At most N attempts started per period ("N/s", "N/m", "N/h"), per concurrency key if any, else per task.
    rate_limit: str | None = None


def task(
    function=None,
    *,
    priority: int = 0,
    queue_name: str = DEFAULT_TASK_QUEUE_NAME,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    takes_context: bool = False,
    max_attempts: int | None = None,
    timeout: float | None = None,
    backoff: Callable[[BaseException, Any], float | None] | None = None,
    unique: bool | Callable[..., str] = False,
    concurrency_key: str | Callable[..., str] | None = None,
    concurrency_limit: int | None = None,
    rate_limit: str | None = None,
):
    """Declare a task: ``@task`` or ``@task(max_attempts=5, timeout=30, unique=True, ...)``.

    ``concurrency_limit`` defaults to 1 when a ``concurrency_key`` is given.
    """

    def wrapper(func):
        return JobTask(
            func=func,
            priority=priority,
            queue_name=queue_name,
            backend=backend,
            takes_context=takes_context,
            max_attempts=max_attempts,
            timeout=timeout,
            backoff=backoff,
            unique=unique,
            concurrency_key=concurrency_key,
            concurrency_limit=1 if concurrency_key is not None and concurrency_limit is None else concurrency_limit,
            rate_limit=rate_limit,
        )

    return wrapper(function) if function is not None else wrapper
