"""Tasks the tests enqueue. Runs are recorded in files so that counts hold across processes."""

import asyncio
import os
import time
from pathlib import Path

from jobs import task
from jobs.framework import task as django_task


def _record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@django_task
def add(a, b):
    return a + b


@django_task
def noop():
    return None


@django_task(takes_context=True)
def record(context, path, token):
    """Append ``token`` to the file ``path``: one line per run."""
    _record(path, f"{token} attempt={context.attempt}")
    return token


@task(takes_context=True)
def fail_times(context, times):
    """Fail the first ``times`` attempts, then succeed with the attempt number."""
    if context.attempt <= times:
        raise ValueError(f"failing on purpose, attempt {context.attempt}")
    return context.attempt


@django_task
def always_fails():
    raise RuntimeError("this task always fails")


@task(max_attempts=5)
def always_fails_five():
    raise RuntimeError("five times")


@task(max_attempts=5, backoff=lambda exc, result: None if isinstance(exc, KeyError) else 0.01)
def custom_backoff(kind):
    if kind == "key":
        raise KeyError("not retried")
    raise ValueError("retried quickly")


@task(timeout=0.5, max_attempts=1)
def sleeps(seconds):
    time.sleep(seconds)
    return "woke"


@task(timeout=0.3, max_attempts=1)
async def async_sleeps(seconds):
    await asyncio.sleep(seconds)
    return "woke"


@django_task
async def async_add(a, b):
    await asyncio.sleep(0.01)
    return a + b


@django_task
def slow_then_record(path, token, seconds):
    """Mark the start, sleep, then mark the end: lets tests act while the job runs."""
    _record(path, f"start {token} pid={os.getpid()}")
    time.sleep(seconds)
    _record(path, f"end {token}")
    return token


@django_task(takes_context=True)
def records_span(context, path, seconds):
    """Sleep ``seconds`` between a start and an end line naming the job (wall clock): when each run ran."""
    job_id = context.task_result.id
    _record(path, f"start {job_id} {time.time():.6f}")
    time.sleep(seconds)
    _record(path, f"end {job_id} {time.time():.6f}")


@django_task
def returns_object():
    return object()


@django_task
def exits():
    raise SystemExit(3)


@django_task
def uses_database(fail):
    """Leaves a transaction open and broken if ``fail``: the next job must not notice."""
    from django.db import connection, transaction

    from jobs.models import Job

    if fail:
        transaction.set_autocommit(False)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        raise RuntimeError("left a transaction open")
    return Job.objects.count()


def plain_function():
    """Not a task: a job naming it must not run it."""
    Path(os.environ.get("JOBS_TEST_MARKER", "/tmp/jobs-plain-function-ran")).write_text("ran")


@task(takes_context=True)
def slow_first_attempt(context, path, seconds):
    """Sleep long on attempt 1 only (the one the tests kill), then succeed at once."""
    _record(path, f"start attempt={context.attempt} pid={os.getpid()}")
    if context.attempt == 1:
        time.sleep(seconds)
    return context.attempt


@django_task
def connection_identity():
    """Which server connection the job ran on (PostgreSQL backend pid, or the SQLite handle)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]
    connection.ensure_connection()
    return id(connection.connection)


@task(max_attempts=1)
def leaves_atomic_open(name):
    """Enter transaction.atomic(), write, and return without leaving it."""
    from django.db import transaction
    from django.utils import timezone

    from jobs.models import QueueState

    transaction.atomic().__enter__()
    QueueState.objects.create(name=name, changed_at=timezone.now())
    return "returned inside atomic()"


@task(max_attempts=1)
def leaves_raw_begin(job_id):
    """BEGIN behind Django's back and take a lock on a job row (IMMEDIATE: SQLite's write lock)."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")
        else:
            cursor.execute("BEGIN")
            cursor.execute("SELECT id FROM jobs_job WHERE id = %s FOR UPDATE", [job_id])
    return "returned with BEGIN open"


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("__str__ raised")

    def __repr__(self):
        raise RuntimeError("__repr__ raised")


@task(max_attempts=1)
def raises_unprintable():
    raise Unprintable()
@django_task(takes_context=True)
def task_as_seen(context):
    """What the running task is told about itself: the run_after and backend of its TaskResult's task."""
    task = context.task_result.task
    return {"run_after": task.run_after.isoformat() if task.run_after else None, "backend": task.backend}


# -- job control (tests/test_job_control.py) ------------------------------------------------

@task(unique=True)
def unique_add(a, b):
    return a + b


@task(unique=True)
def unique_record(path, token):
    """A unique task that records each run (one line per run in ``path``)."""
    _record(path, token)


@task(unique=lambda account, **_: f"account-{account}", max_attempts=2)
def sync_account(account, note=""):
    if note == "fail":
        raise RuntimeError("sync failed")
    return account


