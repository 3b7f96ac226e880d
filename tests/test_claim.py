"""The claim query: row locks on PostgreSQL, the partial index, batches, order."""

import threading
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from jobs.models import Job, JobStatus
from jobs.sql import claim, claim_sql
from tests import tasks


def test_claim_takes_a_batch_and_marks_it_running(transactional_db):
    for i in range(5):
        tasks.add.enqueue(i, i)
    claimed = claim(worker_id="w", limit=3, now=timezone.now())
    assert len(claimed) == 3
    assert [j.pk for j in claimed] == sorted(j.pk for j in claimed)
    assert all(j.status == JobStatus.RUNNING and j.attempts == 1 and j.worker_id == "w" for j in claimed)
    assert Job.objects.filter(status=JobStatus.RUNNING).count() == 3
    assert len(claim(worker_id="w", limit=10, now=timezone.now())) == 2
    assert claim(worker_id="w", limit=10, now=timezone.now()) == []


def test_claimed_rows_carry_decoded_values(transactional_db):
    result = tasks.add.using(priority=7, queue_name="emails").enqueue([1, {"a": "b"}], b=None)
    (job,) = claim(worker_id="w", limit=1, now=timezone.now())
    assert job.pk == int(result.id)
    assert job.args == [[1, {"a": "b"}]] and job.kwargs == {"b": None}
    assert job.priority == 7 and job.queue_name == "emails" and job.errors == [] and job.worker_ids == []
    assert job.run_after.tzinfo is not None and job.started_at is not None


@pytest.mark.postgres_only
def test_skip_locked_from_a_second_connection(transactional_db):
    """A row locked by another transaction is skipped at once, not waited for."""
    ids = [int(tasks.add.enqueue(i, i).id) for i in range(3)]
    settings = connection.settings_dict
    other = psycopg.connect(host=settings["HOST"], port=settings["PORT"], user=settings["USER"],
                            dbname=settings["NAME"], autocommit=False)
    try:
        locked = other.execute("SELECT id FROM jobs_job ORDER BY id LIMIT 1 FOR UPDATE").fetchone()[0]
        assert locked == ids[0]
        done = threading.Event()
        claimed = []

        def claim_beside():
            from django.db import connections

            try:
                claimed.extend(claim(worker_id="w", limit=3, now=timezone.now()))
            finally:
                connections.close_all()
                done.set()

        threading.Thread(target=claim_beside).start()
        assert done.wait(5), "the claim waited for the locked row"
        assert sorted(j.pk for j in claimed) == ids[1:]
    finally:
        other.rollback()
        other.close()
    assert [j.pk for j in claim(worker_id="w", limit=3, now=timezone.now())] == [ids[0]]


@pytest.mark.postgres_only
def test_claim_uses_the_partial_index_among_many_finished_rows(transactional_db):
    now = timezone.now()
    finished = [Job(task_path="tests.tasks.add", status=JobStatus.SUCCESSFUL, run_after=now, enqueued_at=now,
                    finished_at=now) for _ in range(20000)]
    backlog = [Job(task_path="tests.tasks.add", run_after=now, enqueued_at=now) for _ in range(2000)]
    Job.objects.bulk_create(finished + backlog, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")
        sql, params = claim_sql(connection, worker_id="w", limit=4, now=now + timedelta(seconds=1), queues=None)
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "jobs_job_claim_idx" in plan, plan
    assert "Seq Scan on jobs_job" not in plan, plan


@pytest.mark.sqlite_only
def test_claim_reads_the_claim_index_in_order_on_sqlite(transactional_db):
    """No sort of the whole backlog: SQLite walks the partial index in claim order."""
    now = timezone.now()
    Job.objects.bulk_create([Job(task_path="tests.tasks.add", run_after=now, enqueued_at=now) for _ in range(3000)])
    with connection.cursor() as cursor:
        sql, params = claim_sql(connection, worker_id="w", limit=4, now=now, queues=["default", "emails"])
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
    assert "USING INDEX jobs_job_claim_idx" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_heads_with_damaged_priority_or_run_after_sort_without_error():
    """Keys' head jobs are sorted together before a limited claim: one damaged row must not stop it."""
    from jobs.sql.base import claim_position

    heads = [claim_position(1, "2026-01-02T00:00:00", 3), claim_position(1, 5, 2), claim_position(1, None, 1),
             claim_position("x", "2026-01-01T00:00:00", 4), claim_position(1, "2026-01-01T00:00:00", 5)]
    assert [position[-1] for position in sorted(heads)] == [5, 3, 1, 2, 4]
