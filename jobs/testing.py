"""Testing a site's own tasks: run what they enqueued, and look at what is queued.

``drain()`` is a worker's turn in the calling thread: the worker's own claim and
batch (``WorkerStore.finish_and_claim``), its attempt (``execution.run_claimed``: the
row checks, the task's import rules, ``task_started``/``task_finished``, the retry
decision, the task's ``backoff``), its failure transition and its log lines and
``job_failed``. What differs is only what a single thread on the test's own
connection must do differently:

- one job per claim, and no heartbeat, wake-up or worker row;
- the connections are left as the test has them (the worker closes a connection a
  task left inside a transaction; here the test's own transaction is the baseline,
  and only what the task opened beyond it is rolled back);
- a task that fails with a database error inside the test's transaction has its
  writes of that attempt rolled back to a savepoint, so that the outcome can still be
  recorded (on PostgreSQL the transaction is unusable otherwise);
- a sync task's ``timeout`` is enforced by SIGALRM in the main thread (the worker
  abandons the task's thread instead), and in any thread by failing an attempt that
  returned late;
- every log line is at DEBUG, without tracebacks: a test that makes a task fail on
  purpose prints nothing (``raise_errors=True`` re-raises instead).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import DatabaseError, connections, router
from django.utils import timezone

from . import control
from .backends import database_backend
from .exceptions import JobTimeout
from .execution import attempt_limit, decide_retry, discard_connection, failure, run_claimed, transaction_open
from .framework import FRAMEWORK
from .models import NOT_STARTED, Job, JobStatus
from .store import WorkerStore
from .worker.failures import report_written

__all__ = ["Drained", "assert_enqueued", "assert_not_enqueued", "drain", "enqueued"]

logger = logging.getLogger(__name__)

# drain() gives up after this many attempts: a task that enqueues itself for ever would never end.
MAX_RUNS = 10_000


@dataclass
class Drained:
    """What ``drain()`` did: attempts run, and how they ended."""

    ran: int = 0
    successful: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    results: list = field(default_factory=list, repr=False)  # (job id, status written), in order

    def __str__(self) -> str:
        return (f"ran={self.ran} successful={self.successful} failed={self.failed} retried={self.retried} "
                f"cancelled={self.cancelled}")


class _Slot:
    """What ``run_claimed`` needs of a worker's slot: the attempt, and where the timeout goes."""

    def __init__(self, job):
        # The attempt as the task sees it: progress is written (fenced, like a worker's), and no
        # one can ask it to stop, so cancel_requested() stays False.
        self.attempt = control.Attempt(job_id=job.id, attempts=job.attempts, worker_id=job.worker_id)
        self.timeout: float | None = None
        self.alarm = None

    def arm(self, task) -> None:
        timeout = getattr(task, "timeout", None)
        if timeout:
            self.timeout = float(timeout)
            # An async task times itself out (execution._call); the alarm is the backstop, as in a worker.
            backstop = 1.0 if asyncio.iscoroutinefunction(task.func) else 0.0
            self.alarm = _Alarm(self.timeout + backstop, self.attempt)
            self.alarm.start()


class _Alarm:
    """SIGALRM interrupts a sync task that overruns its timeout, in the main thread only; an
    alarm already set (pytest-timeout's) is put back afterwards, less the time spent."""

    def __init__(self, timeout: float, attempt: control.Attempt):
        self.timeout, self.attempt = timeout, attempt
        self.usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        self.previous = None
        self.started = 0.0

    def _fire(self, signum, frame):
        if control.current() is self.attempt:  # only inside the attempt, never in the code around it
            raise JobTimeout(f"attempt {self.attempt.attempts} timed out after {self.timeout:g}s; "
                             "drain() interrupted it")

    def start(self) -> None:
        if not self.usable:
            return
        self.started = time.monotonic()
        self.previous = (signal.signal(signal.SIGALRM, self._fire), signal.getitimer(signal.ITIMER_REAL))
        outer = self.previous[1][0]
        signal.setitimer(signal.ITIMER_REAL, min(self.timeout, outer) if outer else self.timeout)

    def stop(self) -> None:
        if self.previous is None:
            return
        handler, (outer, interval) = self.previous
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, handler)
        if outer:  # the outer alarm goes on; one already due fires at once
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - self.started), 1e-6), interval)
        self.previous = None


