"""Run one claimed attempt: resolve the task, call it, describe the outcome.

Runs in a worker's job thread. It records nothing itself: the outcome goes back to
the worker's main thread, which applies the retry policy and writes it (batched
with other outcomes and the next claim, in one transaction).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.utils import timezone
from django.utils.module_loading import import_string

from . import retry
from .backends import to_json
from .exceptions import DoNotRetry, JobTimeout, NotATask, ResultNotSerialisable, TaskNotFound
from .framework import Task, TaskContext, TaskError, TaskResultStatus, task_finished, task_started
from .models import Job, error_entry

logger = logging.getLogger(__name__)

_resolved: dict[str, Task] = {}


def resolve_task(path: str) -> Task:
    """The task object a job names, or TaskNotFound / NotATask.

    Only objects declared with ``@task`` run: a row naming ``os.system`` fails here
    without calling anything. Successes are cached; code does not change under a
    running worker.
    """
    task = _resolved.get(path)
    if task is not None:
        return task
    try:
        obj = import_string(path)
    except Exception as exc:  # ImportError, or the module itself raising on import
        raise TaskNotFound(f"task {path!r} does not import: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Task):
        raise NotATask(f"{path!r} is a {type(obj).__name__}, not a task declared with @task; refusing to run it")
    _resolved[path] = obj
    return obj


@dataclass
class Outcome:
    """What one attempt came to; the worker decides retry and writes it."""

    job: Job
    succeeded: bool
    duration: float
    return_value: Any = None
    error: dict | None = None
    permanent: bool = False  # a failure no retry can mend
    custom_delay: float | None = None  # what the task's backoff callable returned
    custom_given: bool = False  # whether it had one that answered
    decision: retry.RetryDecision | None = None  # for a failure: decided where it happened, when known


def attempt_limit(job: Job, backend) -> int:
    """The attempt limit in force for ``job`` now (see ``DatabaseBackend.attempt_limit``).

    Only a row without a limit of its own needs its task, found in the worker's cache
    of resolved tasks; a path that does not resolve gets the backend's default.
    """
    if job.max_attempts is not None:
        return job.max_attempts
    try:
        task = resolve_task(job.task_path)
    except Exception:  # TaskNotFound, NotATask: the job fails for good anyway
        task = None
    return backend.attempt_limit(task)


def decide_retry(job: Job, outcome: Outcome, *, limit: int, base: float) -> retry.RetryDecision:
    """The retry policy for a failed attempt, under the attempt limit in force now."""
    if outcome.permanent:
        cls = (outcome.error or {}).get("exception_class_path", "the error")
        return retry.RetryDecision(False, reason=f"not retried: {cls} is final")
    return retry.decide(attempt=job.attempts, max_attempts=limit, base=base, custom_delay=outcome.custom_delay,
                        custom_given=outcome.custom_given)


def send_finished(backend, result, *, status: TaskResultStatus, error: dict | None = None,
                  return_value: Any = None) -> None:
    """``task_finished`` for a job that has finished: SUCCESSFUL, or FAILED for good.

    Django sends it for a finished result only. An attempt that failed and will be
    retried is not finished (its job is READY again), so it sends nothing; the
    retry is logged at WARNING instead. The result is what ``get_result`` will say
    once the outcome is written: its status, ``finished_at``, every error, the
    return value.
    """
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", timezone.now())
    if error is not None:
        result.errors.append(TaskError(exception_class_path=error["exception_class_path"],
                                       traceback=error["traceback"]))
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", return_value)
    task_finished.send(sender=type(backend), task_result=result)


def failure(job: Job, exc: BaseException, *, worker_id: str, duration: float = 0.0, permanent: bool = False,
            traceback: str | None = None) -> Outcome:
    error = error_entry(exc, attempt=job.attempts, worker_id=worker_id, when=timezone.now(), traceback=traceback)
    return Outcome(job=job, succeeded=False, duration=duration, error=error, permanent=permanent)


def reset_connections() -> None:
    """Give the next job clean connection state, without paying for a new connection.

    A job that died mid-transaction or left autocommit off must not leak that into
    the next one, and a broken connection is closed (the next query reopens it). A
    healthy one stays open whatever CONN_MAX_AGE says: that setting is about web
    requests, and Django's default of 0 would cost a new connection per job.
    """
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        if conn.errors_occurred:
            if not conn.is_usable():
                conn.close()
                continue
            conn.errors_occurred = False
        if not conn.in_atomic_block and not conn.get_autocommit():
            conn.rollback()
            conn.set_autocommit(True)


def _call(task: Task, result, job: Job):
    args = [TaskContext(task_result=result), *job.args] if task.takes_context else list(job.args)
    timeout = getattr(task, "timeout", None)
    if timeout and asyncio.iscoroutinefunction(task.func):
        # A coroutine can really be cancelled, so the async path enforces its own timeout.
        async def bounded():
            return await asyncio.wait_for(task.func(*args, **job.kwargs), timeout)

        try:
            return asyncio.run(bounded())
        except TimeoutError:
            raise JobTimeout(f"attempt timed out after {timeout:g}s") from None
    return task.call(*args, **job.kwargs)


def run_attempt(job: Job, task: Task, *, backend, worker_id: str) -> Outcome:
    """Call the task for this attempt. Never raises: every failure is an Outcome.

    A failure's retry decision is taken here, under the attempt limit in force now,
    and the worker persists it; ``task_finished`` goes out only when the job is
    finished (see ``send_finished``).
    """
    started = time.monotonic()
    reset_connections()
    result = backend.to_task_result(job, task)
    task_started.send(sender=type(backend), task_result=result)
    try:
        raw_value = _call(task, result, job)
    except BaseException as exc:  # a job's SystemExit must not stop the worker either
        reset_connections()
        # Still inside the handler: receivers of task_finished see the exception (Django's log one does).
        return _failed(job, task, exc, result, backend=backend, worker_id=worker_id, started=started)
    reset_connections()
    try:
        value = to_json(raw_value, f"return value of {job.task_path}")
    except TypeError as exc:
        return _failed(job, task, ResultNotSerialisable(str(exc)), result, backend=backend, worker_id=worker_id,
                       started=started)
    send_finished(backend, result, status=TaskResultStatus.SUCCESSFUL, return_value=value)
    return Outcome(job=job, succeeded=True, duration=time.monotonic() - started, return_value=value)


def _failed(job: Job, task: Task, exc: BaseException, result, *, backend, worker_id: str, started: float) -> Outcome:
    outcome = failure(job, exc, worker_id=worker_id, duration=time.monotonic() - started,
                      permanent=isinstance(exc, DoNotRetry))
    if not outcome.permanent:
        _ask_backoff(task, exc, result, outcome)
    outcome.decision = decide_retry(job, outcome, limit=backend.attempt_limit(task, job.max_attempts),
                                    base=backend.jobs_options.retry_backoff)
    if not outcome.decision.retry:
        send_finished(backend, result, status=TaskResultStatus.FAILED, error=outcome.error)
    return outcome


def _ask_backoff(task: Task, exc: BaseException, result, outcome: Outcome) -> None:
    """Ask the task's own ``backoff(exception, task_result)`` for the next delay."""
    backoff = getattr(task, "backoff", None)
    if backoff is None:
        return
    try:
        delay = backoff(exc, result)
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))):
            raise TypeError(f"backoff returned {delay!r}; expected seconds or None")
    except Exception:
        logger.exception("backoff of task=%s raised; using the default retry policy", task.module_path)
        return
    outcome.custom_delay, outcome.custom_given = delay, True
