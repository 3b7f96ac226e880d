"""``settings.SCHEDULED_JOBS`` parsed into frozen entries; every problem names the entry and the key.

Defaults live here and nowhere else. ``manage.py check`` reports every problem
(``scheduler.checks``); at run time an entry with a problem is logged and left
out, the others run. Parsed once, and again whenever a test overrides a setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

from django.conf import settings
from django.core.signals import setting_changed

from .cron import CronError, cron_schedule, get_zone, normalise

KEYS = ("task", "cron", "args", "kwargs", "queue_name", "priority", "timezone", "misfire", "overlap")
REQUIRED = ("task", "cron")
MISFIRE_CHOICES = ("once", "skip", "all")
MIN_PRIORITY, MAX_PRIORITY = -100, 100
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class Problem:
    """What is wrong with one key of one entry (``key`` None: the entry as a whole)."""

    name: str
    key: str | None
    message: str

    @property
    def where(self) -> str:
        entry = f"SCHEDULED_JOBS[{self.name!r}]"
        return f"{entry}[{self.key!r}]" if self.key else entry

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class ScheduleEntry:
    """One valid ``SCHEDULED_JOBS`` entry, defaults filled in."""

    name: str
    task: str
    cron: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    queue_name: str = "default"  # parse_entry fills in the task's own queue when the entry names none
    priority: int = 0
    timezone: str = "UTC"
    misfire: str = "once"
    overlap: bool = True

    def cron_schedule(self):
        return cron_schedule(self.cron, self.timezone)

    def definition(self) -> dict:
        """The entry as ``Schedule`` model fields."""
        return {"task": self.task, "cron": self.cron, "args": list(self.args), "kwargs": dict(self.kwargs),
                "queue_name": self.queue_name, "priority": self.priority, "timezone": self.timezone,
                "misfire": self.misfire, "overlap": self.overlap}


def _json(value, what: str) -> str | None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"{what} {value!r} is not JSON-serialisable ({exc})"
    return None


def _check_task(path) -> tuple[object | None, str | None]:
    """(the task object, None) or (None, what is wrong)."""
    from jobs.exceptions import JobError
    from jobs.resolve import resolve_task

    if not isinstance(path, str) or not path:
        return None, f"must be the dotted path of a task, got {path!r}"
    try:
        return resolve_task(path), None
    except JobError as exc:
        return None, str(exc)


def _task_queue(task) -> str:
    """An entry without ``queue_name`` runs on its task's own queue (the one it was declared with)."""
    from jobs.framework import DEFAULT_TASK_QUEUE_NAME

    return getattr(task, "queue_name", None) or DEFAULT_TASK_QUEUE_NAME


def _check_queue(queue_name, task) -> str | None:
    from jobs.framework import DEFAULT_TASK_BACKEND_ALIAS, task_backends

    if not isinstance(queue_name, str) or not queue_name:
        return f"must be a queue name, got {queue_name!r}"
    alias = getattr(task, "backend", DEFAULT_TASK_BACKEND_ALIAS)
    try:
        queues = task_backends[alias].queues
    except Exception:  # the backend itself is misconfigured: its own check says so
        return None
    if queues and queue_name not in queues:
        return f"{queue_name!r} is not in TASKS[{alias!r}]['QUEUES'] ({', '.join(sorted(queues))})"
    return None


def problems(name, raw, *, default_timezone: str | None = None) -> list[Problem]:
    """Everything wrong with one entry; empty when it is usable."""
    if not isinstance(name, str) or not name.strip():
        return [Problem(str(name), None, f"entry names must be non-empty strings, got {name!r}")]
    if len(name) > MAX_NAME_LENGTH:
        return [Problem(name, None, f"entry names must be at most {MAX_NAME_LENGTH} characters")]
    if not isinstance(raw, dict):
        return [Problem(name, None, f"must be a dict with at least 'task' and 'cron', got {type(raw).__name__}")]
    found: list[Problem] = []
    for key in raw:
        if key not in KEYS:
            found.append(Problem(name, str(key), f"unknown key (known keys: {', '.join(KEYS)})"))
    for key in REQUIRED:
        if key not in raw:
            found.append(Problem(name, key, "is required"))
    task = None
    if "task" in raw:
        task, message = _check_task(raw["task"])
        if message:
            found.append(Problem(name, "task", message))
    if "cron" in raw:
        try:
            normalise(raw["cron"])
        except CronError as exc:
            found.append(Problem(name, "cron", str(exc)))
    if "args" in raw:
        args = raw["args"]
        if not isinstance(args, (list, tuple)):
            found.append(Problem(name, "args", f"must be a list, got {type(args).__name__}"))
        elif message := _json(list(args), "args"):
            found.append(Problem(name, "args", message))
    if "kwargs" in raw:
        kwargs = raw["kwargs"]
        if not isinstance(kwargs, dict):
            found.append(Problem(name, "kwargs", f"must be a dict, got {type(kwargs).__name__}"))
        elif bad := [k for k in kwargs if not isinstance(k, str)]:
            found.append(Problem(name, "kwargs", f"keyword argument names must be strings, got {bad[0]!r}"))
        elif message := _json(kwargs, "kwargs"):
            found.append(Problem(name, "kwargs", message))
    if "queue_name" in raw or task is not None:
        if message := _check_queue(raw.get("queue_name", _task_queue(task)), task):
            found.append(Problem(name, "queue_name", message))
    if "priority" in raw:
        priority = raw["priority"]
        if isinstance(priority, bool) or not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            found.append(Problem(name, "priority", f"must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, "
                                                   f"got {priority!r}"))
    zone = raw.get("timezone", default_timezone or settings.TIME_ZONE)
    try:
        get_zone(zone)
    except CronError as exc:
        found.append(Problem(name, "timezone", str(exc)))
    if "misfire" in raw and raw["misfire"] not in MISFIRE_CHOICES:
        found.append(Problem(name, "misfire", f"must be one of {', '.join(map(repr, MISFIRE_CHOICES))}, "
                                              f"got {raw['misfire']!r}"))
    if "overlap" in raw and not isinstance(raw["overlap"], bool):  # "false" and 0 are mistakes, not False
        found.append(Problem(name, "overlap", f"must be True or False, got {raw['overlap']!r}"))
    return found