class _Connections:
    """The connections as the test has them, and the task's attempt measured against them."""

    def __init__(self):
        self.baseline = {conn.alias: len(conn.atomic_blocks) for conn in connections.all(initialized_only=True)
                         if conn.connection is not None and conn.in_atomic_block}

    def reset(self, *, interrupted: bool = False) -> list[str]:
        """``execution.reset_connections`` for a test: what a task left open beyond the test's own
        transaction is rolled back; a connection outside any test transaction is treated as the
        worker treats it. An interrupted attempt (drain's SIGALRM) keeps the test's connection:
        closing it would end the test's transaction."""
        left_open = []
        for conn in connections.all(initialized_only=True):
            if conn.connection is None:
                continue
            depth = self.baseline.get(conn.alias)
            if depth is None:
                if transaction_open(conn):
                    left_open.append(conn.alias)
                    discard_connection(conn)
                continue
            if len(conn.atomic_blocks) > depth:
                left_open.append(conn.alias)
                while len(conn.atomic_blocks) > depth:  # leave them as an exception would
                    conn.atomic_blocks[-1].__exit__(RuntimeError, RuntimeError("left open"), None)
        return left_open


@contextmanager
def _framework_log_quiet():
    """The tasks framework's own "Task ... state=FAILED" line, with its traceback, off while a drained
    task runs: drain says nothing of a failure a test causes on purpose (the django-tasks backport's
    logger is not under "django", so Python's last-resort handler printed it on Django 5.2)."""
    framework_logger = logging.getLogger(FRAMEWORK)
    was = framework_logger.disabled
    framework_logger.disabled = True
    try:
        yield
    finally:
        framework_logger.disabled = was


def drain(queue_name: str | None = None, *, backend: str = "default", with_scheduled: bool = False,
          raise_errors: bool = False) -> Drained:
    """Run every due READY job of ``backend`` (and ``queue_name``, when given), then the jobs
    they enqueued, until none is due, in this thread and on this connection; see the module.

    ``with_scheduled``: jobs due later (a ``run_after``, a retry's wait) run too, in the
    order they would come due. ``raise_errors``: re-raise the first exception a task
    raised, once its outcome is recorded.
    """
    try:
        jobs_backend = database_backend(backend)
    except ValueError as exc:
        raise ValueError(f"drain(): {exc}") from None
    if queue_name is not None and not isinstance(queue_name, str):
        raise TypeError(f"drain(): queue_name must be a str or None, got {queue_name!r}")
    queues = [queue_name] if queue_name is not None else None
    store = WorkerStore(worker_id=f"drain:{uuid.uuid4().hex[:8]}", backend=jobs_backend.alias)
    drained = Drained()
    while True:
        claimed = store.finish_and_claim([], limit=1, queues=queues, now=timezone.now()).claimed
        if not claimed:
            if with_scheduled and _bring_forward(jobs_backend.alias, queues):
                continue
            return drained
        if drained.ran >= MAX_RUNS:
            store.hand_back(claimed)
            raise RuntimeError(f"drain() ran {MAX_RUNS} attempts and jobs are still due: does a task enqueue "
                               f"itself for ever? {drained}")
        with _framework_log_quiet():
            outcome = _run(claimed[0], jobs_backend, store.alias)
        if not outcome.succeeded and outcome.decision is None:  # decided by the pool in a worker
            outcome.decision = decide_retry(outcome.job, outcome, limit=attempt_limit(outcome.job, jobs_backend),
                                            base=jobs_backend.jobs_options.retry_backoff)
        written = store.finish_and_claim([outcome], limit=0, queues=queues, now=timezone.now())
        _count(drained, written.outcomes)
        report_written(jobs_backend, written.outcomes, log=logger, quiet=True)
        if raise_errors and outcome.exc is not None and not outcome.succeeded:
            raise outcome.exc


def _run(job, backend, alias: str):
    """One claimed attempt through the worker's ``run_claimed``, in this thread."""
    conns = _Connections()
    conn = connections[alias]
    savepoint = conn.savepoint() if conn.in_atomic_block else None
    slot = _Slot(job)
    started = time.monotonic()
    try:
        outcome = run_claimed(job, slot, backend=backend, worker_id=job.worker_id, reset=conns.reset)
    except JobTimeout as exc:  # the alarm went off just as the attempt ended
        outcome = failure(job, exc, worker_id=job.worker_id, duration=time.monotonic() - started)
    finally:
        if slot.alarm is not None:
            slot.alarm.stop()
    if savepoint is not None:
        if conn.needs_rollback or (not outcome.succeeded and isinstance(outcome.exc, DatabaseError)):
            conn.needs_rollback = False  # as atomic() does when it rolls back to its savepoint
            conn.savepoint_rollback(savepoint)
        else:
            conn.savepoint_commit(savepoint)
    if slot.timeout is not None and outcome.succeeded and outcome.duration > slot.timeout:
        # Not interrupted (not the main thread): a worker would have stopped waiting for it.
        exc = JobTimeout(f"attempt {job.attempts} timed out after {slot.timeout:g}s; the worker stopped waiting "
                         "for it")
        outcome = failure(job, exc, worker_id=job.worker_id, duration=outcome.duration, traceback=f"{exc}\n")
    return outcome


