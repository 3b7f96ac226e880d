"""MySQL and MariaDB (issue 20): the claim's index and locks, conflicts retried, the checks.

The rest of the suite runs there too (``make test-mariadb``); these are about InnoDB itself.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.core import checks
from django.db import OperationalError, connection, connections, transaction
from django.utils import timezone

import jobs
from jobs.checks import mysql_notes
from jobs.models import Job, JobStatus
from jobs.sql import claim, claim_sql, statements
from tests import tasks


def rows_locked_by_others(other) -> list[int]:
    """trx_rows_locked of every InnoDB transaction but ``other``'s own."""
    with other.cursor() as cursor:
        cursor.execute("SELECT trx_rows_locked FROM information_schema.innodb_trx "
                       "WHERE trx_mysql_thread_id <> CONNECTION_ID()")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.mysql_only
def test_the_claim_reads_its_index_in_order_among_many_finished_rows(transactional_db):
    jobs.enqueue_many(tasks.add, [((i, i), {}) for i in range(3000)])
    Job.objects.filter(pk__in=list(Job.objects.order_by("id").values_list("id", flat=True)[:2990])).update(
        status=JobStatus.SUCCESSFUL, finished_at=timezone.now())
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE jobs_job")
        cursor.fetchall()
        sql, params = claim_sql(connection, worker_id="w", limit=5, now=timezone.now(), queues=["default"])
        cursor.execute("EXPLAIN " + sql, params)
        plan = cursor.fetchall()
        # What running it reads: the session's handler counters before and after.
        with transaction.atomic():
            cursor.execute("FLUSH STATUS")
            cursor.execute(sql, params)
            assert len(cursor.fetchall()) == 5
            cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Handler_read_key', 'Handler_read_next', "
                           "'Handler_read_prev', 'Handler_read_rnd_next', 'Sort_rows')")
            counters = {name: int(value) for name, value in cursor.fetchall()}
    job_table = [row for row in plan if row[2] == "j"]
    assert job_table and job_table[0][5] == "jobs_job_my_claim", plan  # key
    assert all("filesort" not in (row[-1] or "") and "temporary" not in (row[-1] or "") for row in plan), plan
    assert counters["Sort_rows"] == 0 and sum(counters.values()) < 30, counters  # not the 3,000 rows


@pytest.mark.mysql_only
def test_a_claim_locks_only_the_rows_it_takes_and_another_claims_the_next(transactional_db):
    jobs.enqueue_many(tasks.add, [((i, i), {}) for i in range(2000)])
    other = connections.create_connection("default")
    try:
        with transaction.atomic():
            first = claim(worker_id="one", limit=3, now=timezone.now())
            # InnoDB counts a claimed row twice: its claim-index entry and the row itself.
            # InnoDB counts a claimed row once per record it locks (the row and the index entries the
            # claim changes): at most 3 each for 3 rows; 6,000 when the claim read every READY row.
            (locked,) = rows_locked_by_others(other)
            assert 3 <= locked <= 9, locked
            other.set_autocommit(False)
            second = statements(other).claim(worker_id="two", limit=3, now=timezone.now(), queues=None,
                                             backend="default")
            other.rollback()
        assert [job.id for job in first] == sorted(job.id for job in first)
        assert len(second) == 3 and not {job.id for job in first} & {job.id for job in second}
    finally:
        other.close()


