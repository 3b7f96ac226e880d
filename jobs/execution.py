"""Run one claimed attempt: resolve the task, call it, describe the outcome.

Runs in a worker's job thread. It records nothing itself: the outcome goes back to
the worker's main thread, which applies the retry policy and writes it (batched
with other outcomes and the next claim, in one transaction).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.utils import timezone

from . import control, retry
from .backends import to_json
from .errors import error_entry
from .exceptions import (
    PERMANENT,
    DamagedJob,
    DoNotRetry,
    JobCancelled,
    JobTimeout,
    ResultNotSerialisable,
    TransactionLeftOpen,
)
from .framework import Task, TaskContext, TaskError, TaskResultStatus, task_finished, task_started
from .models import Job
from .resolve import resolve_task

logger = logging.getLogger(__name__)

@dataclass
class Outcome:
    """What one attempt came to; the worker decides retry and writes it."""

    job: Job
    succeeded: bool
    duration: float
    return_value: Any = None
    error: dict | None = None
    permanent: bool = False  # a failure no retry can mend
    custom_delay: float | None = None  # what the task's backoff callable returned
    custom_given: bool = False  # whether it had one that answered
    decision: retry.RetryDecision | None = None  # for a failure: decided where it happened, when known
    final: str = "FAILED"  # the status a failure ends in when not retried (CANCELLED for a cancel)
    exc: BaseException | None = None  # a failure's exception, for the log record (exc_info)
    # An attempt given up on (timeout, cancel): the slot's thread, which may still run its code.
    still_running: Any = None


def attempt_limit(job: Job, backend) -> int:
    """The attempt limit in force for ``job`` now (see ``DatabaseBackend.attempt_limit``).

    Only a row without a limit of its own needs its task, found in the worker's cache
    of resolved tasks; a path that does not resolve gets the backend's default.
    """
    if job.max_attempts is not None:
        return job.max_attempts
    try:
        task = resolve_task(job.task_path)
    except Exception:  # TaskNotFound, NotATask: the job fails for good anyway
        task = None
    return backend.attempt_limit(task)


def not_retried(task: Task | None, exc: BaseException | None) -> str:
    """Why the task's ``discard_on``/``retry_on`` say not to retry ``exc`` ("" when they do not)."""
    if task is None or exc is None:
        return ""
    name = type(exc).__qualname__
    if isinstance(exc, getattr(task, "discard_on", ()) or ()):
        return f"not retried: {name} is in the task's discard_on"
    retry_on = getattr(task, "retry_on", None)
    if retry_on is not None and not isinstance(exc, retry_on):
        return f"not retried: {name} is not in the task's retry_on"
    return ""


def decide_retry(job: Job, outcome: Outcome, *, limit: int, base: float, task: Task | None = None
                 ) -> retry.RetryDecision:
    """The retry policy for a failed attempt, under the attempt limit in force now (and the task's
    ``retry_on``/``discard_on``; ``task`` is found by its path when not given)."""
    if outcome.permanent:
        cls = (outcome.error or {}).get("exception_class_path", "the error")
        return retry.RetryDecision(False, reason=f"not retried: {cls} is final")
    if task is None and outcome.exc is not None:
        try:
            task = resolve_task(job.task_path)
        except Exception:  # noqa: BLE001 - no task, no task options
            task = None
    reason = not_retried(task, outcome.exc)
    if reason:
        return retry.RetryDecision(False, reason=reason)
    return retry.decide(attempt=job.attempts, max_attempts=limit, base=base, custom_delay=outcome.custom_delay,
                        custom_given=outcome.custom_given)


def send_finished(backend, result, *, status: TaskResultStatus, error: dict | None = None,
                  return_value: Any = None) -> None:
    """``task_finished`` for a job that has finished: SUCCESSFUL, or FAILED for good.

    Django sends it for a finished result only. An attempt that failed and will be
    retried is not finished (its job is READY again), so it sends nothing; the
    retry is logged at WARNING instead. The result is what ``get_result`` will say
    once the outcome is written: its status, ``finished_at``, every error, the
    return value.
    """
    attempt = control.current()
    if attempt is not None and attempt.abandoned:
        # The worker gave up on this attempt (its timeout) and recorded that outcome, and sent its
        # signal; the code returning (or failing) later changes nothing, so says nothing.
        logger.info("abandoned attempt returned id=%s task=%s: no task_finished for it", result.id,
                    result.task.module_path)
        return
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", timezone.now())
    if error is not None:
        result.errors.append(TaskError(exception_class_path=error["exception_class_path"],
                                       traceback=error["traceback"]))
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", return_value)
    task_finished.send(sender=type(backend), task_result=result)


