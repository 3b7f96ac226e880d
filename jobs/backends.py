"""``DatabaseBackend``: the Django Tasks backend that stores each job as a row.

Enqueueing is an INSERT in the caller's transaction, so a job enqueued inside
``transaction.atomic()`` is seen by workers only after commit, and not at all after
a rollback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, fields
from functools import cache, cached_property
from types import SimpleNamespace

from django.apps import apps
from django.core import checks
from django.db import connections, router, transaction
from django.utils import timezone

from .batch_scope import current_batch_id
from .conf import MAX_ATTEMPTS, MAX_TIMEOUT, JobsOptions, OptionsError, parse_options
from .decorators import JobTask
from .exceptions import JobError
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
from .jsontext import json_depth
from .limits import MAX_CONCURRENCY, MAX_KEY, key_problem, limit_key, parse_rate, unique_key
from .resolve import SETTING as TASK_MODULES_SETTING
from .resolve import refusal, resolve_task

# Deepest nesting of lists and objects a stored value may have: both databases (SQLite
# refuses JSON deeper than 1000) and the worker's decoder must be able to read it back.
MAX_NESTING = 500


# A NUL character (\u0000 in JSON, after an odd number of backslashes) and a lone UTF-16
# surrogate are valid in a Python str but refused by PostgreSQL's jsonb (and by UTF-8).
_UNSTORABLE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000|[\ud800-\udfff]")


def _dumps(value, *, depth: int = MAX_NESTING, limit: int = MAX_NESTING) -> str:
    """``value`` as the JSON text the database will store, or ValueError/TypeError saying why not.
    ``depth``: the nesting allowed for ``value`` itself; ``limit``: the one a stored column may
    have, named in the error (a server's may be less than MAX_NESTING: see ``nesting_limit``)."""
    text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    # Counting brackets is a cheap upper bound on the depth; only text that could be too deep is measured.
    if text.count("[") + text.count("{") > depth and json_depth(text) > depth:
        raise ValueError(f"nested more than {limit} levels deep{_server(limit)}")
    if _UNSTORABLE.search(text):
        raise ValueError("a string holds a NUL character or a lone surrogate, which the database cannot store")
    return text


def nesting_limit(connection) -> int:
    """How deeply an argument may nest on ``connection``'s database: MAX_NESTING, or less where
    the server refuses deeper JSON (MariaDB 30, MySQL 99: their limits, less the arguments' list)."""
    from .sql import statements

    return min(MAX_NESTING, getattr(statements(connection), "max_json_depth", MAX_NESTING))


def _server(limit: int) -> str:
    return "" if limit >= MAX_NESTING else " (the most this database server stores in the arguments' list)"


def to_json(value, culprit: str, *, limit: int = MAX_NESTING):
    """``value`` as plain JSON types, or a TypeError that names the culprit."""
    try:
        return json.loads(_dumps(value, depth=limit, limit=limit))
    except (TypeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise TypeError(f"{culprit} is not JSON-serialisable ({type(value).__name__}: {reason})") from exc


def serialise_arguments(task: Task, args, kwargs, *, limit: int = MAX_NESTING) -> tuple[list, dict]:
    """Check every argument before anything is written, naming the one that fails. ``limit``:
    the nesting a stored column may have (``nesting_limit``)."""
    if all(isinstance(key, str) for key in kwargs):
        try:  # the common case in one round: the whole call at once (two levels more: the call, the list)
            json_args, json_kwargs = json.loads(_dumps([list(args), kwargs], depth=limit + 2, limit=limit))
            return json_args, json_kwargs
        except (TypeError, ValueError, RecursionError):
            pass  # find and name the culprit below
    path = task.module_path
    json_args = [to_json(value, f"{path}: positional argument {index}", limit=limit)
                 for index, value in enumerate(args)]
    json_kwargs = {}
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise TypeError(f"{path}: keyword argument names must be strings, got {key!r}")
        json_kwargs[key] = to_json(value, f"{path}: keyword argument {key!r}", limit=limit)
    return json_args, json_kwargs


def _checked_batch(calls: list, limit: int = MAX_NESTING) -> tuple[str, list]:
    """(the JSON text of ``calls``, the calls as JSON gives them back): one dump and one load for
    the whole batch, and the same checks as one call's (three levels more: the batch, the call, the list)."""
    for _args, kwargs in calls:
        if not all(isinstance(key, str) for key in kwargs):
            raise TypeError("keyword argument names must be strings")
    text = _dumps(calls, depth=limit + 3, limit=limit)
    return text, json.loads(text)


@cache
def _result_fields() -> tuple[tuple[str, object], ...]:
    return tuple((f.name, None if f.default is MISSING else f.default) for f in fields(TaskResult))


def new_result(values: dict) -> TaskResult:
    """A TaskResult of values that are JSON already (read from a row, or just serialised).

    Built without its ``__post_init__``, which walks the arguments once more to
    normalise them to JSON types: a fifth of bulk enqueue's time, for nothing.
    """
    result = object.__new__(TaskResult)
    for name, default in _result_fields():
        object.__setattr__(result, name, values.get(name, default))
    return result


def result_status(job_status: str) -> TaskResultStatus:
    """Django knows four states; a cancelled job is, to it, one that failed, and a child waiting
    for its parents one that is ready."""
    if job_status == "CANCELLED":
        return TaskResultStatus.FAILED
    if job_status == "WAITING":
        return TaskResultStatus.READY
    return TaskResultStatus(job_status)


BULK_BATCH = 5000  # calls per statement of a bulk enqueue


class InvalidOption(InvalidTask, ValueError):
    """A job-control option whose value no database would store (a key with NUL, an overlong rate)."""
# What a new job's TaskResult reads beyond its inserted columns.
FRESH = dict(status="READY", worker_id="", worker_ids=[], errors=[], started_at=None, finished_at=None,
             last_attempted_at=None, return_value=None)


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
                                         or not 1 <= max_attempts <= MAX_ATTEMPTS):
            raise InvalidTask(f"{task.module_path}: max_attempts must be an integer from 1 to {MAX_ATTEMPTS}, "
                              f"got {max_attempts!r}")
        timeout = getattr(task, "timeout", None)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout <= MAX_TIMEOUT):
            raise InvalidTask(f"{task.module_path}: timeout must be a number of seconds > 0 and <= {MAX_TIMEOUT:g}, "
                              f"got {timeout!r}")

        backoff = getattr(task, "backoff", None)
        if backoff is not None and not callable(backoff):
            raise InvalidTask(f"{task.module_path}: backoff must be callable, got {backoff!r}")
        self._validate_control(task)

    def _validate_control(self, task: Task) -> None:
        """Job control's options (jobs.limits): bad ones are refused when the task is declared."""
        path = task.module_path
        unique = getattr(task, "unique", False)
        if not isinstance(unique, bool) and not callable(unique):
            raise InvalidTask(f"{path}: unique must be True, False or a callable (*args, **kwargs) -> str, "
                              f"got {unique!r}")
        key, limit = getattr(task, "concurrency_key", None), getattr(task, "concurrency_limit", None)
        if key is not None and not callable(key) and not (isinstance(key, str) and 0 < len(key) <= MAX_KEY):
            raise InvalidTask(f"{path}: concurrency_key must be a non-empty str of at most {MAX_KEY} characters "
                              f"or a callable (*args, **kwargs) -> str, got {key!r}")
        if isinstance(key, str) and key_problem(key):
            raise InvalidOption(f"{path}: concurrency_key {key_problem(key)}: {key[:80]!r}")
        if limit is not None:
            if key is None:
                raise InvalidTask(f"{path}: concurrency_limit needs a concurrency_key")
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CONCURRENCY:
                raise InvalidTask(f"{path}: concurrency_limit must be an integer from 1 to {MAX_CONCURRENCY}, "
                                  f"got {limit!r}")
        rate = getattr(task, "rate_limit", None)
        if rate is not None:
            try:
                parse_rate(rate)
            except ValueError as exc:
                raise InvalidOption(f"{path}: {exc}") from None

    def validate_runnable(self, task: Task) -> None:
        """Refuse to enqueue a job that no worker would import (see ``jobs.resolve``).

        Checked at enqueue, not when the task is declared: a module outside the
        allowed ones still imports, and says what to change when it is used.
        """
        reason = refusal(task.module_path)
        if reason:
            raise InvalidTask(f"{reason}: a worker would not run it. Declare the task in an installed app, "
                              f"or add its module to settings.{TASK_MODULES_SETTING}")

    def attempt_limit(self, task: Task | None, stored: int | None = None) -> int:
        """The attempt limit in force now for a job of ``task`` whose row holds ``stored``.

        A row holds a number only when its task set ``max_attempts`` itself (or it was
        written before the limit was looked up at run time); otherwise the default
        configured now applies, so changing OPTIONS (or, for ``@background`` tasks,
        ``settings.MAX_ATTEMPTS``) reaches the jobs already queued, as in
        django-background-tasks. Asked when an attempt ends, never stored.
        """
        if stored is not None:
            return stored
        default = getattr(task, "default_max_attempts", None)
        return default(self) if default is not None else self.jobs_options.max_attempts

    def enqueue(self, task: Task, args, kwargs, *, meta: dict | None = None,
                initial: dict | None = None) -> TaskResult:
        """Django's enqueue: one INSERT in the caller's transaction (and on PostgreSQL the
        wake-up in the same statement). ``meta`` is where the job came from (the
        scheduler's run, a django-background-tasks call): written with the row, never
        patched in afterwards. A unique task whose key a READY job holds writes nothing
        and hands back that job's result (same id). ``initial``: a child's ``status`` and
        ``waiting_for`` (``jobs.dependencies``)."""
        self.validate_task(task)
        self.validate_runnable(task)
        json_args, json_kwargs = serialise_arguments(task, args, kwargs, limit=self._nesting_limit())
        now = timezone.now()
        values = self.row_values(task, now, args=json_args, kwargs=json_kwargs, meta=meta or {}, **(initial or {}))
        due = (task.run_after is None or task.run_after <= now) and values.get("status", "READY") == "READY"
        statements = self._statements()
        if values["limit_key"]:
            statements.ensure_limits([values["limit_key"]])
        for _ in range(3):
            job_id = statements.insert_job(values, notify=task.queue_name if due else None)
            if job_id is not None:
                break
            # A READY job has this unique key: it is the result (unless a worker took it just now).
            existing = statements.ready_unique(self.alias, [values["unique_key"]]).get(values["unique_key"])
            if existing is not None:
                return self.get_result(existing)
        else:
            raise RuntimeError(f"{task.module_path}: unique key {values['unique_key']!r} kept changing hands")
        result = self.to_task_result(SimpleNamespace(pk=job_id, **{**FRESH, **values}), task, result_task=task)
        task_enqueued.send(type(self), task_result=result)
        return result

    def enqueue_many(self, task: Task, calls: Iterable[tuple[Sequence, Mapping]], *,
                     batch_size: int = 1000) -> list[TaskResult]:
        """Enqueue one job per ``(args, kwargs)`` pair in a few INSERTs, all or nothing.

        Every call's arguments are checked before anything is written; a bad one raises
        naming its index. The calls travel as one JSON text per 5000, checked and
        stored as a whole; workers are woken once, on commit. Calls of a unique task
        that share a key (with each other, or with a READY job) make one job: their
        results are that job's.
        """
        self.validate_task(task)
        self.validate_runnable(task)
        calls = [[list(args), kwargs] for args, kwargs in calls]
        try:
            limit = self._nesting_limit()
            batches = [_checked_batch(calls[start:start + BULK_BATCH], limit)
                       for start in range(0, len(calls), BULK_BATCH)]
        except (TypeError, ValueError, RecursionError):
            for index, (args, kwargs) in enumerate(calls):  # name the culprit
                try:
                    serialise_arguments(task, args, kwargs, limit=limit)
                except TypeError as exc:
                    raise TypeError(f"call {index}: {exc}") from exc
            raise
        loaded = [call for _, batch in batches for call in batch]
        keyed = bool(getattr(task, "unique", False) or getattr(task, "concurrency_key", None)
                     or getattr(task, "rate_limit", None))
        if keyed:  # each call's keys travel with it
            loaded = [[args, kwargs, unique_key(task, args, kwargs), limit_key(task, args, kwargs)]
                      for args, kwargs in loaded]
            texts = [json.dumps(loaded[start:start + BULK_BATCH]) for start in range(0, len(loaded), BULK_BATCH)]
        else:
            texts = [text for text, _ in batches]
        now = timezone.now()
        common = self.row_values(task, now)
        due = task.run_after is None or task.run_after <= now
        from .models import Job

        statements = self._statements()
        with transaction.atomic(using=router.db_for_write(Job)):
            limit_keys = [call[3] for call in loaded if keyed and call[3]]
            if limit_keys:
                statements.ensure_limits(limit_keys)
            inserted = statements.insert_calls(common, texts, notify=task.queue_name if due else None)
            if getattr(task, "unique", False):
                by_key = {key: pk for pk, key in inserted}
                by_key.update(statements.ready_unique(self.alias, [c[2] for c in loaded if c[2] not in by_key]))
                ids = [by_key[call[2]] for call in loaded]
            else:
                ids = [pk for pk, _ in inserted]
        base = dict(task=task, status=TaskResultStatus.READY, enqueued_at=now, started_at=None, finished_at=None,
                    last_attempted_at=None, backend=self.alias)
        new_ids = {pk for pk, _ in inserted}
        made: dict[int, TaskResult] = {}
        results = []
        for pk, call in zip(ids, loaded):
            if pk not in made:  # the first call of a key made its job; a READY one made it before
                made[pk] = (new_result(dict(base, id=str(pk), args=call[0], kwargs=call[1], errors=[],
                                            worker_ids=[])) if pk in new_ids else self.get_result(pk))
            results.append(made[pk])
        for pk, result in made.items():
            if pk in new_ids:
                task_enqueued.send(type(self), task_result=result)
        return results

    def row_values(self, task: Task, now, **values) -> dict:
        """The columns of a new job of ``task`` (its arguments already JSON), as ``jobs.sql`` inserts them."""
        args, kwargs = values.get("args"), values.get("kwargs")
        row = dict(task_path=task.module_path, backend=self.alias, queue_name=task.queue_name, batch_id=current_batch_id(),
                   priority=task.priority, run_after=task.run_after or now, task_run_after=task.run_after,
                   enqueued_at=now, max_attempts=getattr(task, "max_attempts", None),
                   concurrency_limit=getattr(task, "concurrency_limit", None),
                   rate_limit=getattr(task, "rate_limit", None), **values)
        if args is not None:  # one call: its keys (a bulk enqueue sends each call's with the call)
            row["unique_key"], row["limit_key"] = unique_key(task, args, kwargs), limit_key(task, args, kwargs)
        return row

    def insert_rows(self, rows: Sequence[dict], *, notify: str | None = None) -> list[int]:
        """Insert many jobs prepared with ``row_values`` in one transaction (the importer); the ids of
        those inserted, in order. As at enqueue, each limit key gets its row, and a row whose unique
        key a READY job holds (or an earlier row of the same call) is not inserted."""
        from .models import Job

        using = router.db_for_write(Job)
        with transaction.atomic(using=using):
            statements = self._statements()
            limit_keys = [row["limit_key"] for row in rows if row.get("limit_key")]
            if limit_keys:
                statements.ensure_limits(limit_keys)
            return statements.insert_jobs(rows, notify=notify)

    def _statements(self):
        from .models import Job
        from .sql import statements

        return statements(connections[router.db_for_write(Job)])

    def _nesting_limit(self) -> int:
        from .models import Job

        return nesting_limit(connections[router.db_for_write(Job)])

    def get_result(self, result_id) -> TaskResult:
        from .models import Job

        try:
            job = Job.objects.get(pk=int(result_id), backend=self.alias)
        except (Job.DoesNotExist, ValueError, TypeError):
            raise TaskResultDoesNotExist(result_id) from None
        try:
            task = resolve_task(job.task_path)
        except JobError as exc:
            raise TaskResultDoesNotExist(f"{result_id}: {exc}") from exc
        return self.to_task_result(job, task)

    def to_task_result(self, job, task: Task, *, result_task: Task | None = None) -> TaskResult:
        """The framework's view of a job row (``result_task``: the task as enqueued, if at hand).

        Its ``task`` is the task as it was enqueued, as Django's own backends hand it back:
        ``run_after`` is the one given at enqueue (None when none was), not the time the
        row is due now (retries, requeues and "run now" move that), and ``backend`` is
        this alias, so ``TaskResult.refresh()`` asks the right backend.
        """
        worker_ids = list(job.worker_ids)
        if job.status == "RUNNING":
            worker_ids.append(job.worker_id)  # the attempt under way counts too
        result = new_result(dict(
            task=result_task or task.using(priority=job.priority, queue_name=job.queue_name,
                                           run_after=job.task_run_after, backend=self.alias),
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
        ))
        if job.status == "SUCCESSFUL":
            object.__setattr__(result, "_return_value", job.return_value)
        return result

    def check(self, **kwargs):
        yield from super().check(**kwargs)
        if not apps.is_installed("jobs"):
            yield checks.Error(
                f"TASKS[{self.alias!r}] is jobs.backends.DatabaseBackend, but 'jobs' is not in INSTALLED_APPS",
                hint="Add 'jobs' to INSTALLED_APPS (its models hold the jobs), then run migrate.",
                obj=f"TASKS[{self.alias!r}]",
                id="jobs.E002",
            )
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
