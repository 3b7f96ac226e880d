"""The job threads ("slots"), the claimed jobs they take, and their deadlines.

A claim brings jobs into a FIFO buffer; a free slot takes the next one itself and
hands its outcome to the worker's inbox, so the main thread hands out batches, not
jobs. The pool knows every job this worker holds RUNNING in the database (waiting in
the buffer, running, or finished but not yet written), which is what the heartbeat
covers: a job left out would look lost to other workers.

A sync job that overruns its timeout cannot be killed inside a thread: its slot is
abandoned (told to stop by an exception raised in it, best effort) and replaced at
once, and anything the stray thread still returns is dropped here, and fenced out
by the database if it ever got that far.

That exception may land only while the thread runs the job, never in the pool's own
code: raised inside ``with self.lock`` (``Condition.__enter__`` is Python code) it left
the pool's lock held by a thread that then ended, and every thread of the worker
waited on it for ever (``make chaos`` found it: after a SIGSTOP every deadline passes
at once, while slots are handing in outcomes). So a slot says, under a lock of its own,
when it enters and leaves the job; ``abandon`` sends the exception only in between,
and an abandoned thread never touches the pool again.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue

from django.db import connections

from .. import control
from ..clock import Clock
from ..control import CANCEL_GRACE
from ..exceptions import JobTimeout
from ..execution import Outcome, cancelled, failure
from ..rows import ClaimedJob

WAKE = object()  # put in the inbox to end the main loop's wait (a signal, new work, stop)

# Prefetch: hold at most this much expected run time of claimed jobs beyond the free
# slots, and at most this many jobs.
PREFETCH_SECONDS = 0.02
MAX_PREFETCH = 50


class Slot:
    """One job thread. Its fields are read and written under the pool's lock, except
    ``in_job`` and ``abandoned``, which ``guard`` orders against the interrupt."""

    def __init__(self, pool: SlotPool, index: int):
        self.pool = pool
        self.index = index
        self.job: ClaimedJob | None = None
        self.attempt: control.Attempt | None = None  # the running attempt's cancel flag and progress
        self.timeout: float | None = None
        self.deadline: float | None = None
        self.cancel_deadline: float | None = None  # a cancel was asked: interrupted if still running then
        self.abandoned = False
        self.interrupted = False  # interrupt() was sent for the current job
        self.in_job = False  # the thread is inside pool.execute, where an interrupt may land
        self.guard = threading.Lock()  # a C lock: no exception can come between its acquire and the block
        self.thread = threading.Thread(target=self._loop, name=f"jobs-slot-{index}", daemon=True)

    def arm(self, task) -> None:
        """Start the clock on the job's timeout, once its task is known (from the slot's thread)."""
        timeout = getattr(task, "timeout", None)
        if timeout:
            # Async tasks enforce their own timeout; this deadline is the backstop. Plain stores, not
            # under the pool's lock: this runs inside the job, where an interrupt may land.
            backstop = 1.0 if asyncio.iscoroutinefunction(task.func) else 0.0
            self.timeout = timeout
            self.deadline = self.pool.clock.monotonic() + timeout + backstop
            self.pool.report("deadline", self.job, self.deadline, "timeout")

    def _loop(self) -> None:
        pool = self.pool
        try:
            while True:
                job = pool.next_job(self)
                if job is None:
                    return
                outcome = self._run(job)
                if outcome is None or not pool.finished(self, outcome):
                    return  # abandoned meanwhile: its outcome is not ours to hand in
        except BaseException:  # an abandoned slot's interrupt, landing after all
            if not self.abandoned:
                raise
        finally:
            connections.close_all()

    def _run(self, job: ClaimedJob) -> Outcome | None:
        """Run the job, inside the window where ``abandon`` may interrupt it; None if abandoned."""
        try:
            with self.guard:
                if self.abandoned:
                    return None
                self.in_job = True
            try:
                outcome = self.pool.execute(job, self)
            except BaseException as exc:  # a bug of ours (or of a signal receiver): fail the attempt
                outcome = failure(job, exc, worker_id=job.worker_id)
            self.pool.report("end", job)  # its code has returned: a parent need not end the process for it
            with self.guard:
                self.in_job = False
                if not self.abandoned:
                    return outcome  # never interrupted: abandon sends only to an abandoned slot
        except BaseException:  # the interrupt, wherever in this method it landed
            if not self.abandoned:
                raise
        return None

    def interrupt(self) -> None:
        """Under a parent that enforces deadlines: raise ``JobTimeout`` in the job once, without
        abandoning the slot. Python code stops and its outcome comes in as usual; a C call does
        not, and the parent ends the process."""
        with self.guard:
            ident = self.thread.ident
            if self.in_job and not self.interrupted and ident is not None and self.thread.is_alive():
                self.interrupted = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(JobTimeout))

    def abandon(self) -> None:
        """Stop waiting for this slot (called under the pool's lock); its thread, if still in
        its job, gets an exception there (best effort: C code finishes its call first)."""
        with self.guard:
            self.abandoned = True
            if self.attempt is not None:
                self.attempt.abandoned = True  # its late return sends no task_finished (jobs.execution)
            ident = self.thread.ident
            if self.in_job and ident is not None and self.thread.is_alive():
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(JobTimeout))


class SlotPool:
    def __init__(self, *, size: int, execute: Callable[[ClaimedJob, Slot], Outcome], inbox: SimpleQueue,
                 clock: Clock, report: Callable[..., None] | None = None):
        self.execute = execute  # runs one job in a slot's thread; never raises
        # Under ``process_tasks --processes`` the parent enforces deadlines by ending this process,
        # which alone stops code that ignores an interrupt (a C call); the slots tell it each one.
        self.report = report or (lambda *event: None)
        self.hard_deadlines = report is not None
        self.inbox = inbox  # outcomes (and WAKEs) for the main loop
        self.clock = clock
        self.lock = threading.Condition()
        self.buffer: deque[ClaimedJob] = deque()
        self.held: dict[int, ClaimedJob] = {}  # claimed and not yet written, by id
        self.taking = True  # False once the worker stops: slots finish what they run, take no more
        self.closed = False
        self.avg_duration: float | None = None  # moving average of recent attempts, seconds
        self.slots = [Slot(self, index) for index in range(size)]

    def __enter__(self) -> SlotPool:
        for slot in self.slots:
            slot.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.closed = True
            for slot in self.slots:
                if slot.job is not None:
                    slot.abandoned = True  # shutdown: what still runs is handed back, not written
            self.lock.notify_all()

    # -- the slots' side ----------------------------------------------------------------------

    def next_job(self, slot: Slot) -> ClaimedJob | None:
        """Block until there is a job for ``slot`` (None: the pool is closing)."""
        with self.lock:
            while not (self.taking and self.buffer) and not self.closed and not slot.abandoned:
                self.lock.wait()
            if self.closed or slot.abandoned:
                return None
            job = self.buffer.popleft()
            slot.job, slot.timeout, slot.deadline, slot.cancel_deadline = job, None, None, None
            slot.interrupted = False
            slot.attempt = control.Attempt(job_id=job.id, attempts=job.attempts, worker_id=job.worker_id)
            return job

    def finished(self, slot: Slot, outcome: Outcome) -> bool:
        """Hand ``outcome`` in; False if the slot was abandoned meanwhile (the outcome is dropped)."""
        with self.lock:
            if slot.abandoned or slot.job is not outcome.job:
                return False
            slot.job, slot.deadline, slot.cancel_deadline, slot.attempt = None, None, None, None
            # Under the lock: once the slot is seen idle, its outcome is in the inbox (a burst
            # worker that finds the pool idle must not quit with an outcome still on its way).
            self.inbox.put(outcome)
        return True

    # -- the main loop's side -------------------------------------------------------------------

    def give(self, jobs: list[ClaimedJob]) -> None:
        if not jobs:
            return
        claimed_at = self.clock.monotonic()
        with self.lock:
            for job in jobs:
                job.claimed_at = claimed_at
                self.held[job.id] = job
            self.buffer.extend(jobs)
            self.lock.notify_all()

    def collect(self, timeout: float = 0.0) -> list[Outcome]:
        """The outcomes handed in so far, waiting up to ``timeout`` for the first (or a WAKE)."""
        items = []
        try:
            items.append(self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait())
            while True:
                items.append(self.inbox.get_nowait())
        except Empty:
            pass
        outcomes = [item for item in items if item is not WAKE]
        for outcome in outcomes:
            if outcome.succeeded or outcome.duration:
                previous = self.avg_duration if self.avg_duration is not None else outcome.duration
                self.avg_duration = 0.8 * previous + 0.2 * outcome.duration
        return outcomes

    def expire(self) -> list[Outcome]:
        """Fail the attempts that overran their timeout (or a cancel's grace), abandoning (and
        replacing) their slots."""
        now, expired = self.clock.monotonic(), []
        if self.hard_deadlines:  # the parent ends the process if this does not stop the job
            with self.lock:
                for slot in self.slots:
                    if slot.job is not None and any(moment is not None and now >= moment
                                                    for moment in (slot.deadline, slot.cancel_deadline)):
                        slot.interrupt()
            return expired
        with self.lock:
            for index, slot in enumerate(self.slots):
                job = slot.job
                if job is None:
                    continue
                if slot.cancel_deadline is not None and now >= slot.cancel_deadline:
                    expired.append(cancelled(job, slot.attempt, worker_id=job.worker_id, duration=CANCEL_GRACE,
                                             how=f"was cancelled and had not returned {CANCEL_GRACE:g}s later: "
                                                 "interrupted"))
                elif slot.deadline is not None and now >= slot.deadline:
                    exc = JobTimeout(f"attempt {job.attempts} timed out after {slot.timeout:g}s; "
                                     "the worker stopped waiting for it")
                    expired.append(failure(job, exc, worker_id=job.worker_id, duration=slot.timeout,
                                           traceback=f"{exc}\n"))
                else:
                    continue
                expired[-1].still_running = slot.thread
                slot.abandon()
                self.slots[index] = fresh = Slot(self, slot.index)
                fresh.thread.start()
            if expired:
                self.lock.notify_all()
        return expired

    def cancel(self, job_id: int, asked_at=None) -> Outcome | None:
        """Stop a job this worker holds (from any thread): a running one is asked, and
        interrupted CANCEL_GRACE seconds later if it has not returned; one still waiting in
        the buffer is taken out, and its (cancelled) outcome is handed back."""
        with self.lock:
            for slot in self.slots:
                if slot.job is not None and slot.job.id == job_id and slot.attempt is not None:
                    if slot.cancel_deadline is None:
                        slot.cancel_deadline = self.clock.monotonic() + CANCEL_GRACE
                        slot.attempt.request_cancel(asked_at)
                        self.report("deadline", slot.job, slot.cancel_deadline, "cancel")
                    return None
            waiting = next((job for job in self.buffer if job.id == job_id), None)
            if waiting is None:
                return None
            self.buffer.remove(waiting)
        outcome = cancelled(waiting, None, worker_id=waiting.worker_id, how="was cancelled before it began")
        self.inbox.put(outcome)
        return outcome

    def wanted(self) -> int:
        """Jobs to claim now: one per free slot, plus prefetch, less those already waiting.

        Prefetch holds as many more as fit in PREFETCH_SECONDS of expected run time: fast
        jobs come many to a claim and many outcomes to a commit; slow jobs come one per
        free slot, so a worker never sits on work another worker could run.
        """
        with self.lock:
            if not self.taking:
                return 0
            free = sum(slot.job is None for slot in self.slots)
            if len(self.buffer) >= free:
                return 0  # enough in hand for every slot that frees up next
            prefetch = 0
            if self.avg_duration is not None:
                prefetch = min(MAX_PREFETCH, int(PREFETCH_SECONDS * len(self.slots) / max(self.avg_duration, 1e-5)))
            return free + prefetch - len(self.buffer)

    def waiting_since(self) -> float | None:
        """When the oldest job waiting in the buffer was claimed (monotonic), if any."""
        with self.lock:
            return self.buffer[0].claimed_at if self.buffer else None

    def take_waiting(self, claimed_before: float | None = None) -> list[ClaimedJob]:
        """Take jobs out of the buffer (those claimed before ``claimed_before``; None: all)."""
        taken = []
        with self.lock:
            while self.buffer and (claimed_before is None or self.buffer[0].claimed_at < claimed_before):
                taken.append(self.buffer.popleft())
        return taken

    def stop_taking(self) -> None:
        with self.lock:
            self.taking = False

    def done_with(self, jobs) -> None:
        """These jobs' outcomes are written (or they were handed back): no longer held."""
        with self.lock:
            for job in jobs:
                self.held.pop(job.id, None)

    def held_ids(self) -> list[int]:
        with self.lock:
            return list(self.held)

    def running(self) -> list[ClaimedJob]:
        with self.lock:
            return [slot.job for slot in self.slots if slot.job is not None]

    def has_free_slot(self) -> bool:
        with self.lock:
            return any(slot.job is None for slot in self.slots)

    def idle(self) -> bool:
        """Nothing running and nothing waiting to run."""
        with self.lock:
            return not self.buffer and all(slot.job is None for slot in self.slots)

    def next_deadline(self) -> float | None:
        """The next moment an attempt's timeout (or a cancel's grace) runs out, or a progress held
        back by its throttle is due to be written, if any."""
        with self.lock:
            attempts = [slot.attempt for slot in self.slots if slot.job is not None and slot.attempt is not None]
            deadlines = [moment for slot in self.slots if slot.job is not None and not slot.interrupted
                         for moment in (slot.deadline, slot.cancel_deadline) if moment is not None]
        deadlines += [moment for moment in (a.progress_due_at() for a in attempts) if moment is not None]
        return min(deadlines) if deadlines else None

    def due_progress(self) -> list:
        """(attempt, value) of each running attempt whose throttled progress may be written now."""
        with self.lock:
            attempts = [slot.attempt for slot in self.slots if slot.job is not None and slot.attempt is not None]
        return [(attempt, value) for attempt in attempts if (value := attempt.due_progress()) is not None]