def _count(drained: Drained, written) -> None:
    for outcome, status in written:
        drained.ran += 1
        drained.results.append((outcome.job.id, status))
        if status == JobStatus.SUCCESSFUL:
            drained.successful += 1
        elif status == JobStatus.READY:
            drained.retried += 1
        elif status == JobStatus.CANCELLED:
            drained.cancelled += 1
        elif status == JobStatus.FAILED:
            drained.failed += 1


def _bring_forward(backend: str, queues) -> bool:
    """The next job due later comes due now (``with_scheduled``); False when there is none."""
    now = timezone.now()
    later = Job.objects.using(router.db_for_write(Job)).filter(backend=backend, status=JobStatus.READY,
                                                               run_after__gt=now)
    if queues:
        later = later.filter(queue_name__in=queues)
    first = later.order_by("run_after", "-priority", "pk").values_list("pk", flat=True).first()
    if first is None:
        return False
    return bool(later.filter(pk=first).update(run_after=now))


# -- what is queued ---------------------------------------------------------------------------------

def _task_path(task) -> str | None:
    if task is None:
        return None
    if isinstance(task, str):
        return task
    path = getattr(task, "module_path", None)
    if not isinstance(path, str):
        raise TypeError(f"task must be a task, its dotted path or None, got {task!r}")
    return path


def _ready(task=None, *, args=None, kwargs=None, queue_name=None, backend: str = "default"):
    # A child waiting for its parents is READY to Django's API: enqueued, as far as a test can tell.
    jobs = Job.objects.filter(backend=backend, status__in=NOT_STARTED)
    path = _task_path(task)
    if path is not None:
        jobs = jobs.filter(task_path=path)
    if queue_name is not None:
        jobs = jobs.filter(queue_name=queue_name)
    rows = list(jobs.order_by("enqueued_at", "pk"))
    if args is not None or kwargs is not None:
        want_args, want_kwargs = _as_stored(args, kwargs)
        rows = [row for row in rows if (args is None or row.args == want_args)
                and (kwargs is None or row.kwargs == want_kwargs)]
    return rows


def _as_stored(args, kwargs):
    """Arguments as a row stores them (after JSON: tuples are lists)."""
    return (None if args is None else json.loads(json.dumps(list(args))),
            None if kwargs is None else json.loads(json.dumps(dict(kwargs))))


def enqueued(task=None, *, args=None, kwargs=None, queue_name: str | None = None, backend: str = "default") -> list:
    """The READY jobs matching what is given, oldest first, as TaskResults."""
    jobs_backend = database_backend(backend)
    return [jobs_backend.get_result(row.pk) for row in _ready(task, args=args, kwargs=kwargs, queue_name=queue_name,
                                                              backend=jobs_backend.alias)]


def _describe(rows) -> str:
    if not rows:
        return "nothing is enqueued"
    shown = [f"  {row.task_path}(args={row.args!r}, kwargs={row.kwargs!r}) queue={row.queue_name!r} id={row.pk}"
             + (" (waiting for its parents)" if row.status == JobStatus.WAITING else "") for row in rows[:20]]
    more = [f"  ... and {len(rows) - 20} more"] if len(rows) > 20 else []
    return "enqueued (READY):\n" + "\n".join(shown + more)


def _wanted(task, args, kwargs, queue_name, count) -> str:
    parts = [_task_path(task) or "any task"]
    if args is not None:
        parts.append(f"args={_as_stored(args, None)[0]!r}")
    if kwargs is not None:
        parts.append(f"kwargs={_as_stored(None, kwargs)[1]!r}")
    if queue_name is not None:
        parts.append(f"queue={queue_name!r}")
    return " ".join(parts) + ("" if count is None else f" (count={count})")


def assert_enqueued(task=None, *, args=None, kwargs=None, queue_name: str | None = None, count: int | None = None,
                    backend: str = "default") -> list:
    """AssertionError unless READY jobs match (``count`` of them, when given); returns them as TaskResults."""
    jobs_backend = database_backend(backend)
    found = _ready(task, args=args, kwargs=kwargs, queue_name=queue_name, backend=jobs_backend.alias)
    if (count is None and not found) or (count is not None and len(found) != count):
        every = _ready(backend=jobs_backend.alias)
        raise AssertionError(f"expected {_wanted(task, args, kwargs, queue_name, count)} to be enqueued, found "
                             f"{len(found)}; {_describe(every)}")
    return [jobs_backend.get_result(row.pk) for row in found]


def assert_not_enqueued(task=None, *, args=None, kwargs=None, queue_name: str | None = None,
                        backend: str = "default") -> None:
    """AssertionError if any READY job matches."""
    jobs_backend = database_backend(backend)
    found = _ready(task, args=args, kwargs=kwargs, queue_name=queue_name, backend=jobs_backend.alias)
    if found:
        raise AssertionError(f"expected no {_wanted(task, args, kwargs, queue_name, None)} to be enqueued, found "
                             f"{len(found)}; {_describe(found)}")
