"""Stopping a job and watching it: ``cancel()``, and, inside a running task,
``cancel_requested()`` and ``set_progress()``; ``get_progress()`` anywhere.

A READY job is cancelled at once (one UPDATE: a worker that claims it a moment
later sees it gone). A RUNNING one belongs to its worker, so ``cancel()`` only asks:
it marks the row (``cancel_requested_at``, and the reason in ``meta["cancelled"]``)
and, on PostgreSQL, says so on the wake-up channel. That notification (and on SQLite
any commit, seen by the wake-up probe) is only a hint: the worker then reads its own
rows, at most every ``CANCEL_CHECK_EVERY`` seconds, and acts on the flag it finds
there (its heartbeat reads them too). Then ``cancel_requested()`` turns true inside
the task, an async task is cancelled, and a sync task that has not returned
``CANCEL_GRACE`` seconds later is interrupted like a timed-out one.

The attempt then ends CANCELLED (never retried), except that one that returns
normally without having seen the request (never read ``cancel_requested()`` as true,
not cancelled, not interrupted) keeps its outcome: SUCCESSFUL, the cancel came too
late. A failure of an attempt whose row carries the flag is never retried, even when
the worker had not heard of it yet. The flag belongs to the attempt it was asked of:
every end of an attempt, every claim and every requeue clears it.

Progress is written by the task's own thread, at most ``PROGRESS_EVERY`` seconds
apart (the latest value is kept and written at the next chance, and when the
attempt ends), so a task may call ``set_progress()`` in a tight loop. It is kept
when the job ends, and cleared when a new attempt starts.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connections, router, transaction
from django.db.models import Q
from django.utils import timezone

from .wakeup import CANCEL_CHANNEL

CANCEL_GRACE = 10.0  # seconds a sync task has to return after being asked to stop
PROGRESS_EVERY = 0.25  # seconds between progress writes of one job, at least
CANCEL_CHECK_EVERY = 0.5  # seconds between a worker's reads of its rows' cancel flags, on hints, at least
MAX_MESSAGE = 500  # characters of a progress message (longer ones are cut)
MAX_REASON = 500  # characters of a cancel's reason and of its author (longer ones are refused)
MAX_ID = 2**63 - 1  # the largest job id a bigint column holds
MAX_PROGRESS = 2**63 - 1  # the largest int done/total of set_progress()

# What cancel() did.
CANCELLED = "cancelled"  # it was READY: it will never run
REQUESTED = "requested"  # it was RUNNING: its worker was asked to stop it
FINISHED = "finished"  # it had finished: left as it was


@dataclass
class Attempt:
    """One running attempt as its task sees it: the cancel flag and the progress to write."""

    job_id: int
    attempts: int
    worker_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    asked_at: datetime | None = None
    seen: bool = False  # the task read cancel_requested() as true, or its coroutine was cancelled
    abandoned: bool = False  # its worker gave up on it (timeout, shutdown): whatever it returns is not its outcome
    loop: object = None  # an async task's event loop, and the task, so that a cancel reaches them
    task: object = None
    pending: dict | None = None  # progress not yet written
    written_at: float = -PROGRESS_EVERY
    writes: int = 0  # progress writes so far
    clock: object = time.monotonic
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request_cancel(self, asked_at: datetime | None = None) -> None:
        """From any thread: stop the attempt (the flag, and the coroutine if it is one)."""
        if self.cancel.is_set():
            return
        self.asked_at = asked_at or timezone.now()
        self.cancel.set()
        loop, task = self.loop, self.task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(self.cancel_task, task)
            except RuntimeError:  # the loop has closed: the attempt is over anyway
                pass

    def cancel_task(self, task) -> None:
        """In the attempt's event loop: cancel its coroutine, unless it has returned already."""
        if task.cancel():
            self.seen = True

    def progress(self, done, total, message: str) -> None:
        with self.lock:
            self.pending = {"done": done, "total": total, "message": message,
                            "updated_at": timezone.now().isoformat()}
        if self.clock() - self.written_at >= PROGRESS_EVERY and not _in_event_loop():
            self.flush()
        # Inside an async task the database may not be touched from the event loop's thread: the
        # worker's main thread writes it when due (SlotPool.due_progress), and the slot at the end.

    def due_progress(self) -> dict | None:
        """The progress held back by the throttle, once it may be written (for the worker's main
        thread, which writes it when the task itself is busy elsewhere); None otherwise."""
        with self.lock:
            if self.pending is None or self.clock() - self.written_at < PROGRESS_EVERY:
                return None
            value, self.pending = self.pending, None
            self.written_at = self.clock()
            self.writes += 1
            return value

    def progress_due_at(self) -> float | None:
        with self.lock:
            return self.written_at + PROGRESS_EVERY if self.pending is not None else None

    def flush(self) -> None:
        """Write the latest progress now, from the task's own thread (and connection)."""
        with self.lock:
            value, self.pending = self.pending, None
            if value is None:
                return
            self.written_at = self.clock()
            self.writes += 1
        write_progress([(self, value)])