@pytest.mark.mysql_only
def test_a_deadlock_in_the_workers_batch_is_run_again(transactional_db, monkeypatch):
    import MySQLdb

    from jobs.sql.mysql import MysqlStatements

    made = tasks.add.enqueue(1, 2)
    real, calls = MysqlStatements._claim_rows, []

    def deadlock_once(self, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            with connection.cursor() as cursor:  # work that the rollback must undo
                cursor.execute("UPDATE jobs_job SET priority = 7 WHERE id = %s", [made.id])
            raise OperationalError(*MySQLdb.OperationalError(1213, "Deadlock found").args) from \
                MySQLdb.OperationalError(1213, "Deadlock found when trying to get lock; try restarting transaction")
        return real(self, **kwargs)

    monkeypatch.setattr(MysqlStatements, "_claim_rows", deadlock_once)
    written, claimed = statements(connection).finish_and_claim([], worker_id="w", now=timezone.now(), limit=5,
                                                               queues=None, backend="default")
    assert [str(job.id) for job in claimed] == [made.id] and len(calls) == 2
    assert Job.objects.get(pk=made.id).priority == 0  # the first run was rolled back


@pytest.mark.mysql_only
def test_other_errors_of_the_batch_are_not_retried(transactional_db, monkeypatch):
    from jobs.sql.mysql import MysqlStatements

    calls = []

    def broken(self, **kwargs):
        calls.append(1)
        raise OperationalError(2013, "Lost connection to server during query")

    monkeypatch.setattr(MysqlStatements, "_claim_rows", broken)
    with pytest.raises(OperationalError):
        statements(connection).claim(worker_id="w", limit=5, now=timezone.now(), queues=None, backend="default")
    assert len(calls) == 1


def test_the_mysql_checks_say_what_stands_in_and_warn_of_repeatable_read():
    mysql = {"ENGINE": "django.db.backends.mysql", "NAME": "x", "OPTIONS": {}}
    notes = mysql_notes("default", mysql)
    assert [note.id for note in notes] == ["jobs.I030"] and notes[0].level == checks.INFO
    assert "migration jobs.0008" in notes[0].msg and "unique" in notes[0].msg
    for level in ("repeatable read", "REPEATABLE READ", "serializable"):
        found = mysql_notes("default", {**mysql, "OPTIONS": {"isolation_level": level}})
        warning = next(note for note in found if note.id == "jobs.W030")
        assert warning.level == checks.WARNING and "gap locks" in warning.msg and "'read committed'" in warning.hint
    assert [n.id for n in mysql_notes("default", {**mysql, "OPTIONS": {"isolation_level": "read committed"}})] == [
        "jobs.I030"]
    assert mysql_notes("default", {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}) == []
    assert mysql_notes("default", {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}) == []


@pytest.mark.mysql_only
def test_djangos_index_warnings_for_the_job_table_give_way_to_ours(db):
    from django.core.management import call_command

    from scheduler.models import ScheduleRun

    assert not [e.id for e in Job.check(databases=["default"]) if e.id.startswith("models.W0")]
    assert not [e.id for e in ScheduleRun.check(databases=["default"]) if e.id.startswith("models.W0")]
    ids = [message.id for message in checks.run_checks(databases=["default"])]
    assert "jobs.I030" in ids and "jobs.W030" not in ids  # Django's default: READ COMMITTED
    call_command("check", "--fail-level", "WARNING")  # no warnings at all
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@tx_isolation" if connection.mysql_is_mariadb else "SELECT @@transaction_isolation")
        assert cursor.fetchone()[0] == "READ-COMMITTED"


@pytest.mark.mysql_only
def test_the_stale_sweep_reads_running_rows_through_its_index(transactional_db):
    jobs.enqueue_many(tasks.add, [((i, i), {}) for i in range(50)])
    claimed = claim(worker_id="gone", limit=3, now=timezone.now() - timedelta(minutes=5))
    lost = statements(connection).stale(cutoff=timezone.now(), backend="default", limit=10)
    assert sorted(job.id for job in lost) == sorted(job.id for job in claimed)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN SELECT id FROM jobs_job FORCE INDEX (jobs_job_my_running) WHERE status = 'RUNNING' "
                       "AND backend = 'default' AND heartbeat_at < NOW() ORDER BY heartbeat_at LIMIT 10")
        plan = cursor.fetchall()
    assert plan[0][5] == "jobs_job_my_running" and "filesort" not in (plan[0][-1] or ""), plan


@pytest.mark.mysql_only
def test_worker_survives_a_mariadb_restart(workers):
    from jobs.models import Job
    from tests import settings_mariadb
    from tests.conftest import wait_for

    proc = workers.start()
    first = tasks.add.enqueue(1, 1)
    wait_for(lambda: Job.objects.filter(pk=int(first.id), status=JobStatus.SUCCESSFUL).exists(),
             message="the first job")
    settings_mariadb._server.restart()  # SIGKILL, as a crash would, then up again on the same port
    connection.close()  # our own connection died with the server too
    workers.wait_for_output(proc, "database error")
    second = tasks.add.enqueue(2, 2)
    job = wait_for(lambda: Job.objects.filter(pk=int(second.id), status=JobStatus.SUCCESSFUL).first(),
                   timeout=60, message="a job enqueued after the restart")
    assert job.return_value == 4
    assert proc.poll() is None, "the worker died"