def failure(job: Job, exc: BaseException, *, worker_id: str, duration: float = 0.0, permanent: bool = False,
            traceback: str | None = None) -> Outcome:
    error = error_entry(exc, attempt=job.attempts, worker_id=worker_id, when=timezone.now(), traceback=traceback)
    return Outcome(job=job, succeeded=False, duration=duration, error=error, permanent=permanent, exc=exc)


def run_claimed(job, slot, *, backend, worker_id: str, reset=None) -> Outcome:
    """A claimed job, in a slot's thread: refuse it if its row is damaged or its path not a
    task (importing happens here, never in the worker's main thread), arm the slot's
    timeout, run the attempt. Never raises. ``reset``: see ``run_attempt``."""
    logger.debug("job started id=%s task=%s attempt=%s queue=%s worker=%s", job.id, job.task_path, job.attempts,
                 job.queue_name, worker_id)
    try:
        if job.damage:
            raise DamagedJob(f"job {job.id} cannot be run as stored: {'; '.join(job.damage)}")
        task = resolve_task(job.task_path)
    except PERMANENT as exc:
        return failure(job, exc, worker_id=worker_id, permanent=True)
    slot.arm(task)
    attempt = slot.attempt
    control.running(attempt)
    try:
        outcome = run_attempt(job, task, backend=backend, worker_id=worker_id, attempt=attempt, reset=reset)
    finally:
        control.running(None)
    try:
        attempt.flush()  # the progress it set last, if the throttle held it back
    except Exception:  # noqa: BLE001 - progress is a courtesy: never lose the outcome over it
        logger.exception("progress not written id=%s task=%s", job.id, job.task_path)
    return outcome


def reset_connections(*, interrupted: bool = False) -> list[str]:
    """Give the next job clean connection state, without paying for a new connection.

    Returns the aliases of the connections on which a transaction was left open.
    Those are rolled back by closing them and throwing away Django's wrapper, whose
    atomic-block bookkeeping the task may have left half done: a task that entered
    ``transaction.atomic()`` and returned, or ran ``BEGIN`` itself (invisible to
    Django), would otherwise hold its locks for ever (on SQLite: the write lock of
    the whole database, for every process). A broken connection is closed too (the
    next query reopens it). A healthy one stays open whatever CONN_MAX_AGE says:
    that setting is about web requests, and Django's default of 0 would cost a new
    connection per job.

    After an ``interrupted`` attempt (a timeout's or a cancel's exception raised in its thread,
    which lands wherever the thread is, inside the database driver's own code too, with a reply
    half read) every connection of the thread is closed: one left mid-reply fails the next job's
    first query (MySQL: "Commands out of sync").
    """
    left_open = []
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        if interrupted:
            if conn.in_atomic_block:
                left_open.append(conn.alias)
            discard_connection(conn)
            continue
        if transaction_open(conn):
            left_open.append(conn.alias)
            discard_connection(conn)
            continue
        if conn.errors_occurred:
            if not conn.is_usable():
                conn.close()
                continue
            conn.errors_occurred = False
    return left_open


def transaction_open(conn) -> bool:
    """Whether ``conn`` is inside a transaction, as Django or as the driver sees it."""
    if conn.in_atomic_block or not conn.get_autocommit():
        return True
    raw = conn.connection
    if hasattr(raw, "in_transaction"):  # sqlite3
        return bool(raw.in_transaction)
    info = getattr(raw, "info", None)  # psycopg 3: IDLE is 0
    if info is not None and hasattr(info, "transaction_status"):
        return int(info.transaction_status) != 0
    status = getattr(raw, "get_transaction_status", None)  # psycopg2
    if callable(status):
        return bool(status())
    if conn.vendor == "mysql":  # mysqlclient does not say: the server does (one round trip)
        return _mysql_in_transaction(conn)
    return False


