"""``jobs.task``: Django's ``@task`` plus ``max_attempts``, ``timeout`` and ``backoff``.

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
):
    """Declare a task: ``@task`` or ``@task(max_attempts=5, timeout=30, ...)``."""

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
        )

    return wrapper(function) if function is not None else wrapper
