"""The worker: claim due jobs into free slots, run them, record what happened.

The main thread only sequences. One turn of its loop (``step``), top to bottom:

1. take in the outcomes the slots handed back, and fail attempts past their timeout;
2. hand back prefetched jobs that waited too long behind a slower one;
3. write the outcomes and claim as many due jobs as there are free slots (plus a
   prefetch for fast jobs), in one transaction (``WorkerStore.finish_and_claim``);
4. give the claimed jobs to the slots, then wait for an outcome, a wake-up or the poll.

Everything else has its own owner: ``SlotPool`` the job threads, their deadlines and
the jobs held; ``WorkerStore`` every database verb; ``Liveness`` (its own thread) the
heartbeat and the take-back of other workers' lost jobs; ``jobs.wakeup`` the wake-up
on enqueue.

Threads, not processes, run the jobs: most jobs of a web site wait on I/O (mail,
HTTP, the database), a thread costs nothing to hand a job to and shares the
process's warm imports, and one process keeps memory low on a small server.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from queue import SimpleQueue

from django.db import DatabaseError, connections

from ..backoff import Backoff, first_line
from ..clock import REAL, Clock
from ..control import write_progress
from ..execution import Outcome, attempt_limit, decide_retry, run_claimed
from ..framework import task_backends
from ..limits import counts_on_key
from ..loops import worker_loops
from ..sessions import guarded_sessions, hold_limit
from ..store import WorkerStore, Written
from ..wakeup import start_waker
from .failures import report_written
from .limits import Limits
from .liveness import Liveness
from .pool import WAKE, SlotPool
from .systemd import Notifier

logger = logging.getLogger("jobs.worker")

# Prefetched jobs still waiting after this long (a job ran slower than expected) are
# handed back for other workers.
BUFFER_MAX_WAIT = 1.0
# An outcome is written together with others, but waits at most this long (seconds).
FLUSH_AFTER = 0.005
# How often the loop looks whether an abandoned thread whose outcome waits has ended.
LINGER_POLL = 0.05


def make_worker_id() -> str:
    """Host, PID for people to read, and a random part that makes it unique."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(self, *, backend_alias: str = "default", queues: list[str] | None = None, concurrency: int = 1,
                 burst: bool = False, duration: float = 0, poll_interval: float | None = None,
                 run_loops: bool = True, max_jobs: int = 0, max_memory: int = 0, notifier: Notifier | None = None,
                 clock: Clock = REAL, worker_id: str | None = None, report=None, parent: str = ""):
        self.backend = task_backends[backend_alias]
        self.options = self.backend.jobs_options
        self.queues = sorted(set(queues)) if queues else None
        self.concurrency = max(1, int(concurrency))
        self.burst = burst
        self.duration = duration
        self.poll_interval = poll_interval if poll_interval is not None else self.options.poll_interval
        self.run_loops = run_loops and not burst
        self.clock = clock
        self.limits = Limits(max_jobs=max_jobs, max_memory=max_memory)  # ends it for a fresh one
        self.notifier = notifier or Notifier()  # systemd's: nothing without NOTIFY_SOCKET
        self.id = worker_id or make_worker_id()  # a supervisor's child gets the id its parent knows
        self.parent = parent  # a --processes parent's id, shown beside this worker
        self.inbox: SimpleQueue = SimpleQueue()
        self.store = WorkerStore(worker_id=self.id, backend=self.backend.alias)
        self.pool = SlotPool(size=self.concurrency, execute=self._execute, inbox=self.inbox, clock=clock,
                             report=report)  # report: a --processes parent's, which enforces deadlines
        self.liveness = Liveness(worker_id=self.id, backend=self.backend, held=self.pool.held_ids,
                                 register=self._register_again, clock=clock, cancel=self.pool.cancel)
        self.stopping = threading.Event()  # stop claiming; let running jobs finish
        self.stop_deadline: float | None = None  # when unfinished jobs are handed back
        self.unwritten: list[Outcome] = []  # outcomes not yet in the database
        # Attempts given up on whose code still runs in an abandoned thread (a C call past its
        # timeout): written once that thread ends, so that their key keeps counting them and their
        # retry cannot start beside them. The job stays RUNNING, heartbeaten, meanwhile.
        self.lingering: list[Outcome] = []
        self.unwritten_since = 0.0
        self.processed = 0
        self._backoff = Backoff()
        self._started = 0.0
        self._registered = False  # its WorkerProcess row written (a worker stopped before then leaves nothing)

    # -- lifecycle ------------------------------------------------------------------------

    def request_stop(self, *, grace: float | None = None, reason: str = "") -> None:
        """Stop claiming; running jobs get ``grace`` seconds (None: as long as they need).

        Safe from a signal handler: it only sets flags and puts into a SimpleQueue.
        """
        if not self.stopping.is_set():
            logger.info("worker stopping worker=%s reason=%s", self.id, reason or "requested")
        deadline = self.clock.monotonic() + grace if grace is not None else None
        if deadline is not None and (self.stop_deadline is None or deadline < self.stop_deadline):
            self.stop_deadline = deadline
        self.stopping.set()
        self.inbox.put(WAKE)

    def wake(self) -> None:
        """New work may be due: end the idle wait now (called from the waker thread)."""
        if self.pool.has_free_slot():
            self.inbox.put(WAKE)

    def run(self) -> int:
        if connections[self.store.alias].in_atomic_block:
            # A TestCase: the worker's threads (the jobs, the heartbeat) have connections of their own,
            # which cannot see the test's uncommitted rows and, on SQLite, find its tables locked.
            raise RuntimeError(f"a worker cannot run inside a transaction on database {self.store.alias!r} (a "
                               "TestCase?): its threads use connections of their own. In a test, run the jobs "
                               "with jobs.testing.drain(), or use a TransactionTestCase")
        with guarded_sessions(hold_limit(self.options.stale_after)):  # a frozen peer cannot stall this loop
            return self._run()

    def _run(self) -> int:
        self._started = self.clock.monotonic()
        while not self._registered and not self.stopping.is_set():
            self._registered = self._db(self._register) is not None
        with self.pool, self.liveness:
            start_waker(connections[self.store.alias], wake=self.wake, stop=self.stopping, queues=self.queues,
                        on_cancel=self.liveness.hint)
            loops = self._start_loops()
            logger.info("worker started worker=%s queues=%s concurrency=%d burst=%s", self.id,
                        ",".join(self.queues or ["*"]), self.concurrency, self.burst)
            self.notifier.ready(f"worker {self.id}: queues {','.join(self.queues or ['*'])}, "
                                f"concurrency {self.concurrency}")
            try:
                while not self._finished():
                    self.step()
            finally:
                self._shutdown(loops)
        return 0

    def _finished(self) -> bool:
        if not self.stopping.is_set():
            return False
        if self.pool.idle() and not self.unwritten and not self.lingering:
            return True
        return self.stop_deadline is not None and self.clock.monotonic() >= self.stop_deadline

    # -- one turn ---------------------------------------------------------------------------

    def step(self) -> None:
        self.notifier.ping(self.clock.monotonic())  # from this loop only: a hung loop is restarted
        self._take(self.pool.collect() + self.pool.expire() + self._ended())
        if self.duration and not self.stopping.is_set() and self.clock.monotonic() - self._started >= self.duration:
            self.request_stop(reason=f"duration {self.duration:g}s reached")
        if not self.stopping.is_set():  # --max-jobs counts the outcomes in hand, so none claims past it
            limit = self.limits.reached(jobs_done=self.processed + len(self.unwritten), now=self.clock.monotonic())
            if limit:
                self.request_stop(reason=limit)
        self._hand_back_waiting()
        progress = self.pool.due_progress()  # a task busy elsewhere: its last progress, written for it
        if progress:
            self._db(lambda: write_progress(progress))
        want = 0 if self.stopping.is_set() else self.pool.wanted()
        if want or self._flush_due():
            written = self._db(lambda: self.store.finish_and_claim(self.unwritten, limit=want, queues=self.queues,
                                                                     now=self.clock.now()))
            if written is None:
                return  # database trouble: _db backed off already
            self._written(written)
            if self.burst and want and not written.claimed and self.pool.idle():
                late = self.pool.collect()
                if late:  # an outcome that came in meanwhile may release work (a child, a callback)
                    self._take(late)
                    return
                self.request_stop(reason="burst: no due jobs left")
                return
            if want and len(written.claimed) == want:
                return  # a full batch: more may be due, go round at once
        self._take(self.pool.collect(timeout=self._wait_time()))

    def _take(self, outcomes: list[Outcome]) -> None:
        """Outcomes in hand: decide each failure's fate now if the slot did not. An attempt given
        up on while its code still runs waits in ``lingering`` if writing it would free its key's
        place or let its retry start; any other is written at once."""
        ready = []
        for outcome in outcomes:
            if not outcome.succeeded and outcome.decision is None:
                outcome.decision = decide_retry(outcome.job, outcome, limit=attempt_limit(outcome.job, self.backend),
                                                base=self.options.retry_backoff)
            thread = outcome.still_running
            if thread is not None and thread.is_alive() and (outcome.decision.retry or counts_on_key(outcome.job)):
                logger.warning("job given up on but still running id=%s task=%s attempt=%s: its outcome is written, "
                               "and its key freed, once its code returns", outcome.job.id, outcome.job.task_path,
                               outcome.job.attempts)
                self.lingering.append(outcome)
            else:
                ready.append(outcome)
        if ready and not self.unwritten:
            self.unwritten_since = self.clock.monotonic()
        self.unwritten.extend(ready)

    def _ended(self) -> list[Outcome]:
        """The lingering attempts whose thread has ended: theirs to write now."""
        ended = [outcome for outcome in self.lingering if not outcome.still_running.is_alive()]
        if ended:
            self.lingering = [outcome for outcome in self.lingering if outcome not in ended]
            for outcome in ended:
                outcome.still_running = None
        return ended

    def _written(self, written: Written) -> None:
        self.pool.done_with([outcome.job for outcome, _status in written.outcomes])
        self.processed += len(written.outcomes)
        self.unwritten = []
        self.pool.give(written.claimed)
        report_written(self.backend, written.outcomes)

    def _flush_due(self) -> bool:
        """Outcomes are written together, but none waits more than FLUSH_AFTER seconds."""
        if not self.unwritten:
            return False
        return (self.stopping.is_set() or self.pool.waiting_since() is None
                or self.clock.monotonic() - self.unwritten_since >= FLUSH_AFTER)

    def _hand_back_waiting(self) -> None:
        """Give back prefetched jobs that waited too long behind a job slower than expected (all
        of them once stopping), so that an idle worker elsewhere can run them now."""
        since = self.pool.waiting_since()
        if since is None:
            return
        if self.stopping.is_set():
            jobs = self.pool.take_waiting()
        elif self.clock.monotonic() - since > BUFFER_MAX_WAIT:
            jobs = self.pool.take_waiting(claimed_before=self.clock.monotonic() - BUFFER_MAX_WAIT)
        else:
            return
        if not jobs:  # a slot took them meanwhile
            return
        if self._db(lambda: self.store.hand_back(jobs)) is None:
            self.pool.give(jobs)  # still ours: try again next turn
            return
        self.pool.done_with(jobs)
        logger.info("jobs claimed ahead handed back for other workers (a running job took longer than expected) "
                    "worker=%s count=%d", self.id, len(jobs))

    def _wait_time(self) -> float:
        if self.stopping.is_set() and self.pool.idle() and not self.unwritten and not self.lingering:
            return 0.0  # nothing left to wait for: go and exit
        now = self.clock.monotonic()
        waits = [self.poll_interval if self.pool.has_free_slot() and not self.stopping.is_set() else 1.0]
        if self.lingering:  # whether their threads have ended: looked at every LINGER_POLL
            waits.append(LINGER_POLL)
        for moment in (self.pool.next_deadline(), self.stop_deadline, self.notifier.next_ping(),
                       self.unwritten_since + FLUSH_AFTER if self.unwritten else None,
                       self._started + self.duration if self.duration and not self.stopping.is_set() else None):
            if moment is not None:
                waits.append(max(moment - now, 0.0))
        return min(waits)

    # -- in a slot's thread ---------------------------------------------------------------------

    def _execute(self, job, slot) -> Outcome:
        return run_claimed(job, slot, backend=self.backend, worker_id=self.id)

    # -- the database, and what goes wrong with it ---------------------------------------------

    def _db(self, fn):
        """Run ``fn``; on any error log it, back off (interruptibly: outcomes still come in)
        and return None. A dropped connection or a restarted PostgreSQL costs a few retries,
        not the worker: the connection is closed and the next call reconnects."""
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - the worker outlives whatever went wrong
            wait = self._backoff.failed()
            if isinstance(exc, DatabaseError):
                logger.warning("database error worker=%s retry_in=%.1fs error=%s: %s", self.id, wait,
                               type(exc).__name__, first_line(exc))
            else:  # a bug: say where, loudly, and keep going
                logger.exception("worker step failed worker=%s retry_in=%.1fs", self.id, wait)
            self.store.close()
            next_ping = self.notifier.next_ping()
            if next_ping is not None:  # the watchdog's ping must not wait for the backoff
                wait = min(wait, max(next_ping - self.clock.monotonic(), 0.0))
            self._take(self.pool.collect(timeout=wait))
            return None
        self._backoff.succeeded()
        return value if value is not None else True

    def _register(self) -> None:
        self.store.register(queues=self.queues, concurrency=self.concurrency, now=self.clock.now(),
                            parent=self.parent)

    def _register_again(self) -> None:
        """Liveness found the process row gone (cleaned away during a long outage): write it anew,
        unless the worker is stopping, when it is gone because the worker unregistered (a beat
        between that and the end of the liveness thread left the row of a worker that had left)."""
        if not self.stopping.is_set():
            self._register()

    # -- extra loops and shutdown -----------------------------------------------------------------

    def _start_loops(self) -> list[threading.Thread]:
        threads = []
        if self.run_loops:
            for name, loop in worker_loops().items():
                thread = threading.Thread(target=self._run_loop, args=(name, loop), name=f"jobs-loop-{name}",
                                          daemon=True)
                thread.start()
                threads.append(thread)
        return threads

    def _run_loop(self, name: str, loop) -> None:
        try:
            loop(self.stopping)
        except Exception:
            logger.exception("worker loop %s crashed worker=%s", name, self.id)
        finally:
            connections.close_all()

    def _shutdown(self, loops: list[threading.Thread]) -> None:
        """Write what finished, hand back what did not, and leave no trace of this process."""
        self.notifier.stopping(f"worker {self.id}: stopping")
        self.stopping.set()
        self.pool.stop_taking()
        self._take(self.pool.collect())
        for _ in range(5):
            if not self.unwritten:
                break
            written = self._db(lambda: self.store.finish_and_claim(self.unwritten, limit=0, queues=self.queues,
                                                                     now=self.clock.now()))
            if written is not None:
                self._written(written)
        self._take(self._ended())
        if self.unwritten:
            written = self._db(lambda: self.store.finish_and_claim(self.unwritten, limit=0, queues=self.queues,
                                                                     now=self.clock.now()))
            if written is not None:
                self._written(written)
        for outcome in self.lingering:  # its code runs until this process ends: the stale sweep takes it back
            logger.warning("job left RUNNING id=%s task=%s attempt=%s: given up on, its code had not returned "
                           "when the worker stopped", outcome.job.id, outcome.job.task_path, outcome.job.attempts)
        unfinished = self.pool.running() + self.pool.take_waiting()

        def hand_back_and_leave():
            with_transaction = self.store.hand_back(unfinished)
            self.store.unregister()
            return with_transaction

        if unfinished or self._registered:
            for _ in range(5):
                if self._db(hand_back_and_leave) is not None:
                    for job in unfinished:
                        logger.warning("job handed back id=%s task=%s attempt=%s (shutdown before it finished)",
                                       job.id, job.task_path, job.attempts)
                    break
        else:  # stopped before its row was known written (the server down): one try, no back-off
            try:
                self.store.unregister()
            except Exception:  # noqa: BLE001 - a row left behind is shown as a lost worker, then forgotten
                self.store.close()
        for thread in loops:
            thread.join(timeout=5)
        logger.info("worker stopped worker=%s processed=%d handed_back=%d", self.id, self.processed,
                    len(unfinished))
        self.notifier.close()