def _mysql_in_transaction(conn) -> bool:
    status = _native_server_status(conn.connection)
    if status is not None:
        return bool(status & _SERVER_STATUS_IN_TRANS)
    sql = ("SELECT @@in_transaction" if getattr(conn, "mysql_is_mariadb", False) else
           "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()")
    try:
        with conn.connection.cursor() as cursor:
            cursor.execute(sql)
            return bool(cursor.fetchone()[0])
    except Exception:  # noqa: BLE001 - a broken connection: closed by the caller's next check
        conn.errors_occurred = True
        return False


_SERVER_STATUS_IN_TRANS = 1  # the server's status flag, sent with every reply
_MARIADB_CONNECTION_SERVER_STATUS = 30  # enum mariadb_value of MariaDB Connector/C


@functools.cache
def _status_reader():
    """``mariadb_get_infov`` of MariaDB Connector/C, which mysqlclient is built on (Debian's
    libmariadb-dev), and the capsule helpers; None when it is built on MySQL's library."""
    try:
        import ctypes

        import MySQLdb._mysql as native

        read = ctypes.CDLL(native.__file__).mariadb_get_infov
    except (ImportError, OSError, AttributeError):
        return None
    read.argtypes, read.restype = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p], ctypes.c_int
    name = ctypes.pythonapi.PyCapsule_GetName
    name.argtypes, name.restype = [ctypes.py_object], ctypes.c_char_p
    pointer = ctypes.pythonapi.PyCapsule_GetPointer
    pointer.argtypes, pointer.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
    return ctypes, read, name, pointer


def _native_server_status(raw) -> int | None:
    """The status flags of the server's last reply on ``raw`` (a MySQLdb connection), read from the
    client library without a round trip; None when that library cannot say."""
    reader = _status_reader()
    if reader is None:
        return None
    ctypes, read, name, pointer = reader
    try:
        capsule = raw._get_native_connection()
        value = ctypes.c_uint()
        if read(pointer(capsule, name(capsule)), _MARIADB_CONNECTION_SERVER_STATUS, ctypes.byref(value)) != 0:
            return None
    except Exception:  # noqa: BLE001 - then ask the server
        return None
    return value.value


def discard_connection(conn) -> None:
    """Close the driver's connection (the server rolls back) and forget Django's wrapper."""
    try:
        conn.connection.close()
    except Exception:  # already broken: closed is what we want
        pass
    conn.connection = None
    del connections[conn.alias]


def _call(task: Task, result, job: Job, attempt: control.Attempt | None):
    args = [TaskContext(task_result=result), *job.args] if task.takes_context else list(job.args)
    if not asyncio.iscoroutinefunction(task.func):
        return task.call(*args, **job.kwargs)
    timeout = getattr(task, "timeout", None)

    async def run():
        if attempt is not None:  # so that a cancel from another thread reaches this coroutine
            attempt.loop, attempt.task = asyncio.get_running_loop(), asyncio.current_task()
            if attempt.cancel.is_set():
                attempt.seen = True
                raise asyncio.CancelledError
        called = task.func(*args, **job.kwargs)
        # A coroutine can really be cancelled, so the async path enforces its own timeout.
        return await (asyncio.wait_for(called, timeout) if timeout else called)

    try:
        with asyncio.Runner() as runner:
            return runner.run(run())
    except TimeoutError:
        raise JobTimeout(f"attempt timed out after {timeout:g}s") from None
    finally:
        if attempt is not None:
            attempt.loop = attempt.task = None


