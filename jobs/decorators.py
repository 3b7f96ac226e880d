"""``jobs.task``: Django's ``@task`` plus the queue's options: ``max_attempts``, ``timeout``,
``backoff``, ``retry_on``/``discard_on``, and job control (``unique``,
``concurrency_key``/``concurrency_limit``, ``rate_limit``: see ``jobs.limits``).

The extra options ride on a ``Task`` subclass, so a task declared here is still a
plain Django task: it can be enqueued on any backend (one that does not know the
options ignores them), and apps stay portable. ``JobTask`` is also the database
backend's ``task_class``: on Django 6.1+, ``django.tasks.task(max_attempts=5, ...)``
hands its extra keywords to it, so Django's own decorator takes every option here
(an unknown one is a TypeError when the task is declared).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.utils.module_loading import import_string

from .framework import DEFAULT_TASK_BACKEND_ALIAS, DEFAULT_TASK_QUEUE_NAME, Task

Exceptions = tuple[type[BaseException], ...]


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
    # Only these exceptions are retried (None: any); any other fails the job at once.
    retry_on: Exceptions | None = None
    # These exceptions fail the job at once, never retried.
    discard_on: Exceptions = ()

    def __post_init__(self):
        for name in ("retry_on", "discard_on"):
            value = getattr(self, name)
            if value is None and name == "retry_on":
                continue
            if not (isinstance(value, tuple) and all(isinstance(cls, type) and issubclass(cls, BaseException)
                                                     for cls in value)):
                raise TypeError(f"{self.func.__module__}.{self.func.__qualname__}: {name} must be a tuple of "
                                f"exception classes, got {value!r}")
        if self.concurrency_key is not None and self.concurrency_limit is None:
            object.__setattr__(self, "concurrency_limit", 1)  # the documented default
        Task.__post_init__(self)  # the backend's validate_task (zero-argument super() fails with slots)

    def __reduce__(self):
        # The task object its module declares, with this one's defaults: the options themselves
        # (a backoff lambda, a unique callable) need not pickle.
        return (_declared_task, (self.module_path, self.priority, self.queue_name, self.run_after, self.backend))


def _declared_task(path: str, priority, queue_name, run_after, backend):
    task = import_string(path)
    if not isinstance(task, Task):
        raise ValueError(f"{path!r} is not a task, cannot unpickle a task of it")
    return task.using(priority=priority, queue_name=queue_name, run_after=run_after, backend=backend)


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
    retry_on: Exceptions | None = None,
    discard_on: Exceptions = (),
):
    """Declare a task: ``@task`` or ``@task(max_attempts=5, timeout=30, unique=True, ...)``.

    ``concurrency_limit`` defaults to 1 when a ``concurrency_key`` is given.
    ``retry_on=(ExcA, ...)`` retries only those exceptions (any other fails the job at
    once); ``discard_on=(ExcB, ...)`` fails the job at once on those. A retried
    exception still waits ``backoff`` (or the backend's ``retry_backoff``).
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
            concurrency_limit=concurrency_limit,
            rate_limit=rate_limit,
            retry_on=retry_on,
            discard_on=discard_on,
        )

    return wrapper(function) if function is not None else wrapper
