"""Stopping a job and watching it: ``cancel()``, and, inside a running task,
``cancel_requested()`` and ``set_progress()``; ``get_progress()`` anywhere.

A READY job is cancelled at once (one UPDATE: a worker that claims it a moment
later sees it gone). A RUNNING one belongs to its worker, so ``cancel()`` only asks:
it marks the row (``cancel_requested_at``, and the reason in ``meta["cancelled"]``)
and, on PostgreSQL, says so on the wake-up channel. The worker notices at once
(PostgreSQL) or at its next heartbeat (at most ``stale_after / 3`` seconds) and then:
``cancel_requested()`` turns true inside the task, an async task is cancelled, and a
sync task that has not returned ``CANCEL_GRACE`` seconds later is interrupted like a
timed-out one. Whatever the attempt comes to after that, the job ends CANCELLED
(never retried), through the same failure transition as every other failure.

Progress is written by the task's own thread, at most ``PROGRESS_EVERY`` seconds
apart (the latest value is kept and written at the next chance, and when the
attempt ends), so a task may call ``set_progress()`` in a tight loop. It is kept
when the job ends, and cleared when a new attempt starts.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.db import router
from django.utils import timezone

CANCEL_GRACE = 10.0  # seconds a sync task has to return after being asked to stop
PROGRESS_EVERY = 0.25  # seconds between progress writes of one job, at least
CANCEL_CHANNEL = "jobs_cancel"  # PostgreSQL: the wake-up channel for cancels (payload: the job id)
MAX_MESSAGE = 500

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
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop has closed: the attempt is over anyway
                pass

    def progress(self, done, total, message: str) -> None:
        with self.lock:
            self.pending = {"done": done, "total": total, "message": message,
                            "updated_at": timezone.now().isoformat()}
        if self.clock() - self.written_at >= PROGRESS_EVERY:
            self.flush()

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

def cancel_requested() -> bool:
    """True once someone asked to cancel the job this task runs for (False outside a worker)."""
    attempt = current()
    return attempt is not None and attempt.cancel.is_set()


def _number(value, what: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
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

def get_progress(result_id) -> dict | None:
    """``{"done", "total", "message", "updated_at"}`` of a job's latest progress, or None."""
    from .models import Job

    try:
        value = Job.objects.filter(pk=int(result_id)).values_list("progress", flat=True).first()
    except (TypeError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    return {key: value.get(key) for key in ("done", "total", "message", "updated_at")}


def cancel(result_id, reason: str = "", *, by: str = "") -> str:
    """Cancel a job: CANCELLED at once if READY, its worker asked to stop it if RUNNING.

    Returns ``CANCELLED``, ``REQUESTED`` or ``FINISHED`` (a finished job is left as it
    was); TaskResultDoesNotExist for an id that is no job.
    """
    from .framework import TaskResultDoesNotExist
    from .models import Job, JobStatus

    try:
        pk = int(result_id)
    except (TypeError, ValueError):
        raise TaskResultDoesNotExist(result_id) from None
    one = Job.objects.filter(pk=pk)
    reason = str(reason)[:MAX_MESSAGE]
    if one.cancel(reason, by=by):
        return CANCELLED
    if one.request_cancel(reason, by=by):
        return REQUESTED
    status = one.values_list("status", flat=True).first()
    if status is None:
        raise TaskResultDoesNotExist(result_id)
    return REQUESTED if status == JobStatus.RUNNING else FINISHED


def notify_cancel(connection, job_ids) -> None:
    """PostgreSQL: tell the workers at once (on commit), one notification per job, in one
    statement; elsewhere their heartbeat finds the flag."""
    if connection.vendor == "postgresql" and job_ids:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, id::text) FROM unnest(%s::bigint[]) AS id",
                           [CANCEL_CHANNEL, list(job_ids)])