@pytest.mark.mysql_only
def test_a_deadlock_in_the_two_round_trip_batch_is_run_again_and_writes_once(transactional_db, monkeypatch):
    import MySQLdb

    from jobs.sql.mysql import MysqlStatements

    first, second = tasks.add.enqueue(1, 2), tasks.add.enqueue(3, 4)
    sql = statements(connection)
    (held,) = sql.claim(worker_id="w", limit=1, now=timezone.now(), queues=None, backend="default")
    assert not sql.limited_ready  # so the next batch takes the two-round-trip path
    real, calls = MysqlStatements._batch, []

    def deadlock_after_writing(self, successes, **kwargs):
        calls.append(1)
        result = real(self, successes, **kwargs)
        if len(calls) == 1:  # as if the commit had met a deadlock: undo what it wrote
            Job.objects.filter(pk=held.id).update(status=JobStatus.RUNNING, return_value=None, finished_at=None)
            Job.objects.filter(pk=int(second.id)).update(status=JobStatus.READY, attempts=0, worker_id="")
            raise OperationalError("deadlock") from MySQLdb.OperationalError(1213, "Deadlock found")
        return result

    monkeypatch.setattr(MysqlStatements, "_batch", deadlock_after_writing)
    written, claimed = sql.finish_and_claim([(held, 3)], worker_id="w", now=timezone.now(), limit=5, queues=None,
                                            backend="default")
    assert len(calls) == 2 and written == {held.id} and [job.id for job in claimed] == [int(second.id)]
    assert Job.objects.get(pk=int(first.id)).return_value == 3
    assert Job.objects.get(pk=int(second.id)).attempts == 1


@pytest.mark.mysql_only
def test_a_take_back_and_a_heartbeat_skip_a_row_another_transaction_holds_instead_of_waiting(transactional_db):
    import time

    from jobs import retry
    from jobs.store import WorkerStore, fail_attempt

    tasks.add.enqueue(1, 1)
    (job,) = claim(worker_id="frozen", limit=1, now=timezone.now())
    Job.objects.filter(pk=job.id).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    other = connections.create_connection("default")
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:  # a worker frozen inside its transaction, holding the row
            cursor.execute("SELECT id FROM jobs_job WHERE id = %s FOR UPDATE", [job.id])
        started = time.monotonic()
        taken = fail_attempt(job, {"message": "lost"}, retry.RetryDecision(retry=True, delay=0), now=timezone.now(),
                             lost_before=timezone.now())
        beaten = WorkerStore(worker_id="frozen", backend="default").heartbeat([job.id], now=timezone.now())
        assert time.monotonic() - started < 5  # not innodb_lock_wait_timeout (20 s here, 50 s by default)
        assert taken is None and beaten == (False, [])
        other.rollback()
    finally:
        other.close()
    assert fail_attempt(job, {"message": "lost"}, retry.RetryDecision(retry=True, delay=0), now=timezone.now(),
                        lost_before=timezone.now())  # free again: taken back
    assert Job.objects.get(pk=job.id).status == JobStatus.READY


def test_keys_that_differ_only_in_case_are_different_keys(transactional_db):
    """MySQL/MariaDB compare text case-insensitively by default (utf8mb4_unicode_ci): the key
    columns are compared byte for byte there too (migration 0010), as on SQLite and PostgreSQL."""
    from jobs.models import JobLimit

    upper, lower = tasks.sync_account.enqueue("A"), tasks.sync_account.enqueue("a")
    assert upper.id != lower.id and Job.objects.filter(task_path="tests.tasks.sync_account").count() == 2
    tasks.one_per_key.enqueue("K")
    tasks.one_per_key.enqueue("k")
    assert set(JobLimit.objects.values_list("key", flat=True)) == {"K", "k"}
    claimed = statements(connection).claim(worker_id="w", limit=10, now=timezone.now(), queues=None,
                                           backend="default")
    assert sorted(job.limit_key for job in claimed if job.limit_key) == ["K", "k"]  # one each: two keys
    assert dict(JobLimit.objects.values_list("key", "running")) == {"K": 1, "k": 1}


@pytest.mark.mysql_only
def test_queue_counts_over_the_cap_are_estimates_and_the_rest_exact(transactional_db):
    """The overview, jobs_status and metrics read each (queue, status) count up to EXACT_UP_TO
    index entries (the exact count of a million rows took 290 ms); over it, EXPLAIN's estimate."""
    from jobs import stats
    from jobs.counts import EXACT_UP_TO

    jobs.enqueue_many(tasks.add, [((i, i), {}) for i in range(EXACT_UP_TO + 50)])
    tasks.add.using(queue_name="emails").enqueue(1, 2)
    Job.objects.filter(pk__in=list(Job.objects.order_by("id").values_list("id", flat=True)[:3])).update(
        status=JobStatus.FAILED)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE jobs_job")
        cursor.fetchall()
    rows = {row.name: row for row in stats.queue_rows(timezone.now())}
    default, emails = rows["default"], rows["emails"]
    assert default.estimated >= {"READY", "due"} and default.counts["READY"] > EXACT_UP_TO
    assert default.counts["FAILED"] == 3 and "FAILED" not in default.estimated
    assert emails.counts == {"READY": 1} and emails.due == 1 and not emails.estimated


