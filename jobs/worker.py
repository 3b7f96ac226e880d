"""The worker: claim due jobs into free slots, run them, record what happened.

One main thread talks to the database; each slot is a thread that runs one job at
a time and keeps its own database connection across jobs. The main loop, top to
bottom:

1. collect the outcomes that slots have handed back;
2. fail attempts that overran their timeout;
3. heartbeat and take back stale jobs, when due;
4. record the outcomes (fenced) in one transaction, then claim as many due jobs as
   there are free slots (a statement of its own);
5. hand the claimed jobs to slots, then wait for an outcome, a signal or the poll.

Threads, not processes, run the jobs: most jobs of a web site wait on I/O (mail,
HTTP, the database), a thread costs nothing to hand a job to and shares the
process's warm imports, and one process keeps memory low on a small server. The
price is that a timed-out sync job cannot be killed: its attempt is failed and its
slot replaced at once, and the stray thread's late result is discarded by fencing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timedelta
from queue import Empty, SimpleQueue

from django.db import DatabaseError, connections, router, transaction
from django.utils import timezone

from . import retry
from .exceptions import PERMANENT, JobTimeout, WorkerLost
from .execution import Outcome, failure, resolve_task, run_attempt
from .framework import task_backends
from .loops import worker_loops
from .models import Job, JobStatus, WorkerProcess, error_entry
from .wakeup import start_waker

logger = logging.getLogger(__name__)

_WAKE = object()  # put on the outcome queue to wake the main loop (signals, stop)

# Prefetch: hold at most this much expected run time of claimed jobs beyond the free
# slots, and at most this many jobs.
PREFETCH_SECONDS = 0.02
MAX_PREFETCH = 50
# Prefetched jobs still waiting after this long (a job ran slower than expected) are
# handed back for other workers.
BUFFER_MAX_WAIT = 1.0
# An outcome is written together with others, but waits at most this long (seconds).
FLUSH_AFTER = 0.005


def make_worker_id() -> str:
    """Host, PID for people to read, and a random part that makes it unique."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Slot:
    """A job thread. The main thread owns its bookkeeping; the thread only runs jobs."""

    def __init__(self, worker: Worker, index: int):
        self.worker = worker
        self.index = index
        self.inbox: SimpleQueue = SimpleQueue()
        self.job: Job | None = None
        self.timeout: float | None = None
        self.deadline: float | None = None
        self.abandoned = False
        self.thread = threading.Thread(target=self._loop, name=f"jobs-slot-{index}", daemon=True)
        self.thread.start()

    @property
    def busy(self) -> bool:
        return self.job is not None

    def start(self, job: Job, task) -> None:
        self.job = job
        self.timeout = timeout = getattr(task, "timeout", None)
        # Async tasks enforce their own timeout; this deadline is the backstop.
        self.deadline = time.monotonic() + timeout + (1.0 if timeout and _is_async(task) else 0) if timeout else None
        self.inbox.put((job, task))

    def _loop(self) -> None:
        try:
            while True:
                item = self.inbox.get()
                if item is None:
                    break
                job, task = item
                try:
                    outcome = run_attempt(job, task, backend=self.worker.backend, worker_id=self.worker.id)
                except Exception as exc:  # a bug of ours, not the job's: fail the attempt, keep the slot
                    logger.exception("job could not be run id=%s task=%s", job.pk, job.task_path)
                    outcome = failure(job, exc, worker_id=self.worker.id)
                if self.abandoned:
                    break
                self.worker.outcomes.put((self, outcome))
        except BaseException:  # an abandoned slot may be interrupted anywhere
            if not self.abandoned:
                raise
        finally:
            connections.close_all()

    def abandon(self) -> None:
        """Give up on the running attempt: the thread is told to stop, best effort."""
        self.abandoned = True
        ident = self.thread.ident
        if ident is not None and self.thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(JobTimeout))

    def stop(self) -> None:
        self.inbox.put(None)


def _is_async(task) -> bool:
    import asyncio

    return asyncio.iscoroutinefunction(task.func)


