"""Liveness, its own loop: this worker's heartbeat, and taking back other workers' lost jobs.

Every ``stale_after / 3`` seconds, on its own thread and connection: beat for the
process row and every job the pool holds, then fail the attempts of workers that
stopped beating (killed, frozen, cut off) as a counted attempt whose error says the
worker was lost, and retry them. PIDs are never looked at: they mean nothing
across hosts. A database error waits (``jobs.backoff``) and tries again; the worker
keeps running its jobs meanwhile, and its heartbeat resumes when the database does.

Between beats, a hint that a cancel may have been asked (PostgreSQL: a notification
on the cancel channel; SQLite: any commit, seen by the wake-up probe) makes it read
the cancel flags of the jobs it holds, at most every ``CANCEL_CHECK_EVERY`` seconds:
a hint is never acted on by itself, only what the rows say is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import connections

from .. import retry
from ..backoff import Backoff, first_line
from ..clock import Clock
from ..control import CANCEL_CHECK_EVERY
from ..errors import error_entry
from ..exceptions import DamagedJob, JobTimeout, WorkerLost
from ..execution import attempt_limit, not_retried, send_finished
from ..framework import TaskResultStatus
from ..models import Job, JobStatus
from ..resolve import resolve_task
from ..rows import ClaimedJob
from ..sessions import guarded_sessions, hold_limit
from ..store import WorkerStore, fail_attempt
from .failures import announce_failure, job_fields

logger = logging.getLogger("jobs.worker")

SWEEP_LIMIT = 100  # stale jobs taken back per beat
LOST_WORKERS_KEPT = 86400  # seconds a dead worker's row stays (listed as lost by the overview)


class Liveness:
    def __init__(self, *, worker_id: str, backend, held: Callable[[], list[int]], register: Callable[[], None],
                 clock: Clock, cancel: Callable[[int], object] = lambda job_id: None):
        self.worker_id = worker_id
        self.backend = backend
        self.options = backend.jobs_options
        self.held = held  # the ids of every job this worker holds (the pool's)
        self.register = register  # writes this worker's process row anew
        self.cancel = cancel  # stops a held job someone asked to cancel (the pool's)
        self.clock = clock
        self.store = WorkerStore(worker_id=worker_id, backend=backend.alias)
        self.stop = threading.Event()
        self.hinted = threading.Event()  # a cancel may have been asked: read the flags soon
        self.wake = threading.Event()  # ends the wait between beats (a stop, a hint)
        self.checked_at = float("-inf")  # when the flags were last read (time.monotonic)
        self.thread = threading.Thread(target=self._loop, name="jobs-liveness", daemon=True)

    def __enter__(self) -> Liveness:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.wake.set()
        self.thread.join(timeout=10)

    def hint(self) -> None:
        """From any thread: a cancel may have been asked of a job this worker holds (never trusted:
        the flags are read from the rows)."""
        if self.held():
            self.hinted.set()
            self.wake.set()

    def _loop(self) -> None:
        try:
            with guarded_sessions(hold_limit(self.options.stale_after)):  # a frozen peer cannot stall the beat
                self._beat_until_stopped()
        finally:
            connections.close_all()

    def _beat_until_stopped(self) -> None:
        backoff = Backoff()
        next_beat = time.monotonic()  # the first beat at once: it also sweeps what others left behind
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self.hinted.clear()
                try:
                    self.beat_and_sweep(self.clock.now())
                except Exception as exc:  # noqa: BLE001 - the beat goes on when the database is back
                    wait = backoff.failed()
                    logger.warning("heartbeat failed worker=%s retry_in=%.1fs error=%s: %s", self.worker_id, wait,
                                   type(exc).__name__, first_line(exc))
                    self.store.close()
                else:
                    backoff.succeeded()
                    wait = self.options.heartbeat_interval
                self.checked_at, next_beat = now, time.monotonic() + wait
            elif self.hinted.is_set() and now >= self.checked_at + CANCEL_CHECK_EVERY:
                self.hinted.clear()
                self.checked_at = now
                try:
                    self.check_cancels()
                except Exception as exc:  # noqa: BLE001 - the next beat reads the flags again
                    logger.warning("cancel check failed worker=%s error=%s: %s", self.worker_id,
                                   type(exc).__name__, first_line(exc))
                    self.store.close()
            wait = next_beat - time.monotonic()
            if self.hinted.is_set():
                wait = min(wait, self.checked_at + CANCEL_CHECK_EVERY - time.monotonic())
            self.wake.wait(max(wait, 0.0))
            self.wake.clear()

    def beat_and_sweep(self, now: datetime) -> int:
        """One beat: the heartbeat, then the stale sweep; returns the jobs taken back."""
        alive, asked = self.store.heartbeat(self.held(), now=now)
        if not alive:
            self.register()  # our row was cleaned away (say, after a long database outage)
        for job_id in asked:
            self.cancel(job_id)
        return self.take_back_stale(now)

    def check_cancels(self) -> int:
        """Stop the held jobs whose rows say a cancel was asked; how many rows said so."""
        held = self.held()
        asked = self.store.asked_to_cancel(held) if held else []
        for job_id in asked:
            self.cancel(job_id)
        return len(asked)

    def take_back_stale(self, now: datetime) -> int:
        """Fail the attempts of workers that stopped heartbeating, and retry them (or not)."""
        stale_after = self.options.stale_after
        cutoff = now - timedelta(seconds=stale_after)
        taken = self._take_back(self.store.stale(cutoff=cutoff, limit=SWEEP_LIMIT), now=now, lost_before=cutoff)
        # Kept a day: the overview lists them as lost meanwhile (jobs/admin/live.py).
        self.store.forget_dead_processes(now - timedelta(seconds=max(stale_after * 10, LOST_WORKERS_KEPT)))
        for key, was, count in self.store.mend_counts():
            logger.warning("limit key count mended key=%r running=%s -> %d: no live attempt explained it", key,
                           str(was)[:40], count)
        return taken

    def take_back_held(self, worker_id: str, now: datetime, because: dict[tuple[int, int], Exception]) -> int:
        """Fail the attempts of ``worker_id``, known to be gone (its ``--processes`` parent ended it or
        saw it die), at once and each for the reason ``because`` gives by (id, attempt), else as a
        lost worker's. Their heartbeats are recent (the parent beat for them), so no other worker's
        sweep can take them first, for a worse reason, while this runs."""
        lost_before = now + timedelta(seconds=1)  # after the parent's last beat of them
        return self._take_back(self.store.stale(cutoff=lost_before, limit=SWEEP_LIMIT, worker_id=worker_id), now=now,
                               lost_before=lost_before, because=because)

    def _take_back(self, jobs: list, *, now: datetime, lost_before: datetime,
                   because: dict[tuple[int, int], Exception] | None = None) -> int:
        stale_after = self.options.stale_after
        taken = 0
        for job in jobs:
            last = job.heartbeat_at.isoformat() if isinstance(job.heartbeat_at, datetime) else "unknown"
            exc = (because or {}).get((job.id, job.attempts)) or WorkerLost(
                f"worker {job.worker_id} was lost: no heartbeat for over {stale_after:g}s "
                f"(last at {last}); attempt {job.attempts} taken back by {self.worker_id}")
            final = JobStatus.FAILED
            if job.damage:
                exc = DamagedJob(f"{exc}; not retried: the row cannot be run as stored: {'; '.join(job.damage)}")
                limit, decision = job.max_attempts, retry.RetryDecision(False, reason="damaged row")
            elif job.cancel_requested_at is not None:  # it was being cancelled: it stays so
                limit, decision, final = job.max_attempts, retry.RetryDecision(False, reason="cancelled"), \
                    JobStatus.CANCELLED
            else:
                limit = attempt_limit(job, self.backend)
                decision = retry.decide(attempt=job.attempts, max_attempts=limit, base=self.options.retry_backoff)
                if isinstance(exc, JobTimeout):  # a --processes parent ended it: the task's retry_on counts
                    reason = not_retried(_task_or_none(job.task_path), exc)
                    if reason:
                        decision = retry.RetryDecision(False, reason=reason)
            error = error_entry(exc, attempt=job.attempts, worker_id=job.worker_id, when=now, traceback=f"{exc}\n")
            written = fail_attempt(job, error, decision, now=now, final=final, lost_before=lost_before,
                                   using=self.store.alias)
            if written is None:
                continue  # it beat again since we looked: alive after all
            taken += 1
            # A final failure is logged at ERROR with the WorkerLost (for Sentry and mail handlers);
            # a retry, or a cancel that the lost worker never finished, at WARNING.
            failed = written == JobStatus.FAILED and not decision.retry  # (not a retry a queued job stands for)
            logger.log(logging.ERROR if failed else logging.WARNING,
                       "job taken back id=%s task=%s attempt=%s/%s lost_worker=%s outcome=%s%s", job.id,
                       job.task_path, job.attempts, limit, job.worker_id,
                       JobStatus.FAILED if written == JobStatus.READY else written,
                       f" retry_in={decision.delay:.1f}s" if written == JobStatus.READY else "",
                       exc_info=exc if failed else None, extra=job_fields(job, limit))
            if failed:
                result = None if job.damage else self._send_finished(job)
                announce_failure(self.backend, job, error=error, exception=exc, task_result=result)
        return taken

    def _send_finished(self, job: ClaimedJob):
        """``task_finished`` (FAILED) for a job whose last attempt's worker was lost: it is finished
        too. Returns the TaskResult sent (None if there is no task to describe)."""
        result = None
        try:
            task = resolve_task(job.task_path)
            whole = Job.objects.using(self.store.alias).get(pk=job.id)
            # The row as written: its errors already end with this take-back.
            result = self.backend.to_task_result(whole, task)
            send_finished(self.backend, result, status=TaskResultStatus.FAILED)
        except Exception:  # noqa: BLE001 - no task to describe, or a receiver's bug: the job is FAILED all the same
            logger.exception("task_finished not sent for a job taken back id=%s task=%s", job.id, job.task_path)
        return result


def _task_or_none(path: str):
    try:
        return resolve_task(path)
    except Exception:  # noqa: BLE001 - no task, no task options
        return None