@pytest.mark.mysql_only
def test_a_workers_connections_notice_a_silent_server_as_libpq_does(transactional_db):
    """The MySQL drivers have no keepalive or user-timeout options (PostgreSQL's are in OPTIONS):
    a worker sets them on each new connection's socket, so that a partition is noticed in ~25 s,
    not after TCP's retransmissions. Only a connection opened after notice_silence() gets them."""
    import socket

    from django.db.backends.signals import connection_created

    from jobs.worker.connections import SILENCE_OPTIONS, notice_silence

    def options(conn) -> dict:
        sock = socket.socket(fileno=os.dup(conn.connection.fileno()))
        try:
            found = {name: sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name)) for name in SILENCE_OPTIONS}
            return {"SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0, **found}
        finally:
            sock.close()

    connection_created.disconnect(dispatch_uid="jobs.worker.notice_silence")  # an earlier in-process worker's
    before = connections.create_connection("default")
    after = connections.create_connection("default")
    try:
        before.ensure_connection()
        assert options(before)["TCP_USER_TIMEOUT"] == 0
        notice_silence()
        after.ensure_connection()
        assert options(after) == {"SO_KEEPALIVE": True, **SILENCE_OPTIONS}
    finally:
        connection_created.disconnect(dispatch_uid="jobs.worker.notice_silence")
        before.close()
        after.close()


@pytest.mark.mysql_only
def test_a_worker_started_while_its_database_is_down_waits_for_it_and_stops_on_sigterm(workers):
    """Django's model checks connect on MySQL/MariaDB (the server's version): a worker started
    while the server restarted exited 1 at once (``make chaos CHAOS_DB=mariadb`` saw it). It now
    skips the checks that need the database, waits for it as its loop does, and a SIGTERM
    meanwhile stops it at once: it has no row and no job to hand back."""
    import signal

    from tests.conftest import subprocess_env, wait_for
    from tests.ports import free_port

    nothing_there = f"mysql://jobs@127.0.0.1:{free_port()}/jobs"
    worker = workers.start(env=subprocess_env(DJANGO_SETTINGS_MODULE="queue_project.settings",
                                              DATABASE_URL=nothing_there))
    workers.wait_for_output(worker, "the database cannot be reached at start")
    wait_for(lambda: workers.output(worker).count("database error") >= 2, message="the loop retrying")
    assert worker.poll() is None, workers.output(worker)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0, workers.output(worker)
    assert "Traceback" not in workers.output(worker)


@pytest.mark.mysql_only
def test_a_server_that_refuses_the_worker_at_start_stops_it_naming_why(workers):
    """Waiting is for a server that cannot be reached; one that answers "access denied" or "unknown
    database" is a setting to fix, and the worker exits 1 at once saying so, as a failed check."""
    from tests.conftest import subprocess_env

    settings = connection.settings_dict
    wrong_user = f"mysql://nobody@{settings['HOST'] or '127.0.0.1'}:{settings['PORT']}/jobs"
    worker = workers.start(env=subprocess_env(DJANGO_SETTINGS_MODULE="queue_project.settings",
                                              DATABASE_URL=wrong_user))
    assert worker.wait(30) == 1, workers.output(worker)
    output = workers.output(worker)
    assert "the database refused the worker at start" in output and "1045" in output, output
    assert "Traceback" not in output


@pytest.mark.vendors("mysql", "postgresql")
def test_an_attempt_interrupted_inside_a_query_leaves_its_thread_a_usable_connection(workers):
    """Under --processes a timeout interrupts the job in its own thread, which then runs the next
    job. The interrupt lands as soon as the driver's C call returns: with the server's reply not
    yet read. The next job on that thread then failed its first query with (2014, "Commands out of
    sync") on MariaDB (``make chaos CHAOS_DB=mariadb``, where a job holding the GIL made its
    neighbours overrun inside their queries). The interrupted thread's connections are now closed;
    the next job opens a fresh one."""
    interrupted = tasks.sleeps_in_a_query.enqueue(1.0)
    following = tasks.uses_database.enqueue(False)
    worker = workers.start("--processes", "1", "--burst")
    assert worker.wait(60) == 0, workers.output(worker)
    interrupted.refresh()
    following.refresh()
    assert interrupted.status == "FAILED", workers.output(worker)
    assert interrupted.errors[0].exception_class_path == "jobs.exceptions.JobTimeout", interrupted.errors
    assert following.status == "SUCCESSFUL", (following.errors[0].traceback if following.errors
                                              else workers.output(worker))