def _span(path: str, token: str, seconds: float) -> None:
    """Record when this run started and ended (wall clock), for overlap counts across processes."""
    start = time.time()
    time.sleep(seconds)
    _record(path, f"{token} {start:.6f} {time.time():.6f} pid={os.getpid()}")


@task(concurrency_key=lambda key, path, token, seconds: key, concurrency_limit=2)
def limited(key, path, token, seconds):
    _span(path, f"{key}:{token}", seconds)


@task(concurrency_key=lambda key: key)
def one_per_key(key):
    return key


@task(concurrency_key="one-at-a-time", max_attempts=5)
def one_at_a_time(path, token, seconds):
    _span(path, token, seconds)


@task(rate_limit="5/s")
def rated(path, token):
    _record(path, f"{token} {time.time():.6f}")


@django_task
def quick(path, token):
    _record(path, f"{token} {time.time():.6f}")


# -- cancel and progress (tests/test_cancel_progress.py) -------------------------------------

def _wait_for_file(path: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@task(max_attempts=3)
def cooperative(path):
    """Work until asked to stop, checking jobs.cancel_requested() as it goes."""
    import jobs

    _record(path, "started")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if jobs.cancel_requested():
            _record(path, "saw the cancel")
            return "stopped early"
        time.sleep(0.01)
    return "ran to the end"


@task(max_attempts=3)
async def async_waits(path):
    _record(path, "started")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        _record(path, "cancelled")
        raise
    return "woke"


@task(max_attempts=3)
def stubborn(path):
    """Ignores cancel_requested() and sleeps in short naps (an interrupt lands between two)."""
    _record(path, "started")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
    _record(path, "ran to the end")


@task
def reports_progress(gate, steps):
    import jobs

    for done in range(1, steps + 1):
        jobs.set_progress(done, steps, f"step {done}")
    _wait_for_file(gate, 60)
    return "done"


@task(max_attempts=1)
def slow_then_fail(path, seconds):
    """Mark the start, sleep, then fail for good (its only attempt): lets tests act while it runs."""
    _record(path, f"start pid={os.getpid()}")
    time.sleep(seconds)
    raise RuntimeError("failed after sleeping")


_LEAKED = []  # what leaks_memory keeps, as leaky task code would


@django_task
def leaks_memory(megabytes, seconds):
    """Keep ``megabytes`` MiB for the rest of the process's life, then sleep ``seconds``."""
    _LEAKED.append(b"\x01" * (megabytes * 1024 * 1024))  # written, so really resident
    time.sleep(seconds)
    return len(_LEAKED)


@django_task
def worker_rss():
    """The resident memory of the worker process that runs it, in bytes."""
    from jobs.worker.limits import rss_bytes

    return rss_bytes()


@django_task
def session_settings():
    """The lock and idle-transaction limits of the session this task's code runs on."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute("SELECT @@innodb_lock_wait_timeout, @@idle_transaction_timeout")
            return [str(value) for value in cursor.fetchone()]
        cursor.execute("SELECT current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout')")
        return list(cursor.fetchone())


@task(max_attempts=3)
def holds_gil(path, token, seconds):
    """Hold the GIL for ``seconds`` in one C call (libc's sleep through ``ctypes.PyDLL``, which keeps
    the GIL): no other thread of the process runs meanwhile, the heartbeat's included."""
    import ctypes

    _record(path, f"start {token} pid={os.getpid()}")
    ctypes.PyDLL(None).sleep(int(seconds))
    _record(path, f"end {token}")
    return token


@task(max_attempts=2, timeout=2)
def holds_gil_past_timeout(path, token, seconds):
    """``holds_gil`` with a 2 s timeout: no interrupt reaches it; only ending its process stops it."""
    return holds_gil.func(path, token, seconds)


@task(max_attempts=1, timeout=1)
def spins_past_timeout(path):
    """Python code that never returns: an interrupt raised in the thread stops it."""
    _record(path, f"start spin pid={os.getpid()}")
    while True:
        pass


@task(concurrency_key="sleeps-under-key", concurrency_limit=1, timeout=0.5, max_attempts=1)
def sleeps_under_key(path, token, seconds):
    _record(path, f"start {token} pid={os.getpid()}")
    time.sleep(seconds)
    _record(path, f"end {token}")


@task(max_attempts=3, timeout=0.5, retry_on=(ConnectionError,))
def blocks_past_timeout_retrying_only_connection_errors(path, seconds):
    """Blocked in C past its timeout: under --processes its process is ended; a timeout is not in retry_on."""
    _record(path, f"start pid={os.getpid()}")
    time.sleep(seconds)


@task(max_attempts=3)
def cooperative_gate(path, gate):
    """Work until ``gate`` exists (then return "finished") or until asked to stop."""
    import jobs

    _record(path, "started")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if jobs.cancel_requested():
            _record(path, "saw the cancel")
            return "stopped early"
        if os.path.exists(gate):
            return "finished"
        time.sleep(0.01)
    return "ran to the end"


@task(max_attempts=3, takes_context=True)
def cancels_itself(context, path, then):
    """Attempt 1 asks to cancel its own job, then ``then``: "raise" at once, or "return" once its
    worker has heard of the cancel, without ever reading cancel_requested(). Later attempts succeed."""
    import jobs
    from jobs import control

    _record(path, f"attempt {context.attempt}")
    if context.attempt > 1:
        return "ran again"
    assert jobs.cancel(context.task_result.id, "from inside", by="itself") == control.REQUESTED
    if then == "raise":
        raise RuntimeError("failed after its cancel was asked")
    attempt = control.current()
    deadline = time.monotonic() + 30
    while not attempt.cancel.is_set() and time.monotonic() < deadline:  # its worker has heard
        time.sleep(0.01)
    _record(path, "heard" if attempt.cancel.is_set() else "not heard")
    return "done anyway"


@task(max_attempts=1)
def brief_cooperative(milliseconds):
    """A few milliseconds of work that stops when asked (the cancel storm's job)."""
    import jobs

    deadline = time.monotonic() + milliseconds / 1000
    while time.monotonic() < deadline:
        if jobs.cancel_requested():
            return "stopped early"
        time.sleep(0.002)
    return milliseconds


@task(max_attempts=1)
async def async_progress(gate, steps):
    """Progress from inside a coroutine, then wait for ``gate``."""
    import jobs

    for done in range(1, steps + 1):
        jobs.set_progress(done, steps, f"step {done}")
        await asyncio.sleep(0)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return steps


# -- damaged job control and abandoned attempts (tests/test_job_control.py, issue 18) -------

def _block_in_c(context, path, token, seconds):
    start = time.time()
    try:
        time.sleep(seconds if context.attempt == 1 else 0.05)
    finally:  # the interrupt lands as the call returns: this still runs
        _record(path, f"{token}#{context.attempt} {start:.6f} {time.time():.6f} pid={os.getpid()}")


@task(concurrency_key="blocked-in-c", timeout=0.5, max_attempts=2, takes_context=True)
def blocks_in_c(context, path, token, seconds):
    """Block in one C call (time.sleep) for ``seconds`` on its first attempt, past its timeout: the
    worker gives up on it, but its code runs on until the call returns. Records start and end."""
    _block_in_c(context, path, token, seconds)


@task(concurrency_key="blocked-in-c", max_attempts=1, takes_context=True)
def blocks_in_c_untimed(context, path, token, seconds):
    """The same without a timeout: for a cancel, interrupted after its grace."""
    _block_in_c(context, path, token, seconds)


@task(concurrency_key=lambda key: key.replace("~", "\x00").replace("^", "\ud800"))
def keyed_oddly(key):
    """Its key callable turns ~ into NUL and ^ into a lone surrogate: keys no database stores."""
    return key


# -- batches and dependencies (tests/test_batches.py) ---------------------------------------------

@task(max_attempts=2, backoff=lambda exc, result: 0)
def member(path, token, outcome="ok", seconds=0.0):
    """A batch member: 'ok', 'fail' (every attempt) or 'flaky' (the first attempt fails)."""
    _record(path, f"start {token}")
    time.sleep(seconds)
    if outcome == "fail" or (outcome == "flaky" and f"failed {token}" not in Path(path).read_text()):
        _record(path, f"failed {token}")
        raise ValueError(f"member {token} fails")
    _record(path, f"end {token}")
    return token


def _callback_state(batch_id):
    from jobs import get_batch

    state = get_batch(batch_id)
    return {"finished": state.finished, "total": state.total, "pending": state.pending,
            "successful": state.successful, "failed": state.failed, "cancelled": state.cancelled}


@task
def batch_succeeded(batch_id):
    return _callback_state(batch_id)


@task
def batch_failed(batch_id):
    return _callback_state(batch_id)


@task
def batch_finished(batch_id):
    return _callback_state(batch_id)


@task(max_attempts=3, backoff=lambda exc, result: 0)
def link(path, n, seconds=0.0):
    """A link of a chain: records itself, and what its parents returned."""
    from jobs import parent_results

    parents = [result.return_value for result in parent_results()]
    _record(path, f"link {n} after {parents}")
    time.sleep(seconds)
    return n


@task(timeout=0.5, max_attempts=1)
def swallows_timeout(path):
    """Sleeps in C past its timeout and swallows the interrupt that lands after it, then returns."""
    try:
        time.sleep(1.5)
    except BaseException:  # noqa: BLE001 - the point of the task
        _record(path, "interrupted")
    _record(path, "returned")
    return "late"


@task(timeout=0.5, max_attempts=1)
def sleeps_in_a_query(seconds):
    """A query that outlasts the timeout: the interrupt lands once the driver's C call returns,
    inside its Python code, with the server's reply not yet read."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT SLEEP(%s)" if connection.vendor == "mysql" else "SELECT pg_sleep(%s)", [seconds])
        cursor.fetchall()
