"""Failures by cause, the "Retrying" filter and its count: the jobs admin through Django's test client."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.admin import actions
from jobs.models import Job, JobStatus
from tests import tasks
from tests.test_admin import LIST, OVERVIEW, error, make_jobs, messages_of, staff

FAILURES = "/admin/jobs/job/failures/"
pytestmark = pytest.mark.django_db


def ids(client, query: str) -> set[int]:
    return {job.pk for job in client.get(LIST + query).context["cl"].result_list}


# -- Retrying -------------------------------------------------------------------------------

def retrying_backdrop():
    now = timezone.now()
    (waiting,) = make_jobs(1, JobStatus.READY, attempts=1, errors=[error(1)], run_after=now + timedelta(minutes=2))
    (due,) = make_jobs(1, JobStatus.READY, attempts=2, errors=[error(1), error(2)])
    make_jobs(2, JobStatus.READY)  # never tried
    make_jobs(1, JobStatus.READY, attempts=0, errors=[error(1)])  # requeued: starts again, not a retry
    make_jobs(1, JobStatus.FAILED)
    make_jobs(1, JobStatus.RUNNING)
    return {waiting.pk, due.pk}


def test_retrying_filter_lists_ready_jobs_after_a_failed_attempt(admin_client):
    retrying = retrying_backdrop()
    page = admin_client.get(LIST).content.decode()
    assert '?status__exact=RETRYING"' in page and ">Retrying</a>" in page
    assert ids(admin_client, "?status__exact=RETRYING") == retrying
    assert len(ids(admin_client, "?status__exact=READY")) == 5  # the statuses themselves are unchanged


def test_the_overview_counts_retrying_jobs_and_links_to_them(admin_client):
    retrying_backdrop()
    response = admin_client.get(OVERVIEW)
    assert response.context["overview"].retrying == 2
    page = response.content.decode()
    assert f'href="{LIST}?status__exact=RETRYING"><span class="jobs-stat-value" id="stat-retrying">2</span>' in page


# -- the exception class is kept with the job -----------------------------------------------

def test_a_failed_attempt_records_its_exception_class(run_worker):
    final = tasks.always_fails.enqueue()
    retried = tasks.fail_times.using(run_after=None).enqueue(5)
    run_worker()
    assert Job.objects.get(pk=final.id).error_class == "builtins.RuntimeError"
    job = Job.objects.get(pk=retried.id)
    assert job.error_class == "builtins.ValueError" and job.status in (JobStatus.READY, JobStatus.FAILED)


# -- the failures page ----------------------------------------------------------------------

def failures_backdrop():
    now = timezone.now()
    make_jobs(3, JobStatus.FAILED, task_path="shop.tasks.charge", error_class="httpx.ConnectTimeout",
              finished_at=now - timedelta(minutes=10),
              errors=[error(1, "timed out connecting to payments.example.com")])
    make_jobs(2, JobStatus.FAILED, task_path="shop.tasks.charge", error_class="httpx.ConnectTimeout",
              finished_at=now - timedelta(hours=5), errors=[error(1, "an older timeout")])
    make_jobs(1, JobStatus.FAILED, task_path="shop.tasks.charge", error_class="httpx.ConnectTimeout",
              finished_at=now - timedelta(days=3))
    make_jobs(4, JobStatus.FAILED, task_path="shop.tasks.charge", error_class="builtins.KeyError",
              finished_at=now - timedelta(days=10), errors=[error(1, "'region'")])
    make_jobs(2, JobStatus.FAILED, task_path="mail.tasks.send", error_class="smtplib.SMTPServerDisconnected",
              finished_at=now - timedelta(minutes=30), errors=[error(1, "Connection unexpectedly closed")])
    make_jobs(5, JobStatus.SUCCESSFUL, task_path="shop.tasks.charge")
    make_jobs(1, JobStatus.READY, task_path="shop.tasks.charge", error_class="httpx.ConnectTimeout", attempts=1)


def test_failures_are_grouped_by_task_and_exception_with_counts_per_window(admin_client):
    failures_backdrop()
    response = admin_client.get(FAILURES)
    assert response.status_code == 200
    groups = [(g.task_path, g.error_class, g.hour, g.day, g.week, g.total) for g in response.context["groups"]]
    assert groups == [
        ("shop.tasks.charge", "httpx.ConnectTimeout", 3, 5, 6, 6),
        ("mail.tasks.send", "smtplib.SMTPServerDisconnected", 2, 2, 2, 2),
        ("shop.tasks.charge", "builtins.KeyError", 0, 0, 0, 4),
    ]
    page = response.content.decode()
    # the newest message of each group
    assert "timed out connecting to payments.example.com" in page and "an older timeout" not in page
    assert "Connection unexpectedly closed" in page
    query = urlencode({"status__exact": "FAILED", "task": "shop.tasks.charge", "error_class": "httpx.ConnectTimeout"})
    assert f'href="{LIST}?{query.replace("&", "&amp;")}"' in page


def test_a_groups_link_lists_exactly_its_jobs(admin_client):
    failures_backdrop()
    query = urlencode({"status__exact": "FAILED", "task": "shop.tasks.charge", "error_class": "httpx.ConnectTimeout"})
    listed = ids(admin_client, "?" + query)
    expected = set(Job.objects.filter(status="FAILED", task_path="shop.tasks.charge",
                                      error_class="httpx.ConnectTimeout").values_list("pk", flat=True))
    assert listed == expected and len(expected) == 6
    assert "httpx.ConnectTimeout" in admin_client.get(LIST + "?" + query).content.decode()  # the filter shows


def test_failures_page_costs_the_same_queries_whatever_the_number_of_jobs(admin_client):
    failures_backdrop()
    with CaptureQueriesContext(connection) as few:
        admin_client.get(FAILURES)
    for n in range(20):
        make_jobs(3, JobStatus.FAILED, task_path=f"more.tasks.t{n}", error_class="builtins.ValueError")
    with CaptureQueriesContext(connection) as many:
        admin_client.get(FAILURES)
    assert len(many.captured_queries) == len(few.captured_queries)


def test_failures_page_needs_the_view_permission():
    assert staff("nobody").get(FAILURES).status_code == 403
    assert staff("viewer", "view_job").get(FAILURES).status_code == 200


def test_requeue_with_select_all_requeues_the_whole_group_in_batches_each_job_in_history_once(admin_client,
                                                                                               monkeypatch):
    failures_backdrop()
    make_jobs(7, JobStatus.FAILED, task_path="shop.tasks.charge", error_class="httpx.ConnectTimeout")
    group = set(Job.objects.filter(status="FAILED", task_path="shop.tasks.charge",
                                   error_class="httpx.ConnectTimeout").values_list("pk", flat=True))
    others = set(Job.objects.filter(status="FAILED").values_list("pk", flat=True)) - group
    monkeypatch.setattr(actions, "REQUEUE_BATCH", 4)
    query = urlencode({"status__exact": "FAILED", "task": "shop.tasks.charge", "error_class": "httpx.ConnectTimeout"})
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.post(f"{LIST}?{query}", {
            "action": "requeue_jobs", "select_across": "1", "index": "0",
            "_selected_action": [str(pk) for pk in sorted(group)[:2]]}, follow=True)
    assert "Requeued 13 jobs (due now, attempts start again)." in messages_of(response)
    assert set(Job.objects.filter(status="READY", attempts=0, pk__in=group).values_list("pk", flat=True)) == group
    assert set(Job.objects.filter(status="FAILED").values_list("pk", flat=True)) == others
    sql = [q["sql"] for q in queries.captured_queries]
    updates = [q for q in sql if q.startswith("UPDATE") and "jobs_job" in q]
    assert len(updates) == 4  # 13 jobs, 4 at a time, each batch its own transaction
    assert sum(q.startswith("SAVEPOINT") or q.startswith("BEGIN") for q in sql) >= 4
    entries = sorted(int(pk) for pk in LogEntry.objects.values_list("object_id", flat=True))
    assert entries == sorted(group)  # one entry of history per job requeued


def test_requeue_of_ticked_jobs_still_records_each_job(admin_client):
    (first, second) = make_jobs(2, JobStatus.FAILED)
    response = admin_client.post(LIST, {"action": "requeue_jobs", "index": "0",
                                        "_selected_action": [str(first.pk), str(second.pk)]}, follow=True)
    assert "Requeued 2 jobs (due now, attempts start again)." in messages_of(response)
    assert sorted(LogEntry.objects.values_list("object_id", flat=True)) == sorted([str(first.pk), str(second.pk)])


def test_the_job_list_and_the_overview_link_to_the_failures_page(admin_client):
    assert f'href="{FAILURES}"' in admin_client.get(LIST).content.decode()
    assert f'href="{FAILURES}"' in admin_client.get(OVERVIEW).content.decode()