def write_progress(items) -> None:
    """Each (attempt, value): the job's progress, fenced on that attempt (a lost one's is dropped)."""
    from .models import Job, JobStatus

    jobs = Job.objects.using(router.db_for_write(Job))
    for attempt, value in items:
        jobs.filter(pk=attempt.job_id, status=JobStatus.RUNNING, attempts=attempt.attempts,
                    worker_id=attempt.worker_id).update(progress=value)


_current = threading.local()


def current() -> Attempt | None:
    """The attempt the calling thread is running, if any."""
    return getattr(_current, "attempt", None)


def running(attempt: Attempt | None) -> None:
    """The slot's thread starts (an Attempt) or ends (None) running an attempt."""
    _current.attempt = attempt


# -- inside a task -------------------------------------------------------------------------------

def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def cancel_requested() -> bool:
    """True once someone asked to cancel the job this task runs for (False outside a worker).

    Having read True here, the attempt ends CANCELLED whatever it returns."""
    attempt = current()
    if attempt is None or not attempt.cancel.is_set():
        return False
    attempt.seen = True
    return True


def _shown(value) -> str:
    """``value`` for an error message, without rendering a huge int (repr refuses 4,300+ digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an int of {len(str(abs(value))) if value.bit_length() < 14_000 else 'thousands of'} digits"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _number(value, what: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"set_progress(): {what} must be a number, got {_shown(value)}")
    if isinstance(value, int):
        if not 0 <= value <= MAX_PROGRESS:
            raise TypeError(f"set_progress(): {what} must be an int from 0 to 2**63-1 or a finite float >= 0, "
                            f"got {_shown(value)}")
    elif not math.isfinite(value) or value < 0:
        raise TypeError(f"set_progress(): {what} must be a finite number >= 0, got {value!r}")
    return value


def set_progress(done, total=None, message: str = "") -> None:
    """Record how far the running job has got: ``done`` (of ``total``, if known) and a message.

    Outside a job a worker (or ``jobs.testing.drain``) runs, it checks its arguments and does
    nothing, so that a task runs unchanged under ``task.call()`` and Django's ImmediateBackend."""
    _number(done, "done")
    if total is not None:
        _number(total, "total")
    if not isinstance(message, str):
        raise TypeError(f"set_progress(): message must be a str, got {message!r}")
    attempt = current()
    if attempt is None:  # task.call(), Django's ImmediateBackend, a shell: no job row to write it to
        return
    attempt.progress(done, total, message[:MAX_MESSAGE])


# -- anywhere ------------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]{1,19}")


def job_id(result_id, caller: str) -> int | None:
    """The job id ``result_id`` stands for (a TaskResult's id is its str), None if it is no job's
    id; TypeError for what is no id at all (a bool, a float: ``True`` or ``1.9`` is not job 1)."""
    if isinstance(result_id, str):
        if not _DIGITS.fullmatch(result_id):
            return None
        value = int(result_id)
    elif isinstance(result_id, int) and not isinstance(result_id, bool):
        value = result_id
    else:
        raise TypeError(f"{caller}(): result_id must be a job id (an int, or the str of a TaskResult's id), "
                        f"got {type(result_id).__name__} {_shown(result_id)}")
    return value if 1 <= value <= MAX_ID else None


def get_progress(result_id) -> dict | None:
    """``{"done", "total", "message", "updated_at"}`` of a job's latest progress, or None (also for
    an id that is no job's); TypeError for what is no id at all."""
    from .models import Job

    pk = job_id(result_id, "get_progress")
    if pk is None:
        return None
    value = Job.objects.filter(pk=pk).values_list("progress", flat=True).first()
    if not isinstance(value, dict):
        return None
    return {key: value.get(key) for key in ("done", "total", "message", "updated_at")}


def checked_reason(reason, by) -> tuple[str, str]:
    """A cancel's reason and author as stored, or ValueError naming the one over MAX_REASON characters."""
    reason, by = str(reason), str(by)
    for name, text in (("reason", reason), ("by", by)):
        if len(text) > MAX_REASON:
            raise ValueError(f"a cancel's {name} is {len(text):,} characters long: at most {MAX_REASON} are allowed")
    return reason, by