def all_problems(raw_setting=None) -> list[Problem]:
    raw_setting = getattr(settings, "SCHEDULED_JOBS", {}) if raw_setting is None else raw_setting
    if not isinstance(raw_setting, dict):
        return [Problem("", None, f"SCHEDULED_JOBS must be a dict of entries, got {type(raw_setting).__name__}")]
    return [problem for name, raw in raw_setting.items() for problem in problems(name, raw)]


def parse_entry(name: str, raw: dict) -> ScheduleEntry:
    return ScheduleEntry(
        name=name, task=raw["task"], cron=" ".join(raw["cron"].split()), args=tuple(raw.get("args", ())),
        kwargs=dict(raw.get("kwargs", {})), queue_name=raw.get("queue_name") or _task_queue(_check_task(raw["task"])[0]),
        priority=raw.get("priority", 0), timezone=raw.get("timezone", settings.TIME_ZONE),
        misfire=raw.get("misfire", "once"), overlap=raw.get("overlap", True),
    )


@dataclass(frozen=True)
class ScheduledJobs:
    """The parsed setting: usable entries, the names of all entries, what was wrong."""

    entries: tuple[ScheduleEntry, ...]
    names: frozenset[str]
    problems: tuple[Problem, ...]


@lru_cache(maxsize=1)
def scheduled_jobs() -> ScheduledJobs:
    raw_setting = getattr(settings, "SCHEDULED_JOBS", {})
    if not isinstance(raw_setting, dict):
        return ScheduledJobs((), frozenset(), tuple(all_problems(raw_setting)))
    entries, found = [], []
    for name, raw in raw_setting.items():
        entry_problems = problems(name, raw)
        if entry_problems:
            found.extend(entry_problems)
        else:
            entries.append(parse_entry(name, raw))
    names = frozenset(name for name in raw_setting if isinstance(name, str))
    return ScheduledJobs(tuple(entries), names, tuple(found))


# -- SCHEDULER_ADMIN_TASKS: what may be scheduled from the admin -------------------------

ADMIN_TASKS_SETTING = "SCHEDULER_ADMIN_TASKS"


def admin_task_problems(raw=None) -> list[str]:
    """Everything wrong with ``SCHEDULER_ADMIN_TASKS`` (each message names the culprit)."""
    raw = getattr(settings, ADMIN_TASKS_SETTING, ()) if raw is None else raw
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        return [f"{ADMIN_TASKS_SETTING} must be a list of dotted task paths, got {type(raw).__name__}"]
    found = []
    for path in raw:
        _, message = _check_task(path)
        if message:
            found.append(f"{ADMIN_TASKS_SETTING} entry {path!r}: {message}")
    return found


@lru_cache(maxsize=1)
def admin_tasks() -> tuple[str, ...]:
    """The dotted paths of the tasks that may be scheduled from the admin (default: none).

    Only what the setting lists, as written, and only entries that are strings: a path that
    does not resolve stays listed (``manage.py check`` reports it; its runs record the error).
    """
    raw = getattr(settings, ADMIN_TASKS_SETTING, ())
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        return ()
    return tuple(dict.fromkeys(path for path in raw if isinstance(path, str) and path))


def _reset(*, setting, **kwargs):
    if setting in ("SCHEDULED_JOBS", "TIME_ZONE", "TASKS"):
        scheduled_jobs.cache_clear()
    if setting == ADMIN_TASKS_SETTING:
        admin_tasks.cache_clear()


setting_changed.connect(_reset, dispatch_uid="scheduler.conf.reset")
