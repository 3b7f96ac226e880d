"""``from jobs.compat import background``: django-background-tasks' decorator, on jobs.

A project written for django-background-tasks 1.2.x moves over by changing one
import line. Its call semantics (scheduling options popped out of the caller's own
keyword arguments, a registry of task names) are exactly what the rest of this
project avoids, so they are quarantined here: nothing else imports this module but
``manage.py import_background_tasks`` and ``JobsConfig.ready()``, which registers
``render_origin`` for the admin's job page.

What ``@background`` gives you
    A ``BackgroundTask``: a real Django task (a ``jobs.task`` with extra fields),
    stored at the decorated function's own dotted path, so a worker imports and runs
    it like any other task. Calling it enqueues a job and returns the ``Job`` row
    (or None when a ``schedule`` action found an existing one); ``.now(...)`` calls
    the function inline; ``.enqueue(...)`` is Django's API as usual.

How its options map
    ``schedule``: seconds (int or float), a timedelta, an aware (or naive, read in
    the current time zone) datetime, or a dict with ``run_at``, ``priority`` and
    ``action``; becomes ``run_after`` and ``priority``. Call-time values win over
    the decorator's, key by key; a bare ``schedule=0`` sets nothing, as there.
    ``priority``: django-background-tasks runs higher numbers first (its
    ``BACKGROUND_TASK_PRIORITY_ORDERING = "DESC"``, the default), as Django does;
    with ``"ASC"`` lower numbers run first, so the sign is flipped. Django's range
    is -100..100: values beyond it are clamped (the original is kept in the meta).
    ``queue``: ``queue_name``; None is the ``"default"`` queue.
    ``remove_existing_tasks``: the READY jobs of the same task and arguments (same
    hash as django-background-tasks': name plus JSON parameters) are deleted first.
    ``verbose_name`` and ``creator``: ``Job.meta["verbose_name"]`` and
    ``Job.meta["creator"]`` (``{"content_type": "app.model", "object_id", "repr"}``),
    shown by the admin's job page as its origin (``render_origin``, registered by
    ``JobsConfig.ready()``); ``created_by(obj)`` finds them.
    ``repeat`` / ``repeat_until``: see ``_continue_repetition``: the next run is
    enqueued when a run starts, so a run that fails (or whose worker dies) never
    ends the repetition, and no run is scheduled after ``repeat_until``.
    ``settings.MAX_ATTEMPTS``, when set, is the attempt limit of these jobs, queued
    ones included: it is read when an attempt ends, as there.
    ``InvalidTaskError``: raised by a task, it fails the job at once, without retry.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from importlib import import_module
from inspect import iscoroutinefunction
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import router, transaction
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.module_loading import module_has_submodule

from .backends import DatabaseBackend, serialise_arguments, to_json
from .decorators import JobTask
from .exceptions import DoNotRetry, JobError
from .framework import DEFAULT_TASK_QUEUE_NAME, Task
from .origins import Link, Origin
from .resolve import resolve_task

__all__ = [
    "DAILY", "EVERY_2_WEEKS", "EVERY_4_WEEKS", "HOURLY", "NEVER", "WEEKLY",
    "BackgroundTask", "BackgroundTaskError", "InvalidTaskError", "TaskSchedule", "autodiscover", "background",
    "created_by", "get_task", "map_priority", "registered_tasks", "render_origin", "task_hash",
]

# django-background-tasks' repeat choices (``background_task.models.Task.DAILY`` etc.), in seconds.
NEVER = 0
HOURLY = 3600
DAILY = 24 * HOURLY
WEEKLY = 7 * DAILY
EVERY_2_WEEKS = 2 * WEEKLY
EVERY_4_WEEKS = 4 * WEEKLY

PRIORITY_MIN, PRIORITY_MAX = -100, 100
META_KEY = "background_task"
_UNSET: Any = object()


class BackgroundTaskError(Exception):
    """django-background-tasks' ``background_task.exceptions.BackgroundTaskError``."""

    def __init__(self, message, errors=None):
        super().__init__(message)
        self.errors = errors


