"""``DatabaseBackend``: the Django Tasks backend that stores each job as a row.

Enqueueing is an INSERT in the caller's transaction, so a job enqueued inside
``transaction.atomic()`` is seen by workers only after commit, and not at all after
a rollback.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from types import SimpleNamespace

from django.core import checks
from django.db import connections, router, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from .conf import JobsOptions, OptionsError, parse_options
from .decorators import JobTask
from .framework import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_enqueued,
)
from .wakeup import notify_enqueued


def to_json(value, culprit: str):
    """``value`` as plain JSON types, or a TypeError that names the culprit."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{culprit} is not JSON-serialisable ({type(value).__name__}: {exc})") from exc


def serialise_arguments(task: Task, args, kwargs) -> tuple[list, dict]:
    """Check every argument before anything is written, naming the one that fails."""
    if all(isinstance(key, str) for key in kwargs):
        try:  # the common case in one round: the whole call at once
            json_args, json_kwargs = json.loads(json.dumps([args, kwargs], allow_nan=False))
            return json_args, json_kwargs
        except (TypeError, ValueError):
            pass  # find and name the culprit below
    path = task.module_path
    json_args = [to_json(value, f"{path}: positional argument {index}") for index, value in enumerate(args)]
    json_kwargs = {}
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise TypeError(f"{path}: keyword argument names must be strings, got {key!r}")
        json_kwargs[key] = to_json(value, f"{path}: keyword argument {key!r}")
    return json_args, json_kwargs


def result_status(job_status: str) -> TaskResultStatus:
    """Django knows four states; a cancelled job is, to it, one that failed."""
    if job_status == "CANCELLED":
        return TaskResultStatus.FAILED
    return TaskResultStatus(job_status)