class Worker:
    def __init__(self, *, backend_alias: str = "default", queues: list[str] | None = None, concurrency: int = 1,
                 burst: bool = False, duration: float = 0, poll_interval: float | None = None,
                 run_loops: bool = True, now=timezone.now):
        self.backend = task_backends[backend_alias]
        self.options = self.backend.jobs_options
        self.queues = sorted(set(queues)) if queues else None
        self.concurrency = max(1, int(concurrency))
        self.burst = burst
        self.duration = duration
        self.poll_interval = poll_interval if poll_interval is not None else self.options.poll_interval
        self.run_loops = run_loops and not burst
        self.now = now
        self.id = make_worker_id()
        self.outcomes: SimpleQueue = SimpleQueue()
        self.stopping = threading.Event()  # stop claiming; let running jobs finish
        self.stop_deadline: float | None = None  # when unfinished jobs are handed back
        self.slots: list[Slot] = []
        self.pending: list[Outcome] = []  # outcomes not yet written
        self.pending_since = 0.0  # when the oldest of them arrived
        self.buffer: deque[Job] = deque()  # claimed (RUNNING for us) but not yet started
        self.avg_duration: float | None = None  # moving average of recent attempts, seconds
        self.loop_threads: list[threading.Thread] = []
        self.db_alias = router.db_for_write(Job)
        self._db_backoff = 0.0
        self._next_beat = 0.0
        self.processed = 0

    # -- lifecycle ------------------------------------------------------------------

    def request_stop(self, *, grace: float | None = None, reason: str = "") -> None:
        """Stop claiming; running jobs get ``grace`` seconds (None: as long as they need)."""
        if not self.stopping.is_set():
            logger.info("worker stopping worker=%s reason=%s running=%d", self.id, reason or "requested",
                        sum(s.busy for s in self.slots))
        deadline = time.monotonic() + grace if grace is not None else None
        if deadline is not None and (self.stop_deadline is None or deadline < self.stop_deadline):
            self.stop_deadline = deadline
        self.stopping.set()
        self.outcomes.put(_WAKE)  # SimpleQueue.put is reentrant: safe from a signal handler

    def wake(self) -> None:
        """New work may be due: end the idle wait now (called from the waker thread)."""
        if not all(s.busy for s in self.slots):  # a free slot could take it
            self.outcomes.put(_WAKE)

    def run(self) -> int:
        started = time.monotonic()
        self.slots = [Slot(self, i) for i in range(self.concurrency)]
        self._with_db(self._register)
        self._waker = start_waker(connections[self.db_alias], wake=self.wake, stop=self.stopping, queues=self.queues)
        self._start_loops()
        logger.info("worker started worker=%s queues=%s concurrency=%d burst=%s", self.id,
                    ",".join(self.queues or ["*"]), self.concurrency, self.burst)
        try:
            while not self._finished():
                if self.duration and time.monotonic() - started >= self.duration and not self.stopping.is_set():
                    self.request_stop(reason=f"duration {self.duration:g}s reached")
                self._step()
        finally:
            self._shutdown()
        return 0

    def _finished(self) -> bool:
        running = any(s.busy for s in self.slots)
        if self.stopping.is_set():
            if not running and not self.pending:
                return True
            return self.stop_deadline is not None and time.monotonic() >= self.stop_deadline
        return False

    # -- one turn of the loop ------------------------------------------------------------

    def _step(self) -> None:
        self._collect(block_for=0)
        self._expire_timeouts()
        if time.monotonic() >= self._next_beat:
            if self._with_db(self._heartbeat_and_sweep):
                self._next_beat = time.monotonic() + self.options.heartbeat_interval
        self._dispatch_buffered()
        if self.buffer and time.monotonic() - self.buffer[0].claimed_mono > BUFFER_MAX_WAIT:
            self._with_db(self._release_buffer)
        want = self._claim_size()
        if want or self._flush_due():
            claimed = self._with_db(lambda: self._record_and_claim(want))
            if claimed is None:  # database trouble: _with_db already backed off
                return
            claimed_mono = time.monotonic()
            for job in claimed:
                job.claimed_mono = claimed_mono  # the buffer is FIFO: its head is its oldest
            self.buffer.extend(claimed)
            self._dispatch_buffered()
            if self.burst and not claimed and not self.buffer and not self._busy() and not self.pending:
                self.request_stop(reason="burst: no due jobs left")
                return
            if want and len(claimed) == want:
                return  # a full batch: more may be due, go round at once
        if self.buffer and any(not s.busy for s in self.slots) and not self.stopping.is_set():
            return
        self._collect(block_for=self._wait_time())

    def _release_buffer(self) -> None:
        """Hand back prefetched jobs that waited too long behind a job slower than expected,
        so that an idle worker elsewhere can run them now."""
        released = list(self.buffer)
        with transaction.atomic(using=self.db_alias):
            for job in released:
                job.mark_handed_back()
        self.buffer.clear()
        logger.info("prefetched jobs handed back worker=%s count=%d waited_over=%ss", self.id, len(released),
                    BUFFER_MAX_WAIT)

    def _busy(self) -> bool:
        return any(s.busy for s in self.slots)

    def _prefetch(self) -> int:
        """Jobs to hold beyond the free slots: as many as fit in PREFETCH_SECONDS of run time.

        Fast jobs then come many to a claim and many outcomes to a commit; slow jobs
        come one per free slot, so a worker never sits on work another worker could run.
        """
        if self.avg_duration is None:
            return 0
        return min(MAX_PREFETCH, int(PREFETCH_SECONDS * self.concurrency / max(self.avg_duration, 1e-5)))

    def _claim_size(self) -> int:
        if self.stopping.is_set():
            return 0
        free = sum(not s.busy for s in self.slots)
        if len(self.buffer) >= free:
            return 0  # enough in hand for every slot that will free up next
        return free + self._prefetch() - len(self.buffer)

    def _flush_due(self) -> bool:
        """Outcomes are written together, but none waits more than FLUSH_AFTER seconds."""
        if not self.pending:
            return False
        return (not self.buffer or self.stopping.is_set()
                or time.monotonic() - self.pending_since >= FLUSH_AFTER)

    def _wait_time(self) -> float:
        if self.stopping.is_set() and not self._busy() and not self.pending:
            return 0.0  # nothing left to wait for: go and exit
        now = time.monotonic()
        waits = [max(self._next_beat - now, 0)]
        waits += [max(s.deadline - now, 0) for s in self.slots if s.busy and s.deadline is not None]
        if self.stop_deadline is not None:
            waits.append(max(self.stop_deadline - now, 0))
        if self.pending:
            waits.append(max(self.pending_since + FLUSH_AFTER - now, 0))
        if not self.stopping.is_set() and not all(s.busy for s in self.slots):
            waits.append(self.poll_interval)
        return min(waits)

    def _dispatch_buffered(self) -> None:
        if self.stopping.is_set():
            return
        for slot in self.slots:
            if not self.buffer:
                return
            if not slot.busy:
                self._dispatch(slot, self.buffer.popleft())

    def _collect(self, block_for: float) -> None:
        """Move handed-back outcomes to ``pending``; wait up to ``block_for`` for the first."""
        try:
            item = self.outcomes.get(timeout=block_for) if block_for > 0 else self.outcomes.get_nowait()
        except Empty:
            return
        while True:
            if item is not _WAKE:
                slot, outcome = item
                if slot.job is outcome.job and not slot.abandoned:
                    slot.job, slot.deadline = None, None
                    self._add_pending(outcome)
            try:
                item = self.outcomes.get_nowait()
            except Empty:
                return

    def _add_pending(self, outcome: Outcome) -> None:
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(outcome)
        if outcome.succeeded or outcome.duration:
            previous = self.avg_duration if self.avg_duration is not None else outcome.duration
            self.avg_duration = 0.8 * previous + 0.2 * outcome.duration

    def _dispatch(self, slot: Slot, job: Job) -> None:
        logger.info("job started id=%s task=%s attempt=%d/%d queue=%s worker=%s", job.pk, job.task_path,
                    job.attempts, job.max_attempts, job.queue_name, self.id)
        try:
            task = resolve_task(job.task_path)
        except PERMANENT as exc:
            self._add_pending(failure(job, exc, worker_id=self.id, permanent=True))
            return
        slot.start(job, task)

    def _expire_timeouts(self) -> None:
        now = time.monotonic()
        for index, slot in enumerate(self.slots):
            if slot.busy and slot.deadline is not None and now >= slot.deadline:
                job = slot.job
                exc = JobTimeout(f"attempt {job.attempts} timed out after {slot.timeout:g}s; "
                                 "the worker stopped waiting for it")
                self._add_pending(failure(job, exc, worker_id=self.id, duration=slot.timeout,
                                          traceback=f"{exc}\n"))
                slot.abandon()
                self.slots[index] = Slot(self, slot.index)

    # -- database work (main thread only) -------------------------------------------------

    def _with_db(self, fn):
        """Run ``fn``; on a database error log, back off (interruptibly) and return None.

        A dropped connection or a restarted PostgreSQL costs a few retries, not the
        worker: the failed connection is closed and the next query reconnects.
        """
        try:
            value = fn()
        except DatabaseError as exc:
            self._db_backoff = min(max(self._db_backoff * 2, 0.1), 10.0)
            logger.warning("database error worker=%s retry_in=%.1fs error=%s: %s", self.id, self._db_backoff,
                           type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            try:
                connections[self.db_alias].close()
            except DatabaseError:
                pass
            self._collect(block_for=self._db_backoff)
            return None
        self._db_backoff = 0.0
        return value if value is not None else True

    def _register(self) -> None:
        now = self.now()
        WorkerProcess.objects.update_or_create(worker_id=self.id, defaults=dict(
            hostname=socket.gethostname(), pid=os.getpid(), queues=self.queues or [],
            concurrency=self.concurrency, started_at=now, heartbeat_at=now))

    def _record_and_claim(self, free: int) -> list[Job]:
        if not self.pending and not free:
            return []
        now = self.now()
        if self.pending:
            successes = [o for o in self.pending if o.succeeded]
            with transaction.atomic(using=self.db_alias):
                recorded = Job.objects.mark_successful_many([(o.job, o.return_value) for o in successes], now=now)
                written = [(o, JobStatus.SUCCESSFUL if o.job.pk in recorded else None, "") for o in successes]
                written += [(o, *self._record_failure(o, now)) for o in self.pending if not o.succeeded]
            self.processed += len(self.pending)
            self.pending = []
            for outcome, status, note in written:
                self._log_outcome(outcome, status, note)
        # The claim is a statement of its own (autocommit), outside the outcomes' transaction.
        # PostgreSQL keeps locked the rows a claim skipped because another worker claimed them
        # a moment before, until the claim's transaction ends; in a transaction of ours, a
        # pause or a partition of this process before COMMIT would stall that other worker
        # on its own jobs. A statement's locks end with it, on the server, whatever happens here.
        return Job.objects.claim(worker_id=self.id, limit=free, now=now, queues=self.queues)

    def _record_failure(self, outcome: Outcome, now: datetime) -> tuple[str | None, str]:
        """Write one failed attempt, fenced: (status written or None if not ours, a note for the log)."""
        job = outcome.job
        decision = self._decide(job, outcome)
        retry_at = now + timedelta(seconds=decision.delay) if decision.retry else None
        if not job.mark_failed(outcome.error, now=now, retry_at=retry_at):
            return None, ""
        if decision.retry:
            return JobStatus.READY, f"retry in {decision.delay:.1f}s"
        return JobStatus.FAILED, decision.reason

    def _decide(self, job: Job, outcome: Outcome) -> retry.RetryDecision:
        if outcome.permanent:
            return retry.RetryDecision(False, reason="not retried: the task cannot be run")
        return retry.decide(attempt=job.attempts, max_attempts=job.max_attempts, base=self.options.retry_backoff,
                            custom_delay=outcome.custom_delay, custom_given=outcome.custom_given)

    def _log_outcome(self, outcome: Outcome, status: str | None, note: str) -> None:
        job = outcome.job
        fields = (job.pk, job.task_path, job.attempts, job.max_attempts, outcome.duration)
        if status is None:
            logger.warning("job outcome discarded id=%s task=%s attempt=%d/%d duration=%.3fs "
                           "reason=attempt-no-longer-held", *fields)
        elif status == JobStatus.SUCCESSFUL:
            logger.info("job finished id=%s task=%s attempt=%d/%d duration=%.3fs outcome=SUCCESSFUL", *fields)
        else:
            error = outcome.error
            logger.warning("job finished id=%s task=%s attempt=%d/%d duration=%.3fs outcome=%s next=%s error=%s: %s",
                           *fields, "RETRY" if status == JobStatus.READY else "FAILED", note.replace(" ", "-"),
                           error["exception_class_path"], error["message"][:200])

    def _held_ids(self) -> list[int]:
        """Every job this worker holds RUNNING: in a slot, waiting in the buffer, or finished
        but not yet written. A buffered job left out would look lost to other workers."""
        return ([s.job.pk for s in self.slots if s.busy] + [job.pk for job in self.buffer]
                + [outcome.job.pk for outcome in self.pending])

    def _heartbeat_and_sweep(self) -> None:
        now = self.now()
        # Statements of their own, like the claim (see _record_and_claim): an UPDATE of a row
        # just taken over by another worker would keep it locked until our COMMIT.
        beat = WorkerProcess.objects.filter(pk=self.id).update(heartbeat_at=now)
        if not beat:  # our row was cleaned away (say, after a long database outage)
            self._register()
        held = self._held_ids()
        if held:
            Job.objects.filter(pk__in=held, worker_id=self.id, status=JobStatus.RUNNING).update(heartbeat_at=now)
        self.take_back_stale(now)

    def take_back_stale(self, now: datetime) -> int:
        """Fail the attempts of workers that stopped heartbeating, and retry them."""
        stale_after = self.options.stale_after
        cutoff = now - timedelta(seconds=stale_after)
        taken = 0
        for job in Job.objects.stale(cutoff).order_by("heartbeat_at")[:100]:
            exc = WorkerLost(f"worker {job.worker_id} was lost: no heartbeat for over {stale_after:g}s "
                             f"(last at {job.heartbeat_at.isoformat()}); attempt {job.attempts} taken back by {self.id}")
            error = error_entry(exc, attempt=job.attempts, worker_id=job.worker_id, when=now, traceback=f"{exc}\n")
            decision = retry.decide(attempt=job.attempts, max_attempts=job.max_attempts,
                                    base=self.options.retry_backoff)
            retry_at = now + timedelta(seconds=decision.delay) if decision.retry else None
            if job.mark_lost(error, cutoff=cutoff, now=now, retry_at=retry_at):
                taken += 1
                logger.warning("job taken back id=%s task=%s attempt=%d/%d lost_worker=%s outcome=%s", job.pk,
                               job.task_path, job.attempts, job.max_attempts, job.worker_id,
                               "RETRY" if decision.retry else "FAILED")
        # Rows of worker processes that died long ago say nothing useful any more.
        WorkerProcess.objects.filter(heartbeat_at__lt=now - timedelta(seconds=max(stale_after * 10, 3600))).delete()
        return taken

    # -- extra loops and shutdown -----------------------------------------------------------

    def _start_loops(self) -> None:
        if not self.run_loops:
            return
        for name, loop in worker_loops().items():
            thread = threading.Thread(target=self._run_loop, args=(name, loop), name=f"jobs-loop-{name}",
                                      daemon=True)
            thread.start()
            self.loop_threads.append(thread)

    def _run_loop(self, name: str, loop) -> None:
        try:
            loop(self.stopping)
        except Exception:
            logger.exception("worker loop %s crashed worker=%s", name, self.id)
        finally:
            connections.close_all()

    def _shutdown(self) -> None:
        """Write what finished, hand back what did not, and leave no trace of this process."""
        self._collect(block_for=0)
        for _ in range(5):
            if self._with_db(lambda: self._record_and_claim(0)) is not None:
                break
        unfinished = [s.job for s in self.slots if s.busy] + list(self.buffer)
        self.buffer.clear()
        for slot in self.slots:
            slot.abandoned = bool(slot.job)
            slot.stop()

        def hand_back():
            with transaction.atomic(using=self.db_alias):
                for job in unfinished:
                    if job.mark_handed_back():
                        logger.warning("job handed back id=%s task=%s attempt=%d (shutdown before it finished)",
                                       job.pk, job.task_path, job.attempts)
                WorkerProcess.objects.filter(pk=self.id).delete()

        for _ in range(5):
            if self._with_db(hand_back) is not None:
                break
        for thread in self.loop_threads:
            thread.join(timeout=5)
        logger.info("worker stopped worker=%s processed=%d handed_back=%d", self.id, self.processed,
                    len(unfinished))