class InvalidTaskError(BackgroundTaskError, DoNotRetry):
    """Raised by a task: the job fails at once and is not retried, as there."""


# Decorated tasks by their django-background-tasks name (``module.function`` or ``name=``).
_registry: dict[str, BackgroundTask] = {}


class TaskSchedule:
    """When and how urgently to run: django-background-tasks' ``TaskSchedule``.

    ``action`` says what to do when READY jobs of the same task and arguments exist:
    ``SCHEDULE`` enqueue anyway, ``RESCHEDULE_EXISTING`` move them to this run time
    and priority instead, ``CHECK_EXISTING`` enqueue nothing.
    """

    SCHEDULE = 0
    RESCHEDULE_EXISTING = 1
    CHECK_EXISTING = 2

    __slots__ = ("_action", "_priority", "_run_at")

    def __init__(self, run_at=None, priority=None, action=None):
        when_types = (int, float, timedelta, datetime)
        if run_at is not None and (isinstance(run_at, bool) or not isinstance(run_at, when_types)):
            raise TypeError(f"schedule run_at must be seconds, a timedelta or a datetime, got {run_at!r}")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise TypeError(f"schedule priority must be an integer, got {priority!r}")
        if action not in (None, self.SCHEDULE, self.RESCHEDULE_EXISTING, self.CHECK_EXISTING):
            raise TypeError(f"schedule action must be one of TaskSchedule's constants, got {action!r}")
        self._run_at, self._priority, self._action = run_at, priority, action

    @classmethod
    def create(cls, schedule) -> TaskSchedule:
        if isinstance(schedule, TaskSchedule):
            return schedule
        if not schedule:
            # As there: 0, timedelta(0) or {} set nothing, so the decorator's schedule
            # still applies (``schedule={"run_at": 0}`` is the way to say "now").
            return cls()
        if isinstance(schedule, Mapping):
            unknown = sorted(set(schedule) - {"run_at", "priority", "action"})
            if unknown:
                raise TypeError(f"schedule has unknown key {unknown[0]!r} (known: run_at, priority, action)")
            return cls(schedule.get("run_at"), schedule.get("priority"), schedule.get("action"))
        return cls(run_at=schedule)

    def merge(self, default: TaskSchedule) -> TaskSchedule:
        """This schedule, with the values it leaves unset taken from ``default``."""
        def pick(mine, theirs):
            return theirs if mine is None else mine

        return TaskSchedule(pick(self._run_at, default._run_at), pick(self._priority, default._priority),
                            pick(self._action, default._action))

    @property
    def run_at(self) -> datetime:
        """When to run, read now: an attribute, as there (unset or 0: now)."""
        value, now = self._run_at, timezone.now()
        if not value:
            return now
        if isinstance(value, (int, float)):
            return now + timedelta(seconds=value)
        if isinstance(value, timedelta):
            return now + value
        return _as_setting(value)

    @property
    def priority(self) -> int:
        return self._priority or 0

    @property
    def action(self) -> int:
        return self._action or self.SCHEDULE

    def __eq__(self, other) -> bool:
        if not isinstance(other, TaskSchedule):
            return NotImplemented
        return (self._run_at, self._priority, self._action) == (other._run_at, other._priority, other._action)

    def __hash__(self) -> int:
        return hash((self._run_at, self._priority, self._action))

    def __repr__(self) -> str:
        # django-background-tasks' own, word for word (str of the values, no action).
        return f"TaskSchedule(run_at={self._run_at}, priority={self._priority})"


def map_priority(priority) -> int:
    """A django-background-tasks priority as Django's: higher runs first, -100..100."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an integer, got {priority!r}")
    if getattr(settings, "BACKGROUND_TASK_PRIORITY_ORDERING", "DESC") == "ASC":
        priority = -priority  # there, lower numbers ran first
    return max(PRIORITY_MIN, min(PRIORITY_MAX, priority))


def task_hash(name: str, args, kwargs) -> str:
    """django-background-tasks' ``task_hash``: identifies a task and its arguments."""
    params = json.dumps((list(args), kwargs), sort_keys=True)
    return hashlib.sha1(f"{name}{params}".encode()).hexdigest()