class DatabaseBackend(BaseTaskBackend):
    task_class = JobTask

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    @cached_property
    def jobs_options(self) -> JobsOptions:
        """OPTIONS, validated; ``manage.py check`` reports the same errors by key."""
        try:
            return parse_options(self.options)
        except OptionsError as exc:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(f"TASKS[{self.alias!r}]: {exc}") from exc

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
                                         or max_attempts < 1):
            raise InvalidTask(f"{task.module_path}: max_attempts must be an integer >= 1, got {max_attempts!r}")
        timeout = getattr(task, "timeout", None)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or timeout <= 0):
            raise InvalidTask(f"{task.module_path}: timeout must be a number of seconds > 0, got {timeout!r}")
        backoff = getattr(task, "backoff", None)
        if backoff is not None and not callable(backoff):
            raise InvalidTask(f"{task.module_path}: backoff must be callable, got {backoff!r}")

    def max_attempts_for(self, task: Task) -> int:
        return getattr(task, "max_attempts", None) or self.jobs_options.max_attempts

    def enqueue(self, task: Task, args, kwargs) -> TaskResult:
        from .models import Job

        self.validate_task(task)
        json_args, json_kwargs = serialise_arguments(task, args, kwargs)
        now = timezone.now()
        job = Job.objects.create(
            task_path=task.module_path, backend=self.alias, queue_name=task.queue_name, priority=task.priority,
            args=json_args, kwargs=json_kwargs, run_after=task.run_after or now, enqueued_at=now,
            max_attempts=self.max_attempts_for(task),
        )
        if task.run_after is None or task.run_after <= now:
            notify_enqueued(connections[job._state.db], task.queue_name)
        result = self.to_task_result(job, task)
        task_enqueued.send(type(self), task_result=result)
        return result

    def enqueue_many(self, task: Task, calls: Iterable[tuple[Sequence, Mapping]], *,
                     batch_size: int = 1000) -> list[TaskResult]:
        """Enqueue one job per ``(args, kwargs)`` pair in a few INSERTs, all or nothing.

        Every call's arguments are checked before anything is written; a bad one raises
        naming its index. Workers are woken once, on commit.
        """
        from .models import Job

        self.validate_task(task)
        now = timezone.now()
        common = dict(task_path=task.module_path, backend=self.alias, queue_name=task.queue_name,
                      priority=task.priority, run_after=task.run_after or now, enqueued_at=now,
                      max_attempts=self.max_attempts_for(task))
        rows = []
        for index, (args, kwargs) in enumerate(calls):
            try:
                json_args, json_kwargs = serialise_arguments(task, args, kwargs)
            except TypeError as exc:
                raise TypeError(f"call {index}: {exc}") from exc
            rows.append({"args": json_args, "kwargs": json_kwargs})
        using = router.db_for_write(Job)
        with transaction.atomic(using=using):
            ids = Job.objects.db_manager(using).insert_many(common, rows, batch_size=min(batch_size, 500))
            if ids and common["run_after"] <= now:
                notify_enqueued(connections[using], task.queue_name)
        # What to_task_result reads, without paying for a model instance per job.
        fresh = dict(common, status="READY", worker_id="", worker_ids=[], errors=[], started_at=None,
                     finished_at=None, last_attempted_at=None, return_value=None)
        jobs = [SimpleNamespace(pk=pk, **fresh, **row) for pk, row in zip(ids, rows)]
        result_task = task.using(priority=task.priority, queue_name=task.queue_name, run_after=common["run_after"])
        results = [self.to_task_result(job, task, result_task=result_task) for job in jobs]
        for result in results:
            task_enqueued.send(type(self), task_result=result)
        return results

    def get_result(self, result_id) -> TaskResult:
        from .models import Job

        try:
            job = Job.objects.get(pk=int(result_id), backend=self.alias)
        except (Job.DoesNotExist, ValueError, TypeError):
            raise TaskResultDoesNotExist(result_id) from None
        try:
            task = import_string(job.task_path)
        except ImportError as exc:
            raise TaskResultDoesNotExist(f"{result_id}: task {job.task_path!r} does not import ({exc})") from exc
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(f"{result_id}: {job.task_path!r} is not a task")
        return self.to_task_result(job, task)

    def to_task_result(self, job, task: Task, *, result_task: Task | None = None) -> TaskResult:
        """The framework's view of a job row (``result_task``: the task as enqueued, if known)."""
        worker_ids = list(job.worker_ids)
        if job.status == "RUNNING":
            worker_ids.append(job.worker_id)  # the attempt under way counts too
        result = TaskResult(
            task=result_task or task.using(priority=job.priority, queue_name=job.queue_name, run_after=job.run_after),
            id=str(job.pk),
            status=result_status(job.status),
            enqueued_at=job.enqueued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            last_attempted_at=job.last_attempted_at,
            args=job.args,
            kwargs=job.kwargs,
            backend=self.alias,
            errors=[TaskError(exception_class_path=e["exception_class_path"], traceback=e["traceback"])
                    for e in job.errors],
            worker_ids=worker_ids,
        )
        if job.status == "SUCCESSFUL":
            object.__setattr__(result, "_return_value", job.return_value)
        return result

    def check(self, **kwargs):
        yield from super().check(**kwargs)
        try:
            parse_options(self.options)
        except OptionsError as exc:
            yield checks.Error(
                f"TASKS[{self.alias!r}]: {exc}",
                hint="See the README's Configuration section for the keys and their ranges.",
                obj=f"TASKS[{self.alias!r}]['OPTIONS'][{exc.key!r}]",
                id="jobs.E001",
            )


def database_backend(alias: str) -> DatabaseBackend:
    """``TASKS[alias]``, which must be this backend; a ValueError naming the alias otherwise.

    For commands that take ``--backend``: they turn the message into a CommandError.
    """
    try:
        backend = task_backends[alias]
    except Exception as exc:  # an unknown alias, a backend that does not import, bad OPTIONS
        raise ValueError(f"TASKS has no usable backend {alias!r}: {exc}") from exc
    if not isinstance(backend, DatabaseBackend):
        raise ValueError(f"TASKS[{alias!r}] is {type(backend).__name__}, not jobs.backends.DatabaseBackend")
    return backend