def cancel_ready(queryset, reason: str, now: datetime | None = None, *, by: str = "") -> list:
    """READY (and WAITING) jobs of ``queryset`` to CANCELLED: they never run. ``meta["cancelled"]``
    keeps the reason.

    Only those rows match, in the same UPDATE, so a job a worker claimed a moment ago is
    left to run (on PostgreSQL the UPDATE waits for the claim's row lock and then sees
    RUNNING). What their end sets off (their children, their batch: ``jobs.settle``) is
    written in the same transaction. Returns the jobs cancelled (``ChangedJob``);
    ValueError for a reason or ``by`` over ``MAX_REASON`` characters.
    """
    from .models import NOT_STARTED, JobStatus, JSONMerge, retried_on_conflict
    from .settle import settle

    reason, by = checked_reason(reason, by)
    now = now or timezone.now()

    def cancel() -> list:
        with transaction.atomic(using=queryset.db):
            changed = queryset.filter(status__in=NOT_STARTED).update_returning(
                status=JobStatus.CANCELLED, finished_at=now, cancel_requested_at=None,
                meta=JSONMerge("meta", {"cancelled": {"at": now.isoformat(), "by": by, "reason": reason}}),
            )
            settle(queryset.db, dict.fromkeys((job.pk for job in changed), JobStatus.CANCELLED), now=now)
        return changed

    return retried_on_conflict(queryset.db, cancel)


def delete_jobs(queryset) -> list:
    """Delete the jobs of ``queryset`` (``JobQuerySet.delete_jobs``), a job that has not ended
    counting, for what waits on it, as cancelled: its children are cancelled and its batch
    counts it, in the same transaction, so that neither waits for ever. Returns the jobs deleted."""
    from .models import FINISHED_STATUSES
    from .settle import DELETED, settle

    with transaction.atomic(using=queryset.db):
        unended = queryset.exclude(status__in=FINISHED_STATUSES).filter(
            Q(batch_id__isnull=False) | Q(has_dependents=True))
        ids = list(unended.values_list("pk", flat=True))
        if ids:
            settle(queryset.db, dict.fromkeys(ids, DELETED), now=timezone.now())
        return queryset.delete_jobs()


def request_cancel(queryset, reason: str, now: datetime | None = None, *, by: str = "") -> list:
    """RUNNING jobs of ``queryset``: ask their workers to stop them; returns the jobs asked (``ChangedJob``).

    Only the flag and ``meta["cancelled"]`` are written: the attempt is the worker's, which
    ends it CANCELLED (or SUCCESSFUL, when the attempt returns without having seen it). The
    flag belongs to the running attempt: its end clears it. On PostgreSQL the workers are
    told at once (on commit), a hint to read their rows.
    """
    from .models import JSONMerge

    reason, by = checked_reason(reason, by)
    now = now or timezone.now()
    asked = queryset.running().filter(cancel_requested_at__isnull=True).update_returning(
        cancel_requested_at=now,
        meta=JSONMerge("meta", {"cancelled": {"at": now.isoformat(), "by": by, "reason": reason,
                                              "while": "running"}}),
    )
    notify_cancel(connections[queryset.db], [job.pk for job in asked])
    return asked


def cancel(result_id, reason: str = "", *, by: str = "") -> str:
    """Cancel a job: CANCELLED at once if READY, its worker asked to stop it if RUNNING.

    Returns ``CANCELLED`` (it will never run), ``REQUESTED`` (it was RUNNING and its worker
    is asked to stop it: it ends CANCELLED, or SUCCESSFUL when its attempt returned without
    having seen the request) or ``FINISHED`` (left as it was); TaskResultDoesNotExist for
    an id that is no job, TypeError for what is no id, ValueError for a reason or an
    author longer than MAX_REASON characters.
    """
    from .framework import TaskResultDoesNotExist
    from .models import Job, JobStatus

    pk = job_id(result_id, "cancel")
    reason, by = checked_reason(reason, by)
    if pk is None:
        raise TaskResultDoesNotExist(result_id)
    one = Job.objects.filter(pk=pk)
    for _round in range(20):
        if cancel_ready(one, reason, by=by):
            return CANCELLED
        if request_cancel(one, reason, by=by):
            return REQUESTED
        status = one.values_list("status", flat=True).first()
        if status is None:
            raise TaskResultDoesNotExist(result_id)
        if status not in (JobStatus.READY, JobStatus.WAITING, JobStatus.RUNNING):
            return FINISHED
        if status == JobStatus.RUNNING and one.filter(cancel_requested_at__isnull=False).exists():
            return REQUESTED  # asked already (by someone else)
        # It moved between two statements (claimed, retried, handed back): look again.
    raise RuntimeError(f"cancel(): job {pk} changed state 20 times while it was being cancelled; "  # pragma: no cover
                       "nothing was done, call again")


def notify_cancel(connection, job_ids) -> None:
    """PostgreSQL: tell the workers at once (on commit), one notification per job, in one
    statement; elsewhere their heartbeat finds the flag."""
    if connection.vendor == "postgresql" and job_ids:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, id::text) FROM unnest(%s::bigint[]) AS id",
                           [CANCEL_CHANNEL, list(job_ids)])