def run_attempt(job: Job, task: Task, *, backend, worker_id: str, attempt: control.Attempt | None = None,
                reset=None) -> Outcome:
    """Call the task for this attempt. Never raises: every failure is an Outcome.

    A failure's retry decision is taken here, under the attempt limit in force now,
    and the worker persists it; ``task_finished`` goes out only when the job is
    finished (see ``send_finished``). ``reset`` cleans the connections before and
    after the call and returns the aliases a transaction was left open on
    (``reset_connections``; ``jobs.testing`` passes one that keeps the test's own
    transaction).
    """
    reset = reset or reset_connections
    started = time.monotonic()
    reset()
    try:
        result = backend.to_task_result(job, task)
    except Exception as exc:  # noqa: BLE001 - the row holds what the framework refuses (a priority of 500)
        damaged = DamagedJob(f"job {job.pk} cannot be run as stored: {type(exc).__name__}: {exc}")
        return failure(job, damaged, worker_id=worker_id, permanent=True)
    if attempt is not None and attempt.cancel.is_set():  # cancelled before it began
        return _cancelled(job, attempt, result, backend=backend, worker_id=worker_id, started=started)
    task_started.send(sender=type(backend), task_result=result)
    try:
        raw_value = _call(task, result, job, attempt)
    except BaseException as exc:  # a job's SystemExit must not stop the worker either
        left_open = reset(interrupted=isinstance(exc, JobTimeout))
        if attempt is not None and attempt.cancel.is_set():
            return _cancelled(job, attempt, result, backend=backend, worker_id=worker_id, started=started)
        # Still inside the handler: receivers of task_finished see the exception (Django's log one does).
        return _failed(job, task, exc, result, backend=backend, worker_id=worker_id, started=started,
                       note=_left_open_note(left_open))
    left_open = reset()
    if attempt is not None and attempt.cancel.is_set() and attempt.seen:  # it heeded the cancel and returned
        # (One that returned without having seen it came too late: its work is done, it keeps its outcome.)
        return _cancelled(job, attempt, result, backend=backend, worker_id=worker_id, started=started)
    if left_open:  # whatever it returned, what it wrote in that transaction is gone
        return _failed(job, task, TransactionLeftOpen(_left_open_note(left_open)), result, backend=backend,
                       worker_id=worker_id, started=started)
    try:
        value = to_json(raw_value, f"return value of {job.task_path}")
    except (TypeError, RecursionError) as exc:
        return _failed(job, task, ResultNotSerialisable(str(exc)), result, backend=backend, worker_id=worker_id,
                       started=started)
    send_finished(backend, result, status=TaskResultStatus.SUCCESSFUL, return_value=value)
    return Outcome(job=job, succeeded=True, duration=time.monotonic() - started, return_value=value)


def _failed(job: Job, task: Task, exc: BaseException, result, *, backend, worker_id: str, started: float,
            note: str = "") -> Outcome:
    outcome = failure(job, exc, worker_id=worker_id, duration=time.monotonic() - started,
                      permanent=isinstance(exc, DoNotRetry))
    if note:
        outcome.error = {**outcome.error, "message": f"{outcome.error['message']} (and {note})"}
    if not outcome.permanent and not not_retried(task, exc):
        _ask_backoff(task, exc, result, outcome)
    outcome.decision = decide_retry(job, outcome, limit=backend.attempt_limit(task, job.max_attempts),
                                    base=backend.jobs_options.retry_backoff, task=task)
    if not outcome.decision.retry:
        send_finished(backend, result, status=TaskResultStatus.FAILED, error=outcome.error)
    return outcome


def cancelled(job, attempt: control.Attempt | None, *, worker_id: str, duration: float = 0.0,
              how: str = "cancelled while it ran") -> Outcome:
    """The outcome of a cancelled attempt: CANCELLED for good, whatever the task did."""
    asked = attempt.asked_at.isoformat() if attempt is not None and attempt.asked_at else "now"
    exc = JobCancelled(f"attempt {job.attempts} {how} (its worker heard of the cancel at {asked})")
    outcome = failure(job, exc, worker_id=worker_id, duration=duration, permanent=True, traceback=f"{exc}\n")
    outcome.final = "CANCELLED"
    outcome.decision = retry.RetryDecision(False, reason="cancelled")
    return outcome


def _cancelled(job, attempt, _result, *, backend, worker_id: str, started: float) -> Outcome:
    # No task_finished: a cancel is no failure, and Django's receiver would log it at ERROR as
    # state=FAILED (Django has no cancelled state). The worker logs it at WARNING.
    return cancelled(job, attempt, worker_id=worker_id, duration=time.monotonic() - started)


def _left_open_note(aliases: list[str]) -> str:
    if not aliases:
        return ""
    return (f"the task left a transaction open on database {', '.join(map(repr, aliases))}; "
            "the worker rolled it back, so what the task wrote in it is lost")


def _ask_backoff(task: Task, exc: BaseException, result, outcome: Outcome) -> None:
    """Ask the task's own ``backoff(exception, task_result)`` for the next delay."""
    backoff = getattr(task, "backoff", None)
    if backoff is None:
        return
    try:
        delay = backoff(exc, result)
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                                  or math.isnan(delay)):
            raise TypeError(f"backoff returned {delay!r}; expected seconds or None")
    except Exception:
        logger.exception("backoff of task=%s raised; using the default retry policy", task.module_path)
        return
    outcome.custom_delay, outcome.custom_given = delay, True
