"""A worker frozen or cut off inside a transaction cannot stall the others (PostgreSQL; the two
skips on MySQL/MariaDB too).

``make chaos`` found both: a live worker blocked writing its own jobs while a frozen one
held their rows (PostgreSQL keeps a row locked that ``SKIP LOCKED`` let go), and every
worker's sweep waiting on the same locked stale row. Here the frozen peer is a session
that locks a row and then does nothing, as a SIGSTOPped process's session does.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone

from jobs.models import Job, JobStatus
from jobs.sessions import MAX_HOLD, guarded_sessions, hold_limit
from jobs.sql import claim
from jobs.store import WorkerStore
from tests import tasks
from tests.conftest import sweep

pytestmark = pytest.mark.postgres_only


@pytest.fixture
def frozen_peer():
    """A session of its own that locks the given job rows and then stays silent."""
    peer = connections.create_connection("default")
    peer.set_autocommit(False)

    def lock(*ids):
        with peer.cursor() as cursor:
            cursor.execute(f"SELECT id FROM jobs_job WHERE id IN ({', '.join(['%s'] * len(ids))}) FOR UPDATE",
                           list(ids))

    try:
        yield lock
    finally:
        peer.rollback()
        peer.close()


def in_thread(fn, timeout: float):
    """Run ``fn`` on a thread of its own (its own connection); its result, or fail if it waits."""
    out, done = [], threading.Event()

    def run():
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)
        finally:
            connections.close_all()
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout), f"still waiting after {timeout}s"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def stale_jobs(n: int) -> list[int]:
    ids = [int(tasks.add.enqueue(i, i).id) for i in range(n)]
    claim(worker_id="gone", limit=n, now=timezone.now())
    Job.objects.update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    return ids


@pytest.mark.vendors("postgresql", "mysql")  # MySQL/MariaDB: SKIP LOCKED as well
def test_the_sweep_skips_a_stale_row_another_transaction_holds(transactional_db, frozen_peer):
    ids = stale_jobs(3)
    frozen_peer(ids[0])
    assert in_thread(sweep, timeout=5) == 2  # the other two at once, not after the peer
    assert Job.objects.get(pk=ids[0]).status == JobStatus.RUNNING


@pytest.mark.vendors("postgresql", "mysql")  # MySQL/MariaDB: SKIP LOCKED as well
def test_the_heartbeat_skips_a_held_row_another_transaction_holds(transactional_db, frozen_peer):
    ids = [int(tasks.add.enqueue(i, i).id) for i in range(2)]
    store = WorkerStore(worker_id="alive", backend="default")
    claim(worker_id="alive", limit=2, now=timezone.now())
    frozen_peer(ids[0])
    beat = timezone.now() + timedelta(seconds=30)
    in_thread(lambda: store.heartbeat(ids, now=beat), timeout=5)
    assert dict(Job.objects.values_list("pk", "heartbeat_at"))[ids[1]] == beat


@pytest.mark.vendors("postgresql", "mysql")  # MariaDB's idle_transaction_timeout (MySQL has none)
def test_a_guarded_session_left_idle_in_a_transaction_is_ended_by_the_server(transactional_db):
    """The worker frozen itself: the server ends its transaction after the hold limit, and its
    row locks go; the frozen worker, when it wakes, finds its connection gone and rolled back."""
    (job_id,) = [int(tasks.add.enqueue(1, 1).id)]
    locked, woke = threading.Event(), []

    def frozen_worker():
        with guarded_sessions(0.3):
            try:
                with transaction.atomic():
                    Job.objects.select_for_update().get(pk=job_id)
                    Job.objects.filter(pk=job_id).update(priority=7)
                    locked.set()
                    time.sleep(2)  # frozen, holding the row
            except DatabaseError as exc:
                woke.append(type(exc).__name__)

    thread = threading.Thread(target=lambda: (frozen_worker(), connections.close_all()))
    thread.start()
    assert locked.wait(10)
    started = time.monotonic()
    assert Job.objects.filter(pk=job_id).update(priority=3) == 1  # waits for the server to end it
    waited = time.monotonic() - started
    thread.join(10)
    # 0.3 s idle (1 s on MySQL/MariaDB, whose limits are whole seconds), not the 2 s it stayed frozen
    assert waited < (1.9 if connection.vendor == "mysql" else 1.5), waited
    assert woke and Job.objects.get(pk=job_id).priority == 3  # its write was rolled back


@pytest.mark.vendors("postgresql", "mysql")
def test_a_guarded_session_gives_up_waiting_for_a_lock(transactional_db, frozen_peer):
    (job_id,) = [int(tasks.add.enqueue(1, 1).id)]
    frozen_peer(job_id)

    def wait_for_the_row():
        with guarded_sessions(0.3):
            Job.objects.filter(pk=job_id).update(priority=7)

    started = time.monotonic()
    with pytest.raises(DatabaseError, match="lock timeout|Lock wait timeout"):
        in_thread(wait_for_the_row, timeout=5)
    assert time.monotonic() - started < 2  # 0.3 s (1 s on MySQL/MariaDB), not the server's default


@pytest.mark.vendors("postgresql", "mysql")
def test_only_the_workers_own_sessions_are_guarded_not_the_tasks(run_worker):
    assert hold_limit(3) == 0.75 and hold_limit(30) == MAX_HOLD
    result = tasks.session_settings.enqueue()
    run_worker()
    if connection.vendor == "mysql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT @@GLOBAL.innodb_lock_wait_timeout")
            default = str(cursor.fetchone()[0])
        assert Job.objects.get(pk=int(result.id)).return_value == [default, "0"]  # the task's session
        with guarded_sessions(hold_limit(30)), connection.cursor() as cursor:
            cursor.execute("SELECT @@innodb_lock_wait_timeout, @@idle_transaction_timeout")
            assert cursor.fetchone() == (2, 2)
        with connection.cursor() as cursor:  # and back to the defaults afterwards
            cursor.execute("SELECT @@innodb_lock_wait_timeout, @@idle_transaction_timeout")
            assert cursor.fetchone() == (int(default), 0)
        return
    assert Job.objects.get(pk=int(result.id)).return_value == ["0", "0"]  # the task's own session: defaults
    with connection.cursor() as cursor:  # and the test's thread is as it was after the worker ran here
        cursor.execute("SELECT current_setting('lock_timeout')")
        assert cursor.fetchone()[0] == "0"
    with guarded_sessions(hold_limit(30)), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout')")
        assert cursor.fetchone() == ("2s", "2s")
