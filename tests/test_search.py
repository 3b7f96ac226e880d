"""The admin's text search (jobs/search.py) and, on PostgreSQL, the trigram index it reads."""

from __future__ import annotations

import importlib
import logging
from datetime import timedelta

import pytest
from django.apps import apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.models import Job, JobStatus
from tests.test_admin import LIST, error, make_jobs

INDEX = "jobs_job_errors_trgm_idx"
migration = importlib.import_module("jobs.migrations.0004_job_errors_trigram_index")


def found(client, term: str) -> set[int]:
    return {job.pk for job in client.get(LIST, {"q": term}).context["cl"].result_list}


@pytest.mark.django_db
def test_search_by_task_path_and_error_text_ignoring_case(admin_client):
    (charge,) = make_jobs(1, JobStatus.FAILED, task_path="shop.tasks.charge_card",
                          errors=[error(1, "Timed out talking to payments.example.com")])
    (mail,) = make_jobs(1, task_path="mail.tasks.send_receipt", args=["payments.example.com"])
    (retried,) = make_jobs(1, JobStatus.READY, task_path="mail.tasks.send_receipt", attempts=1,
                           errors=[error(1, "SMTP said 100% full_box")])
    assert found(admin_client, "CHARGE_CARD") == {charge.pk}
    assert found(admin_client, "tasks.send") == {mail.pk, retried.pk}
    assert found(admin_client, "PAYMENTS.example") == {charge.pk}  # arguments are not searched
    assert found(admin_client, "timed OUT") == {charge.pk}
    assert found(admin_client, "ValueError: card") == {charge.pk, retried.pk}  # the traceback
    assert found(admin_client, "100% full_box") == {retried.pk}
    assert found(admin_client, "0% f") == {retried.pk}
    assert found(admin_client, "%") == {retried.pk}  # a literal percent sign, not "anything"
    assert found(admin_client, "_") == {charge.pk, mail.pk, retried.pk}  # in every task path
    assert found(admin_client, "[]") == set()  # jobs without errors have no error text
    assert found(admin_client, "no such text") == set()


@pytest.mark.django_db
def test_search_costs_one_query_for_the_task_paths(admin_client, django_assert_num_queries):
    make_jobs(3, JobStatus.FAILED)
    with CaptureQueriesContext(connection) as plain:
        admin_client.get(LIST)
    with CaptureQueriesContext(connection) as searched:
        admin_client.get(LIST, {"q": "declined"})
    assert len(searched) == len(plain) + 1
    make_jobs(30, JobStatus.FAILED, task_path="tests.tasks.always_fails")
    with django_assert_num_queries(len(searched)):
        admin_client.get(LIST, {"q": "declined"})


# -- PostgreSQL: the index and its migration ------------------------------------------------

def index_state() -> bool | None:
    """True: the index is there and valid; False: there but invalid; None: absent."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [INDEX])
        row = cursor.fetchone()
    return row[0] if row else None


def run_migration(on_connection) -> None:
    with on_connection.schema_editor(atomic=False) as editor:
        migration.create_index(apps, editor)


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)  # VACUUM cannot run in a transaction
def test_the_search_reads_the_trigram_index(admin_client):
    now = timezone.now()
    rows = [Job(task_path=f"tests.tasks.t{i % 7}", status=JobStatus.SUCCESSFUL, run_after=now, enqueued_at=now,
                finished_at=now - timedelta(minutes=i % 600)) for i in range(30000)]
    rows += [Job(task_path="tests.tasks.charge", status=JobStatus.FAILED, run_after=now, enqueued_at=now,
                 finished_at=now, errors=[error(1, f"card declined for order-{i}"), error(2, "timed out")])
             for i in range(600)]
    Job.objects.bulk_create(rows, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE jobs_job")
    assert index_state() is True
    for term in ("order-417", "timed out", "no such text"):
        with CaptureQueriesContext(connection) as ctx:
            response = admin_client.get(LIST, {"q": term})
        assert response.status_code == 200
        searches = [q["sql"] for q in ctx.captured_queries if "UPPER(" in q["sql"] and "jobs_job" in q["sql"]]
        assert len(searches) == 2, searches  # the capped count and the page
        for sql in searches:
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN " + sql)
                plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Seq Scan on jobs_job" not in plan and INDEX in plan, plan
    assert found(admin_client, "order-417") == {rows[30417].pk}


@pytest.mark.postgres_only
def test_without_the_right_to_create_pg_trgm_the_migration_warns_and_goes_on(transactional_db, admin_client, caplog):
    (failed,) = make_jobs(1, JobStatus.FAILED, errors=[error(1, "timed out")])
    limited = connection.copy()
    limited.settings_dict["USER"] = "jobs_no_create"
    with connection.cursor() as cursor:
        cursor.execute("DROP EXTENSION pg_trgm CASCADE")  # and the index with it
        cursor.execute("CREATE ROLE jobs_no_create LOGIN")
    try:
        with caplog.at_level(logging.WARNING, logger="jobs"):
            run_migration(limited)  # no exception: the deploy goes on
        assert "could not create the pg_trgm extension" in caplog.text
        assert "permission denied" in caplog.text and "CREATE EXTENSION pg_trgm" in caplog.text
        assert index_state() is None
        assert found(admin_client, "TIMED out") == {failed.pk}  # the search works, reading every row
    finally:
        limited.close()
        with connection.cursor() as cursor:
            cursor.execute("DROP ROLE IF EXISTS jobs_no_create")
        run_migration(connection)  # as the superuser: the extension and the index again
    assert index_state() is True


@pytest.mark.postgres_only
def test_an_interrupted_concurrent_build_is_built_again(transactional_db):
    with connection.cursor() as cursor:  # what a CREATE INDEX CONCURRENTLY stopped half-way leaves
        cursor.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(%s)", [INDEX])
    assert index_state() is False
    run_migration(connection)
    assert index_state() is True
    run_migration(connection)  # and again: nothing to do
    assert index_state() is True


@pytest.mark.sqlite_only
def test_on_sqlite_the_migration_adds_nothing(transactional_db):
    run_migration(connection)
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%%trgm%%'")
        assert cursor.fetchall() == []