def _seconds(value, what: str) -> int | None:
    if value is None or value == 0:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TypeError(f"{what} must be a number of seconds >= 0 or a timedelta, got {value!r}")
    return value


def _as_setting(value: datetime) -> datetime:
    """Aware when ``USE_TZ`` (a naive value read in the current time zone), naive otherwise."""
    if settings.USE_TZ:
        return value if timezone.is_aware(value) else timezone.make_aware(value)
    return timezone.make_naive(value) if timezone.is_aware(value) else value


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {value!r}")
    return _as_setting(value)


def _creator_meta(creator) -> dict:
    opts = getattr(creator, "_meta", None)
    if opts is None or getattr(creator, "pk", None) is None:
        raise TypeError(f"creator must be a saved model instance, got {creator!r}")
    pk = creator.pk if isinstance(creator.pk, int) else str(creator.pk)
    return {"content_type": opts.label_lower, "object_id": pk, "repr": str(creator)[:200]}


@dataclass(frozen=True, slots=True, kw_only=True)
class BackgroundTask(JobTask):
    """A task declared with ``@background``: calling it enqueues, ``.now()`` runs inline.

    ``func`` (what the worker calls) wraps ``task_function`` (what you wrote): it
    takes the task context, keeps a repetition going, and drops a return value that
    JSON cannot hold (django-background-tasks ignored return values).
    """

    task_function: Callable[..., Any] | None = None
    background_name: str = ""
    schedule: TaskSchedule = field(default_factory=TaskSchedule)
    queue: str | None = None  # as given to the decorator; None runs on the "default" queue
    remove_existing_tasks: bool = False

    @property
    def name(self) -> str:
        """The django-background-tasks name (``module.function``, or ``name=``), as its proxy's.

        Django's ``Task.name`` is the function's name; nothing in Django reads it (the
        framework, the worker and the rows go by ``module_path``), so it can say here
        what code written for django-background-tasks reads.
        """
        return self.background_name

    def __str__(self) -> str:
        return f"TaskProxy({self.background_name})"

    def default_max_attempts(self, backend: DatabaseBackend) -> int:
        """``settings.MAX_ATTEMPTS`` (django-background-tasks' setting) when set, else the backend's;
        read when an attempt ends (see ``DatabaseBackend.attempt_limit``)."""
        value = getattr(settings, "MAX_ATTEMPTS", None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        return backend.jobs_options.max_attempts

    def now(self, *args, **kwargs):
        """Run the function here and now, as django-background-tasks' ``task.now()``."""
        return self.task_function(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        """Enqueue, django-background-tasks style; return the Job, or None (see ``TaskSchedule``)."""
        schedule = TaskSchedule.create(kwargs.pop("schedule", None)).merge(self.schedule)
        priority = kwargs.pop("priority", None)
        if priority is None:
            priority = schedule.priority
        queue = kwargs.pop("queue", _UNSET)
        verbose_name = kwargs.pop("verbose_name", None)
        creator = kwargs.pop("creator", None)
        repeat = _seconds(kwargs.pop("repeat", None), "repeat")
        repeat_until = _aware(kwargs.pop("repeat_until", None), "repeat_until")
        remove_existing = kwargs.pop("remove_existing_tasks", self.remove_existing_tasks)
        if queue is _UNSET:
            queue = self.queue
        queue_name = queue or DEFAULT_TASK_QUEUE_NAME
        run_at = schedule.run_at

        backend = self._database_backend()
        self._check_importable()
        args, kwargs = serialise_arguments(self, args, kwargs)  # before anything is deleted or written
        digest = task_hash(self.background_name, args, kwargs)
        info = {"name": self.background_name, "hash": digest, "priority": priority}
        if repeat:
            info.update(repeat=repeat, repeat_until=repeat_until.isoformat() if repeat_until else None)
        meta: dict[str, Any] = {META_KEY: info}
        if verbose_name is not None:
            meta["verbose_name"] = str(verbose_name)
        if creator is not None:
            meta["creator"] = _creator_meta(creator)
        priority = map_priority(priority)

        from .control import delete_jobs
        from .models import Job, JobStatus

        db = router.db_for_write(Job)
        with transaction.atomic(using=db):
            same = Job.objects.using(db).filter(status=JobStatus.READY, task_path=self.module_path,
                                                **{f"meta__{META_KEY}__hash": digest})
            if remove_existing:
                # Locked rows are being claimed by a worker right now: they are not pending any more.
                ids = list(same.select_for_update(skip_locked=True).values_list("pk", flat=True))
                if ids:
                    delete_jobs(Job.objects.using(db).filter(pk__in=ids, status=JobStatus.READY))
            if schedule.action != TaskSchedule.SCHEDULE:
                existing = same.filter(queue_name=queue_name) if queue else same
                if schedule.action == TaskSchedule.RESCHEDULE_EXISTING:
                    if existing.reschedule(run_at, priority=priority):
                        return None
                elif existing.exists():
                    return None
            return _enqueue(self, backend, args, kwargs, run_after=run_at, priority=priority,
                            queue_name=queue_name, meta=meta)

    def _database_backend(self) -> DatabaseBackend:
        backend = self.get_backend()
        if not isinstance(backend, DatabaseBackend):
            raise ImproperlyConfigured(
                f"jobs.compat.background needs TASKS[{self.backend!r}] to be jobs.backends.DatabaseBackend, "
                f"not {type(backend).__name__}")
        return backend

    def _check_importable(self) -> None:
        """A worker finds the task by its path: refuse to enqueue jobs no worker could run."""
        try:
            found = resolve_task(self.module_path)
        except JobError as exc:
            found, why = None, f": {exc}"
        else:
            why = ""
        if not isinstance(found, BackgroundTask) or found.func is not self.func:
            raise ImproperlyConfigured(
                f"@background task {self.background_name!r} must be importable as {self.module_path!r} "
                f"(a module-level function decorated where it is defined, in an installed app or a module of "
                f"settings.JOBS_TASK_MODULES), so that a worker can find it{why}")


def _enqueue(task: BackgroundTask, backend: DatabaseBackend, args: list, kwargs: dict, *, run_after: datetime,
             priority: int, queue_name: str, meta: dict):
    """Enqueue through the backend (its validation, signal and wake-up), meta and all; the row."""
    from .models import Job

    variant = replace(task, priority=priority, queue_name=queue_name, run_after=run_after)
    result = backend.enqueue(variant, args, kwargs, meta=meta)
    return Job.objects.using(router.db_for_write(Job)).get(pk=int(result.id))


def _continue_repetition(context) -> None:
    """Enqueue the next run of a repeating job, once, when one of its attempts starts.

    django-background-tasks created the next run only after a successful one, so a
    single failure (or a worker that died) ended a daily task for good. Here the
    next run exists before the user's code starts; it is due at the run time this
    job actually had (its row's ``run_after`` when claimed, so after any reschedule,
    as there) plus ``repeat`` (skipping times already past, as django-background-tasks
    did), never after ``repeat_until``. Retries of this job do not add another: the
    successor's id is kept in this job's meta, written with the row locked.
    """
    from .models import Job

    result = context.task_result
    db = router.db_for_write(Job)
    jobs = Job.objects.using(db)
    row = jobs.filter(pk=int(result.id)).values_list("meta", flat=True).first()
    info = (row or {}).get(META_KEY) or {}
    if not info.get("repeat") or "next_job" in info:
        return
    with transaction.atomic(using=db):
        job = jobs.select_for_update().only("id", "meta", "priority", "queue_name", "args", "kwargs",
                                            "run_after").get(pk=int(result.id))
        info = dict(job.meta.get(META_KEY) or {})
        if "next_job" in info:
            return
        step = timedelta(seconds=info["repeat"])
        now = timezone.now()
        next_at = job.run_after + step  # a RUNNING row's run_after is still the one it was claimed at
        if next_at < now:
            next_at += step * math.ceil((now - next_at) / step)
        until = parse_datetime(info["repeat_until"]) if info.get("repeat_until") else None
        successor = None
        if until is None or next_at <= until:
            task = result.task
            kept = {key: value for key, value in info.items() if key != "scheduled_at"}  # (rows of older versions)
            meta = {**job.meta, META_KEY: {**kept, "previous_job": job.pk}}
            successor = _enqueue(task, task._database_backend(), job.args, job.kwargs, run_after=next_at,
                                 priority=job.priority, queue_name=job.queue_name, meta=meta)
        info["next_job"] = successor.pk if successor else None
        jobs.filter(pk=job.pk).merge_meta({META_KEY: info})


def _runner(fn: Callable) -> Callable:
    """What the worker calls: context in, repetition kept, the function called."""

    def run(context, *args, **kwargs):
        _continue_repetition(context)
        value = fn(*args, **kwargs)
        try:
            return to_json(value, "return value")
        except TypeError:
            return None

    # The task's path is the function's own (where the decorated object lives);
    # no __wrapped__, so Django sees this signature, whose first argument is context.
    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(run, attribute, getattr(fn, attribute))
    return run


def background(name=None, schedule=None, queue=None, remove_existing_tasks=False):
    """django-background-tasks' decorator: ``@background`` or ``@background(schedule=60, ...)``."""
    function = None
    if callable(name):  # bare @background
        function, name = name, None

    def decorate(fn):
        if isinstance(fn, Task) or not callable(fn):
            raise TypeError(f"@background decorates a plain function, got {fn!r}")
        if iscoroutinefunction(fn):
            raise TypeError(f"@background: {fn.__qualname__} is async; declare it with jobs.task instead")
        task_schedule = TaskSchedule.create(schedule)
        task = BackgroundTask(
            func=_runner(fn), takes_context=True, task_function=fn,
            background_name=name or f"{fn.__module__}.{fn.__name__}", schedule=task_schedule,
            queue=queue, queue_name=queue or DEFAULT_TASK_QUEUE_NAME, priority=map_priority(task_schedule.priority),
            remove_existing_tasks=remove_existing_tasks,
        )
        _registry[task.background_name] = task
        return task

    return decorate(function) if function is not None else decorate


def registered_tasks() -> dict[str, BackgroundTask]:
    """Every ``@background`` task imported so far, by its django-background-tasks name."""
    return dict(_registry)


def get_task(name: str) -> BackgroundTask | None:
    return _registry.get(name)


def autodiscover() -> None:
    """Import each installed app's ``tasks`` module, as django-background-tasks did."""
    for config in apps.get_app_configs():
        if module_has_submodule(config.module, "tasks"):
            import_module(f"{config.name}.tasks")


def created_by(creator):
    """Jobs whose ``creator`` was this model instance (``Task.objects.created_by`` there)."""
    from .models import Job

    info = _creator_meta(creator)
    return Job.objects.filter(meta__creator__content_type=info["content_type"],
                              meta__creator__object_id=info["object_id"])


def render_origin(meta: Mapping[str, Any]) -> Origin | None:
    """The job page's origin of a job made by ``@background`` (or by ``import_background_tasks``).

    Consumes ``verbose_name`` and ``creator``; ``meta["background_task"]`` (hash, the
    original priority, repetition, ids of the neighbouring runs) stays under "Meta",
    and its previous and next runs are linked.
    """
    info = meta.get(META_KEY)
    info = info if isinstance(info, Mapping) else {}
    verbose_name, creator = meta.get("verbose_name"), meta.get("creator")
    if not (info or verbose_name or creator):
        return None
    if isinstance(creator, Mapping):
        creator = creator.get("repr") or f"{creator.get('content_type')} #{creator.get('object_id')}"
    name = verbose_name or info.get("name")
    parts = [str(name) if name else "", f"(creator {creator})" if creator else ""]
    links = []
    for key, text in (("previous_job", "the previous run"), ("next_job", "the next run")):
        if url := _job_admin_url(info.get(key)):
            links.append(Link(text, url))
    return Origin("django-background-tasks call", " ".join(part for part in parts if part), links,
                  consumed={"verbose_name", "creator"})


def _job_admin_url(job_id) -> str:
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        return ""
    try:
        return reverse("admin:jobs_job_change", args=[job_id])
    except NoReverseMatch:
        return ""
