"""Reading job rows the way a worker must: defensively, and without the ORM's weight.

Whoever can write the table can store what Python or the driver refuses: an integer
of 5000 digits, JSON nested thousands deep, 'infinity' as a time on PostgreSQL,
text in an integer column on SQLite. The worker reads time columns as text (see
``column_sql``: the drivers convert times inside the fetch and would raise there,
taking a whole claim with them) and converts every value here, one at a time. A
value that does not convert, or has the wrong shape, becomes an entry in the job's
``damage`` list and a harmless stand-in; the worker fails that job alone.

A ``ClaimedJob`` is what a worker holds of a row for one attempt: plain attributes,
no model instance to build per job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import limits
from .models import Job, UnreadableJSON


@dataclass(slots=True)
class ClaimedJob:
    """One job as a worker holds it: claimed for an attempt (or read by the stale sweep)."""

    id: int
    task_path: str = ""
    backend: str = ""
    queue_name: str = ""
    priority: int = 0
    args: Any = field(default_factory=list)
    kwargs: Any = field(default_factory=dict)
    status: str = "RUNNING"
    run_after: datetime | None = None
    task_run_after: datetime | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    last_attempted_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: Any = 0
    max_attempts: Any = None
    worker_id: str = ""
    heartbeat_at: datetime | None = None
    errors: Any = field(default_factory=list)
    worker_ids: Any = field(default_factory=list)
    return_value: Any = None
    unique_key: str | None = None
    limit_key: str | None = None
    concurrency_limit: Any = None
    rate_limit: str | None = None
    cancel_requested_at: datetime | None = None
    batch_id: str | None = None
    has_dependents: Any = False
    damage: list[str] = field(default_factory=list)  # what could not be read as stored
    claimed_at: float = 0.0  # the worker's monotonic clock when it claimed the job

    @property
    def pk(self) -> int:
        return self.id

    @property
    def coordinated(self) -> bool:
        """Its end sets something off (a batch's count, children): recorded with ``jobs.settle``."""
        return self.batch_id is not None or bool(self.has_dependents)


# What the worker reads of a claimed job: what it needs to run it and to record it.
CLAIMED = ("id", "task_path", "backend", "queue_name", "priority", "args", "kwargs", "run_after", "task_run_after",
           "enqueued_at", "started_at", "last_attempted_at", "attempts", "max_attempts", "worker_id",
           "heartbeat_at", "errors", "worker_ids", "unique_key", "limit_key", "concurrency_limit", "rate_limit",
           "batch_id", "has_dependents")
# What the stale sweep reads: enough to fail an attempt, not its arguments.
STALE = ("id", "task_path", "backend", "attempts", "max_attempts", "worker_id", "heartbeat_at", "errors",
         "worker_ids", "unique_key", "limit_key", "concurrency_limit", "cancel_requested_at")

# Stand-ins for damaged values, so that a damaged job can still be failed and shown.
_FALLBACKS = {"args": list, "kwargs": dict, "errors": list, "worker_ids": list, "meta": dict}
_SHAPES = {"args": list, "kwargs": dict, "errors": list, "worker_ids": list, "meta": dict, "id": int,
           "attempts": int, "max_attempts": int, "priority": int, "task_path": str, "queue_name": str,
           "backend": str, "worker_id": str, "unique_key": str, "limit_key": str, "concurrency_limit": int,
           "rate_limit": str}


def column_sql(connection, name: str, table: str = "") -> str:
    """How the worker selects (or RETURNs) a column of Job: time columns as text."""
    model_field = Job._meta.get_field(name)
    column = connection.ops.quote_name(model_field.column)
    if table:
        column = f"{table}.{column}"
    if isinstance(model_field, models.DateTimeField):
        if connection.vendor == "postgresql":
            return f"{column}::text"
        return f"CAST({column} AS CHAR)" if connection.vendor == "mysql" else f"CAST({column} AS TEXT)"
    return column


def columns_sql(connection, names: Sequence[str], table: str = "") -> str:
    return ", ".join(column_sql(connection, name, table) for name in names)


def stored_datetime(value, zone) -> datetime | None:
    """A time column read as text, as the ORM would hand it back."""
    if value is None or isinstance(value, datetime):
        return value
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValueError(f"{value[:60]!r} is not a time")
    if settings.USE_TZ and timezone.is_naive(parsed):
        return timezone.make_aware(parsed, zone)
    if not settings.USE_TZ and timezone.is_aware(parsed):
        return timezone.make_naive(parsed, zone)
    return parsed


def _stored_json(value):
    if value is None or not isinstance(value, (str, bytes, bytearray)):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as exc:
        return UnreadableJSON(f"unreadable JSON ({type(exc).__name__}: {str(exc)[:200]})")


def _converter(connection, name: str):
    model_field = Job._meta.get_field(name)
    if isinstance(model_field, models.DateTimeField):
        zone = connection.timezone
        return lambda value: stored_datetime(value, zone)
    if isinstance(model_field, models.JSONField):
        return _stored_json
    return None


def read_rows(connection, names: Sequence[str], rows: Iterable[tuple]) -> list[ClaimedJob]:
    """Rows selected with ``columns_sql(names)`` as ClaimedJobs; never raises on a stored value."""
    names = list(names)
    converters = [_converter(connection, name) for name in names]
    nullable = [Job._meta.get_field(name).null for name in names]
    jobs = []
    for row in rows:
        values, damage = {}, []
        for name, raw, convert, null in zip(names, row, converters, nullable):
            problem, value = _read(raw, convert, name, null)
            if problem:
                damage.append(f"{name}: {problem}")
                value = _FALLBACKS[name]() if name in _FALLBACKS else value
            values[name] = value
        if values.get("id") is None:
            continue  # not a row at all (an empty LEFT JOIN)
        jobs.append(ClaimedJob(**values, damage=damage))
    return jobs


def _read(raw, convert, name: str, null: bool) -> tuple[str, Any]:
    """(what is wrong or "", the value) for one stored value."""
    value = raw
    if convert is not None:
        try:
            value = convert(raw)
        except Exception as exc:  # noqa: BLE001 - a stored value must not stop the worker
            return f"{type(exc).__name__}: {str(exc)[:200]}", None
    if isinstance(value, UnreadableJSON):
        return str(value), None
    if value is None:
        return ("" if null else f"missing (NULL or not a value of its type: {str(raw)[:60]!r})"), None
    shape = _SHAPES.get(name)
    if shape is not None and (not isinstance(value, shape) or isinstance(value, bool)):
        return f"stored as {type(value).__name__} {str(value)[:60]!r}, expected {shape.__name__}", value
    check = _CHECKS.get(name)
    return (check(value) if check is not None else ""), value


def _check_limit(value) -> str:
    if limits.valid_limit(value):
        return ""
    return f"{value!r} is out of range (1 to {limits.MAX_CONCURRENCY})"


def _check_rate(value) -> str:
    try:
        limits.parse_rate(value)
    except ValueError as exc:
        return str(exc)
    return ""


# Job-control columns: a value no declaration could give is damage too (a limit of 0 would hold
# its key back for ever, a rate the claim cannot read would be no limit at all).
_CHECKS = {"concurrency_limit": _check_limit, "rate_limit": _check_rate}


def claim_order(job: ClaimedJob) -> tuple:
    """The claim's order (priority, then run_after, then id), for whatever a row holds."""
    priority = job.priority if isinstance(job.priority, int) and not isinstance(job.priority, bool) else 0
    run_after = job.run_after if isinstance(job.run_after, datetime) else None
    return (-priority, run_after is not None, run_after or datetime.min, job.id)
