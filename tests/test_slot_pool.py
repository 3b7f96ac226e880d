"""The slot pool (jobs/worker/pool.py) through its public methods, with real threads.

A slot abandoned for overrunning its timeout is interrupted by an exception raised in
its thread. ``make chaos`` found that exception landing inside the pool's own lock
(a slot handing in its outcome just as the main loop expired it, which a SIGSTOP
makes likely: every deadline passes at once): the lock stayed held by a thread that
had ended, and the whole worker hung. The interrupt may only land inside the job.
"""

import sys
import threading
import time
from contextlib import contextmanager
from queue import Empty, SimpleQueue
from types import SimpleNamespace

from jobs.clock import Clock
from jobs.execution import Outcome
from jobs.rows import ClaimedJob
from jobs.worker.pool import SlotPool

WAIT = 10.0  # seconds before a condition waited on counts as never met


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def _in_pool_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` is waiting for the pool's lock in ``SlotPool.finished``."""
    frame = sys._current_frames().get(thread.ident)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return "finished" in names and "__enter__" in names


@contextmanager
def _pool(**kwargs):
    """A started pool, closed at the end unless its lock was left held (then closing would hang)."""
    pool = SlotPool(**kwargs).__enter__()
    try:
        yield pool
    finally:
        _answers(lambda: pool.__exit__(None, None, None))


def _answers(fn) -> bool:
    """Whether ``fn`` returns within WAIT seconds, called from a thread of its own (a lock left held by a
    thread that ended may pass for held by a new one that got its id, so nothing is asked of this one)."""
    done = threading.Event()
    threading.Thread(target=lambda: (fn(), done.set()), daemon=True).start()
    return done.wait(WAIT)


def test_a_slot_expired_while_handing_in_its_outcome_leaves_the_pool_usable():
    now = [0.0]
    returning, proceed, jobs_run = threading.Event(), threading.Event(), []

    def execute(job, slot):
        jobs_run.append(job.id)
        if job.id == 1:
            slot.arm(SimpleNamespace(timeout=1.0, func=lambda: None))  # due to expire at 1.0
            returning.set()
            proceed.wait(WAIT)
        return Outcome(job=job, succeeded=True, duration=0.0)

    inbox = SimpleQueue()
    with _pool(size=1, execute=execute, inbox=inbox, clock=Clock(monotonic=lambda: now[0])) as pool:
        pool.give([ClaimedJob(id=1, worker_id="w")])
        slot_thread = pool.slots[0].thread
        assert returning.wait(WAIT)
        with pool.lock:  # the main loop inside expire(), as the slot's thread comes to hand in
            proceed.set()
            _until(lambda: _in_pool_lock(slot_thread), "the slot to wait for the pool's lock")
            now[0] = 5.0
            expired = pool.expire()
        assert [outcome.job.id for outcome in expired] == [1]
        slot_thread.join(WAIT)
        assert not slot_thread.is_alive(), "the abandoned thread ends"
        # The fresh slot runs the next job (given from another thread: a lock left held would block it).
        assert _answers(lambda: pool.give([ClaimedJob(id=2, worker_id="w")])), "the pool's lock was left held"
        try:
            handed_in = inbox.get(timeout=WAIT)
        except Empty:
            raise AssertionError("the fresh slot never ran the next job: the pool's lock was left held") from None
        assert handed_in.job.id == 2 and jobs_run == [1, 2]


def test_an_overrunning_job_is_interrupted_inside_the_job():
    now, started = [0.0], threading.Event()
    interrupted = []

    def execute(job, slot):
        slot.arm(SimpleNamespace(timeout=1.0, func=lambda: None))
        started.set()
        try:
            while True:  # a task that never returns by itself
                time.sleep(0.001)
        except BaseException as exc:
            interrupted.append(type(exc).__name__)
            raise

    with _pool(size=1, execute=execute, inbox=SimpleQueue(), clock=Clock(monotonic=lambda: now[0])) as pool:
        pool.give([ClaimedJob(id=1, worker_id="w")])
        assert started.wait(WAIT)
        thread = pool.slots[0].thread
        now[0] = 5.0
        assert [o.job.id for o in pool.expire()] == [1]
        thread.join(WAIT)
        assert not thread.is_alive() and interrupted == ["JobTimeout"]
        assert _answers(pool.held_ids)
