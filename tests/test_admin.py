"""The jobs admin through Django's test client: permissions, actions, query counts, pages.

Browser tests are in test_admin_browser.py; the timings with a million rows are measured
by scripts/admin_timing.py, not here.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection, models
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs.admin.changelist import EstimatedCountPaginator
from jobs.counts import distinct_values
from jobs.models import Job, JobStatus, QueueState, WorkerProcess
from jobs.sql import claim
from tests import tasks

LIST = "/admin/jobs/job/"
OVERVIEW = "/admin/jobs/queuestate/"
PAUSE = "/admin/jobs/queuestate/pause/"

TRACEBACK = ('Traceback (most recent call last):\n  File "/app/shop.py", line 3, in charge\n'
             '    raise ValueError(msg)\nValueError: card <b>declined</b>\n')


def error(attempt: int, message: str = "card <b>declined</b>", at=None) -> dict:
    return {"attempt": attempt, "exception_class_path": "builtins.ValueError", "message": message,
            "traceback": TRACEBACK, "worker_id": "host:1:aaaa", "at": (at or timezone.now()).isoformat()}


def make_jobs(n: int, status: str = JobStatus.SUCCESSFUL, **fields) -> list[Job]:
    now = timezone.now()
    defaults = dict(task_path="tests.tasks.add", queue_name="default", run_after=now, enqueued_at=now, args=[1, 2],
                    status=status)
    if status in (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELLED):
        defaults.update(finished_at=now, attempts=1, started_at=now, last_attempted_at=now)
    if status == JobStatus.FAILED:
        defaults.update(attempts=3, errors=[error(1), error(2), error(3)], worker_ids=["host:1:aaaa"] * 3)
    if status == JobStatus.RUNNING:
        defaults.update(attempts=1, worker_id="host:1:aaaa", heartbeat_at=now, started_at=now, last_attempted_at=now)
    defaults.update(fields)
    return Job.objects.bulk_create([Job(**defaults) for _ in range(n)])


def staff(username: str, *perms: str, is_staff: bool = True) -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=is_staff)
    user.user_permissions.set([Permission.objects.get(codename=p, content_type__app_label="jobs") for p in perms])
    client = Client()
    client.force_login(user)
    return client


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def post_action(client, action: str, ids=(), url: str = LIST, **extra):
    data = {"action": action, "_selected_action": [str(i) for i in ids], "index": "0", **extra}
    return client.post(url, data, follow=True)


def writes(queries) -> list[str]:
    """Writes to the jobs' tables (the one INSERT of admin history is counted in test_conformance.py)."""
    return [q["sql"] for q in queries if q["sql"].split(None, 1)[0].upper() in ("UPDATE", "DELETE", "INSERT")
            and "django_admin_log" not in q["sql"].split("(", 1)[0]]


# -- permissions ------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("url", [LIST, OVERVIEW, "/admin/jobs/job/1/change/"])
def test_anonymous_users_are_sent_to_the_login_page(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/admin/jobs/job/1/requeue/", PAUSE])
def test_anonymous_posts_change_nothing(client, url):
    (job,) = make_jobs(1, JobStatus.FAILED)
    response = client.post(url.replace("/1/", f"/{job.pk}/"), {"name": "default", "paused": "1"})
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert Job.objects.get().status == JobStatus.FAILED and not QueueState.objects.exists()


@pytest.mark.django_db
def test_non_staff_users_with_permissions_are_sent_to_the_login_page():
    client = staff("mallory", "view_job", "change_job", is_staff=False)
    assert client.get(LIST)["Location"].startswith("/admin/login/")


@pytest.mark.django_db
def test_staff_without_permissions_see_nothing():
    (job,) = make_jobs(1, JobStatus.FAILED)
    client = staff("nobody")
    assert client.get(LIST).status_code == 403
    assert client.get(OVERVIEW).status_code == 403
    assert client.get(f"/admin/jobs/job/{job.pk}/change/").status_code == 403
    assert client.post(f"/admin/jobs/job/{job.pk}/requeue/").status_code == 403
    assert client.post(PAUSE, {"name": "default", "paused": "1"}).status_code == 403
    assert "Jobs" not in client.get("/admin/").content.decode()


@pytest.mark.django_db
def test_view_permission_reads_but_cannot_act():
    (failed,) = make_jobs(1, JobStatus.FAILED)
    client = staff("viewer", "view_job")
    page = client.get(LIST)
    assert page.status_code == 200 and 'name="_selected_action"' not in page.content.decode()
    detail = client.get(f"/admin/jobs/job/{failed.pk}/change/").content.decode()
    assert "card &lt;b&gt;declined&lt;/b&gt;" in detail and "/requeue/" not in detail
    assert client.post(f"/admin/jobs/job/{failed.pk}/requeue/").status_code == 403
    response = post_action(client, "requeue_jobs", [failed.pk])
    assert Job.objects.get().status == JobStatus.FAILED
    assert response.status_code == 200  # the admin refuses an action the user does not have
    overview = client.get(OVERVIEW)
    assert overview.status_code == 200 and PAUSE not in overview.content.decode()
    assert client.post(PAUSE, {"name": "default", "paused": "1"}).status_code == 403
    assert not QueueState.objects.exists()


@pytest.mark.django_db
def test_change_permission_acts_but_delete_needs_its_own():
    (failed,) = make_jobs(1, JobStatus.FAILED)
    client = staff("operator", "view_job", "change_job")
    page = client.get(LIST).content.decode()
    assert 'value="requeue_jobs"' in page and 'value="cancel_jobs"' in page and 'value="run_jobs_now"' in page
    assert 'value="delete_selected"' not in page
    post_action(client, "delete_selected", [failed.pk], post="yes")
    assert Job.objects.filter(pk=failed.pk).exists()
    post_action(client, "requeue_jobs", [failed.pk])
    assert Job.objects.get().status == JobStatus.READY


@pytest.mark.django_db
def test_jobs_cannot_be_added_or_edited_through_a_form(admin_client):
    (job,) = make_jobs(1, JobStatus.FAILED)
    assert admin_client.get("/admin/jobs/job/add/").status_code == 403
    response = admin_client.post(f"/admin/jobs/job/{job.pk}/change/", {"status": "SUCCESSFUL"})
    assert response.status_code == 405 and Job.objects.get().status == JobStatus.FAILED


@pytest.mark.django_db
@pytest.mark.parametrize("target", ["action", "button", "pause"])
def test_every_write_needs_the_csrf_token(admin_user, target):
    (job,) = make_jobs(1, JobStatus.FAILED)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    if target == "action":
        response = client.post(LIST, {"action": "requeue_jobs", "_selected_action": [job.pk], "index": "0"})
    elif target == "button":
        response = client.post(f"/admin/jobs/job/{job.pk}/requeue/")
    else:
        response = client.post(PAUSE, {"name": "default", "paused": "1"})
    assert response.status_code == 403
    assert Job.objects.get().status == JobStatus.FAILED and not QueueState.objects.exists()


@pytest.mark.django_db
def test_the_admin_index_links_the_overview(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert f'href="{OVERVIEW}"' in page and ">Queues<" in page


# -- the list: counts, filters, search, query counts -------------------------------------

def list_queries(client, url: str = LIST) -> list[dict]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return ctx.captured_queries


@pytest.mark.django_db
@pytest.mark.parametrize("url", [LIST, LIST + "?status__exact=FAILED", LIST + "?queue=emails&task=tests.tasks.add",
                                 LIST + "?q=declined", LIST + "?enqueued_at__gte=2020-01-01T00:00:00%2B00:00"])
def test_the_list_costs_the_same_queries_for_5_rows_as_for_50(admin_client, django_assert_num_queries, url):
    make_jobs(2, JobStatus.FAILED, queue_name="emails")
    make_jobs(3, JobStatus.READY)
    few = len(list_queries(admin_client, url))
    make_jobs(20, JobStatus.FAILED, queue_name="emails", task_path="tests.tasks.always_fails")
    make_jobs(20, JobStatus.SUCCESSFUL, queue_name="reports", task_path="tests.tasks.noop")
    make_jobs(5, JobStatus.RUNNING)
    # session, user, paused queues, the queue, task and limit key choices, the (capped) count, the
    # page; a text search also reads the task paths it matches (jobs/search.py)
    with django_assert_num_queries(few):
        response = admin_client.get(url)
    assert few <= (9 if "q=" in url else 8)
    assert response.status_code == 200


@pytest.mark.django_db
def test_no_count_over_the_whole_table(admin_client):
    make_jobs(30)
    counts = [q["sql"] for q in list_queries(admin_client) if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() or connection.vendor != "postgresql" for sql in counts), counts
    assert len(counts) == 1  # the filtered count only: show_full_result_count is off


@pytest.mark.postgres_only
@pytest.mark.django_db
def test_big_results_show_an_estimate_on_postgresql(admin_client, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "exact_up_to", 20)
    make_jobs(60, JobStatus.FAILED)
    make_jobs(5)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")
    queries = list_queries(admin_client, LIST + "?status__exact=FAILED")
    page = admin_client.get(LIST + "?status__exact=FAILED").content.decode()
    assert re.search(r"about \d+ jobs", page), page
    assert "Select all about" in page
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1 and "LIMIT 21" in counts[0]
    assert any(q["sql"].startswith("EXPLAIN") for q in queries)
    unfiltered = list_queries(admin_client)
    assert any("reltuples" in q["sql"] for q in unfiltered)
    # small results stay exact
    page = admin_client.get(LIST + "?status__exact=SUCCESSFUL").content.decode()
    assert "5 jobs" in page and "about 5" not in page


@pytest.mark.django_db
def test_status_filter_labels_are_the_status_names(admin_client):
    page = admin_client.get(LIST).content.decode()
    for label in ("Ready", "Running", "Successful", "Failed", "Cancelled"):
        assert f'?status__exact={label.upper()}"' in page and f">{label}</a>" in page


@pytest.mark.django_db
def test_filters(admin_client):
    (failed_email,) = make_jobs(1, JobStatus.FAILED, queue_name="emails", task_path="tests.tasks.always_fails")
    (ok_report,) = make_jobs(1, JobStatus.SUCCESSFUL, queue_name="reports", task_path="tests.tasks.noop")
    (old,) = make_jobs(1, enqueued_at=timezone.now() - timedelta(days=400))

    def ids(query: str) -> set[int]:
        return {job.pk for job in admin_client.get(LIST + query).context["cl"].result_list}

    assert ids("?status__exact=FAILED") == {failed_email.pk}
    assert ids("?queue=reports") == {ok_report.pk}
    assert ids("?task=tests.tasks.always_fails") == {failed_email.pk}
    page = admin_client.get(LIST).content.decode()
    this_year = re.search(r'<a href="(\?enqueued_at__gte=[^"]+)">This year</a>', page).group(1).replace("&amp;", "&")
    assert ids(this_year) == {failed_email.pk, ok_report.pk}
    page = admin_client.get(LIST).content.decode()
    assert "?queue=emails" in page and "?task=tests.tasks.noop" in page and "?queue=other" in page  # configured


@pytest.mark.django_db
def test_filter_choices_by_loose_index_scan():
    make_jobs(3, task_path="b.task")
    make_jobs(2, task_path="a.task", queue_name="emails")
    make_jobs(1, task_path="c.task", queue_name="reports")
    assert distinct_values("task_path") == ["a.task", "b.task", "c.task"]
    assert distinct_values("queue_name") == ["default", "emails", "reports"]
    assert distinct_values("task_path", limit=2) == ["a.task", "b.task"]
    Job.objects.all().delete()
    assert distinct_values("task_path") == []


@pytest.mark.django_db
def test_search_by_id_task_and_error_text(admin_client):
    (failed,) = make_jobs(1, JobStatus.FAILED, task_path="shop.tasks.charge")
    (other,) = make_jobs(1, task_path="mail.tasks.send")

    def ids(term: str) -> set[int]:
        return {job.pk for job in admin_client.get(LIST, {"q": term}).context["cl"].result_list}

    assert ids(f"#{other.pk}") == {other.pk} and ids(str(failed.pk)) == {failed.pk}
    assert ids("mail.tasks") == {other.pk}
    assert ids("declined") == {failed.pk}  # the message
    assert ids("shop.py") == {failed.pk}  # the traceback
    assert ids("nothing like this") == set()


@pytest.mark.django_db
def test_newest_first_with_a_badge_attempts_and_last_error(admin_client):
    make_jobs(1, JobStatus.SUCCESSFUL)
    (failed,) = make_jobs(1, JobStatus.FAILED)
    make_jobs(1, JobStatus.READY, run_after=timezone.now() + timedelta(minutes=5))
    response = admin_client.get(LIST)
    pks = [job.pk for job in response.context["cl"].result_list]
    assert pks == sorted(pks, reverse=True)
    page = response.content.decode()
    assert '<span class="jobs-badge jobs-badge--failed">Failed</span>' in page
    assert '<span class="jobs-badge jobs-badge--successful">Successful</span>' in page
    assert "3<span class=\"jobs-of\"> / 3</span>" in page
    assert "card &lt;b&gt;declined&lt;/b&gt;" in page  # the last error, escaped
    assert re.search(r"in \d+m", page)  # READY, due later


# -- actions: one statement each -------------------------------------------------------

@pytest.mark.django_db
def test_requeue_action(admin_client):
    failed = make_jobs(2, JobStatus.FAILED)
    finished = make_jobs(1, JobStatus.SUCCESSFUL, return_value=5)
    cancelled = make_jobs(1, JobStatus.CANCELLED)
    running = make_jobs(1, JobStatus.RUNNING)
    ready = make_jobs(1, JobStatus.READY)
    ids = [j.pk for j in failed + finished + cancelled + running + ready]
    with CaptureQueriesContext(connection) as ctx:
        response = post_action(admin_client, "requeue_jobs", ids)
    assert len(writes(ctx.captured_queries)) == 1
    notes = messages_of(response)
    assert notes[0] == "Requeued 4 jobs (due now, attempts start again)."
    assert "2 jobs of the selection were left as they were" in notes[1]
    assert "a running job belongs to its worker" in notes[1]
    for job in Job.objects.filter(pk__in=[j.pk for j in failed + finished + cancelled]):
        assert job.status == JobStatus.READY and job.attempts == 0 and job.finished_at is None
        assert job.return_value is None and job.run_after <= timezone.now()
        assert job.meta["requeued"]["by"] == "admin"
    assert len(Job.objects.get(pk=failed[0].pk).errors) == 3  # history kept
    assert Job.objects.get(pk=running[0].pk).status == JobStatus.RUNNING
    assert Job.objects.get(pk=running[0].pk).attempts == 1


@pytest.mark.django_db
def test_select_all_matching_across_pages_is_still_one_statement(admin_client):
    failed = make_jobs(120, JobStatus.FAILED, task_path="tests.tasks.always_fails")
    make_jobs(10, JobStatus.FAILED, task_path="tests.tasks.noop")
    make_jobs(10, JobStatus.SUCCESSFUL, task_path="tests.tasks.always_fails")
    url = LIST + "?status__exact=FAILED&task=tests.tasks.always_fails"
    page = admin_client.get(url).content.decode()
    assert "Select all 120 jobs" in page
    on_page = [j.pk for j in failed][-50:]  # what the browser sends: the checked rows of page 1
    with CaptureQueriesContext(connection) as ctx:
        response = post_action(admin_client, "requeue_jobs", on_page, url=url, select_across="1")
    assert len(writes(ctx.captured_queries)) == 1
    assert messages_of(response) == ["Requeued 120 jobs (due now, attempts start again)."]
    assert Job.objects.filter(status=JobStatus.READY).count() == 120
    assert Job.objects.filter(status=JobStatus.FAILED, task_path="tests.tasks.noop").count() == 10
    assert Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 10


@pytest.mark.django_db(transaction=True)
def test_cancel_action_with_a_reason_and_cancelled_jobs_never_run(admin_client, run_worker, record_dir):
    path = str(record_dir / "runs.txt")
    results = [tasks.record.enqueue(path, f"job{i}") for i in range(3)]
    (running,) = make_jobs(1, JobStatus.RUNNING)
    (done,) = make_jobs(1, JobStatus.SUCCESSFUL)
    ids = [int(r.id) for r in results] + [running.pk, done.pk]
    with CaptureQueriesContext(connection) as ctx:
        response = post_action(admin_client, "cancel_jobs", ids, reason="customer asked")
    assert len(writes(ctx.captured_queries)) == 2  # one UPDATE of the READY jobs, one of the RUNNING ones
    notes = messages_of(response)
    assert notes[0] == "Cancelled 4 jobs: the ready ones will not run, and the workers of 1 job running were asked " \
                       "to stop them."
    assert "only ready and running jobs can be cancelled" in notes[1]  # the finished one was left
    asked = Job.objects.get(pk=running.pk)
    assert asked.status == JobStatus.RUNNING and asked.cancel_requested_at is not None  # its worker ends it
    assert asked.meta["cancelled"]["reason"] == "customer asked"
    run_worker()
    assert not (record_dir / "runs.txt").exists()
    for result in results:
        job = Job.objects.get(pk=int(result.id))
        assert job.status == JobStatus.CANCELLED and job.attempts == 0
        assert job.meta["cancelled"]["reason"] == "customer asked" and job.meta["cancelled"]["by"] == "admin"
        assert tasks.record.get_result(result.id).status == "FAILED"  # Django's view of a cancelled job
    assert Job.objects.get(pk=running.pk).status == JobStatus.RUNNING
    page = admin_client.get(f"/admin/jobs/job/{ids[0]}/change/").content.decode()
    assert "Cancelled" in page and "customer asked" in page


@pytest.mark.django_db
def test_cancel_without_a_reason_says_where_it_came_from(admin_client):
    (job,) = make_jobs(1, JobStatus.READY)
    post_action(admin_client, "cancel_jobs", [job.pk])
    assert Job.objects.get().meta["cancelled"]["reason"] == "cancelled from the admin"


@pytest.mark.django_db
def test_run_now_action(admin_client):
    later = make_jobs(2, JobStatus.READY, run_after=timezone.now() + timedelta(hours=2))
    (due,) = make_jobs(1, JobStatus.READY)
    (failed,) = make_jobs(1, JobStatus.FAILED)
    due_at = Job.objects.get(pk=due.pk).run_after
    with CaptureQueriesContext(connection) as ctx:
        response = post_action(admin_client, "run_jobs_now", [j.pk for j in later] + [due.pk, failed.pk])
    assert len(writes(ctx.captured_queries)) == 1
    assert messages_of(response)[0] == "Made 2 jobs due now."
    assert all(job.run_after <= timezone.now() for job in Job.objects.filter(pk__in=[j.pk for j in later]))
    assert Job.objects.get(pk=due.pk).run_after == due_at
    assert Job.objects.get(pk=failed.pk).status == JobStatus.FAILED


@pytest.mark.django_db
def test_delete_action_confirms_then_deletes_in_one_statement(admin_client):
    finished = make_jobs(60, JobStatus.SUCCESSFUL)
    (running,) = make_jobs(1, JobStatus.RUNNING)
    url = LIST + "?status__exact=SUCCESSFUL"
    confirm = post_action(admin_client, "delete_selected", [finished[-1].pk], url=url, select_across="1")
    page = confirm.content.decode()
    assert "Delete <strong>60</strong> selected jobs?" in page and 'name="post" value="yes"' in page
    assert Job.objects.count() == 61
    with CaptureQueriesContext(connection) as ctx:
        response = post_action(admin_client, "delete_selected", [finished[-1].pk], url=url, select_across="1",
                               post="yes")
    statements = writes(ctx.captured_queries)
    deletes = [sql for sql in statements if sql.startswith("DELETE")]
    table = connection.ops.quote_name("jobs_job")
    assert [sql for sql in deletes if sql.startswith(f"DELETE FROM {table} ")] == deletes[-1:]  # one, of jobs
    # plus one statement per relation pointing at jobs with CASCADE or SET_NULL (the dependencies'
    # parent and child), each over a subquery of the jobs: no row is read into Python
    relations = [r for r in Job._meta.related_objects
                 if (r.one_to_many or r.one_to_one) and r.on_delete is not models.DO_NOTHING]
    assert len(statements) == 1 + len(relations)
    assert messages_of(response)[0] == "Deleted 60 jobs."
    assert list(Job.objects.values_list("pk", flat=True)) == [running.pk]


@pytest.mark.django_db
def test_running_jobs_are_not_deleted(admin_client):
    (running,) = make_jobs(1, JobStatus.RUNNING)
    (failed,) = make_jobs(1, JobStatus.FAILED)
    response = post_action(admin_client, "delete_selected", [running.pk], post="yes")
    assert Job.objects.filter(pk=running.pk).exists()
    assert "running jobs are not deleted" in messages_of(response)[1]
    assert admin_client.post(f"/admin/jobs/job/{running.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Job.objects.filter(pk=running.pk).exists()
    admin_client.post(f"/admin/jobs/job/{failed.pk}/delete/", {"post": "yes"})
    assert not Job.objects.filter(pk=failed.pk).exists()


# -- the job page ----------------------------------------------------------------------

@pytest.mark.django_db
def test_job_page_shows_everything_readably(admin_client, django_assert_max_num_queries):
    now = timezone.now()
    (job,) = make_jobs(1, JobStatus.FAILED, args=["<script>alert(1)</script>", 2], kwargs={"retries": 3},
                       errors=[error(1, "first <try>", now - timedelta(seconds=20)), error(2, "second", now)],
                       worker_id="", worker_ids=["host:1:aaaa", "host:2:bbbb"])
    with django_assert_max_num_queries(4):
        response = admin_client.get(f"/admin/jobs/job/{job.pk}/change/")
    page = response.content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'add(&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;, 2, retries=3)' in page
    assert "first &lt;try&gt;" in page and "second" in page
    assert page.index("Attempt 2</strong>") < page.index("Attempt 1</strong>")  # newest first
    assert '<span class="jobs-tb-file">  File &quot;/app/shop.py&quot;, line 3, in charge</span>' in page
    assert '<span class="jobs-tb-exc">ValueError: card &lt;b&gt;declined&lt;/b&gt;</span>' in page
    assert "host:2:bbbb" in page and "Failed for good" in page and "Enqueued from code" in page
    assert f'action="/admin/jobs/job/{job.pk}/requeue/"' in page


@pytest.mark.django_db
def test_job_page_of_a_successful_job_shows_the_return_value(admin_client):
    (job,) = make_jobs(1, JobStatus.SUCCESSFUL, return_value={"rows": 42}, worker_id="host:1:aaaa",
                       worker_ids=["host:1:aaaa"])
    WorkerProcess.objects.create(worker_id="host:1:aaaa", hostname="host", pid=1, started_at=timezone.now(),
                                 heartbeat_at=timezone.now())
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert '&quot;rows&quot;: 42' in page and "Succeeded" in page and ">alive<" in page
    assert "No attempt has failed." in page


@pytest.mark.django_db
@pytest.mark.parametrize("meta,words", [
    ({"schedule": "nightly-report", "fire_time": "2026-01-02T03:00:00+00:00", "schedule_run": 7},
     ["Schedule", "nightly-report", "?q=nightly-report", "/admin/scheduler/schedulerun/7/change/"]),
    ({"verbose_name": "Old report", "creator": {"content_type": "auth.user", "object_id": 3, "repr": "alice"}},
     ["django-background-tasks", "Old report", "(creator alice)"]),
    ({"imported_from": "cron"}, ["Enqueued from code", "imported_from"]),
])
def test_job_page_says_where_the_job_came_from(admin_client, meta, words):
    (job,) = make_jobs(1, JobStatus.READY, meta=meta)
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    for word in words:
        assert word in page


@pytest.mark.django_db
def test_job_page_buttons(admin_client):
    (failed,) = make_jobs(1, JobStatus.FAILED)
    (running,) = make_jobs(1, JobStatus.RUNNING)
    (later,) = make_jobs(1, JobStatus.READY, run_after=timezone.now() + timedelta(hours=1))

    response = admin_client.post(f"/admin/jobs/job/{failed.pk}/requeue/", follow=True)
    assert messages_of(response) == [f"Job #{failed.pk} requeued: due now, attempts start again; its earlier "
                                     "errors stay below."]
    assert Job.objects.get(pk=failed.pk).status == JobStatus.READY

    page = admin_client.get(f"/admin/jobs/job/{running.pk}/change/").content.decode()
    assert "/requeue/" not in page and "cannot be requeued or deleted from here" in page
    assert f"/admin/jobs/job/{running.pk}/cancel/" in page
    response = admin_client.post(f"/admin/jobs/job/{running.pk}/requeue/", follow=True)
    assert "was not requeued: it is running" in messages_of(response)[0]
    response = admin_client.post(f"/admin/jobs/job/{running.pk}/cancel/", follow=True)
    assert "its worker was asked to stop it" in messages_of(response)[0]
    asked = Job.objects.get(pk=running.pk)
    assert asked.status == JobStatus.RUNNING and asked.cancel_requested_at is not None
    page = admin_client.get(f"/admin/jobs/job/{running.pk}/change/").content.decode()
    assert "Cancelling:" in page and f"/admin/jobs/job/{running.pk}/cancel/" not in page

    page = admin_client.get(f"/admin/jobs/job/{later.pk}/change/").content.decode()
    assert f"/admin/jobs/job/{later.pk}/run-now/" in page
    admin_client.post(f"/admin/jobs/job/{later.pk}/run-now/")
    assert Job.objects.get(pk=later.pk).run_after <= timezone.now()
    admin_client.post(f"/admin/jobs/job/{later.pk}/cancel/", {"reason": "not needed"})
    assert Job.objects.get(pk=later.pk).meta["cancelled"]["reason"] == "not needed"
    assert admin_client.get(f"/admin/jobs/job/{later.pk}/requeue/").status_code == 405


@pytest.mark.django_db
def test_a_missing_job_redirects_with_a_message(admin_client):
    response = admin_client.get("/admin/jobs/job/999999/change/", follow=True)
    assert response.redirect_chain and "doesn’t exist" in messages_of(response)[0]


# -- requeue runs the job again, as the same job -------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_requeued_job_runs_again_with_its_history(admin_client, run_worker):
    result = tasks.always_fails_five.enqueue()
    Job.objects.filter(pk=int(result.id)).update(max_attempts=1)
    run_worker()
    assert Job.objects.get().status == JobStatus.FAILED
    admin_client.post(f"/admin/jobs/job/{result.id}/requeue/")
    run_worker()
    job = Job.objects.get()
    assert job.pk == int(result.id) and job.status == JobStatus.FAILED and job.attempts == 1
    assert [e["attempt"] for e in job.errors] == [1, 1]
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "before the requeue" in page and "Requeued" in page


# -- the overview ------------------------------------------------------------------------

@pytest.mark.django_db
def test_overview(admin_client, django_assert_max_num_queries):
    now = timezone.now()
    make_jobs(3, JobStatus.READY, queue_name="emails", run_after=now - timedelta(minutes=5))
    make_jobs(2, JobStatus.READY, queue_name="emails", run_after=now + timedelta(minutes=5))
    make_jobs(1, JobStatus.RUNNING, queue_name="emails")
    make_jobs(4, JobStatus.SUCCESSFUL, queue_name="reports", finished_at=now - timedelta(minutes=3))
    make_jobs(2, JobStatus.FAILED, queue_name="reports", task_path="tests.tasks.always_fails",
              finished_at=now - timedelta(minutes=3))
    make_jobs(1, JobStatus.FAILED, task_path="tests.tasks.noop", finished_at=now - timedelta(hours=30))
    WorkerProcess.objects.create(worker_id="alive:1:a", hostname="alive", pid=1, started_at=now, heartbeat_at=now)
    WorkerProcess.objects.create(worker_id="gone:2:b", hostname="gone", pid=2, started_at=now,
                                 heartbeat_at=now - timedelta(minutes=5))
    with django_assert_max_num_queries(16):
        response = admin_client.get(OVERVIEW)
    data = response.context["overview"]
    emails = next(q for q in data.queues if q.name == "emails")
    assert (emails.due, emails.scheduled, emails.count("RUNNING")) == (3, 2, 1)
    assert timedelta(minutes=4, seconds=50) < emails.lag < timedelta(minutes=6)
    reports = next(q for q in data.queues if q.name == "reports")
    assert (reports.count("SUCCESSFUL"), reports.count("FAILED"), reports.lag) == (4, 2, None)
    assert [q.name for q in data.queues] == ["default", "emails", "other", "reports"]  # configured ones too
    assert sum(ok for _, ok, _ in data.minutes) == 4 and sum(bad for _, _, bad in data.minutes) == 2
    assert len(data.minutes) == 60
    assert data.failing == [{"task_path": "tests.tasks.always_fails", "failures": 2,
                             "last_failure": data.failing[0]["last_failure"]}]
    assert [w["worker"].hostname for w in data.workers] == ["alive"]
    page = response.content.decode()
    assert page.count('<rect class="ok"') == 1 and page.count('<rect class="bad"') == 1
    assert "<svg" in page and "<script" not in page.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert "tests.tasks.always_fails" in page and "alive:1" in page
    # The worker that stopped heartbeating is not alive: it is listed as lost (for a day), not among the live ones.
    live, lost = page.split('id="workers-lost"', 1)
    assert "gone:2" not in live and "gone:2" in lost
    assert f'href="{LIST}?queue=reports&amp;status__exact=FAILED"' in page


@pytest.mark.postgres_only
@pytest.mark.django_db
def test_overview_counts_big_numbers_up_to_a_cap_then_estimates(admin_client, monkeypatch):
    monkeypatch.setattr("jobs.stats.EXACT_UP_TO", 20)
    make_jobs(60, JobStatus.SUCCESSFUL, queue_name="reports")
    make_jobs(5, JobStatus.FAILED, queue_name="reports")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")
    response = admin_client.get(OVERVIEW)
    reports = next(q for q in response.context["overview"].queues if q.name == "reports")
    assert reports.estimated == {"SUCCESSFUL"} and reports.count("SUCCESSFUL") >= 21
    assert reports.count("FAILED") == 5
    assert "≈" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("value,refresh", [("10", "10"), ("2", "2"), ("1", ""), ("301", ""), ("²", ""), ("x", "")])
def test_overview_refreshes_only_every_2_to_300_seconds(admin_client, value, refresh):
    response = admin_client.get(OVERVIEW, {"refresh": value})  # "²" is a digit to str.isdigit(), not to int()
    assert response.status_code == 200 and response.context["refresh"] == refresh
    assert ('http-equiv="refresh"' in response.content.decode()) == bool(refresh)


@pytest.mark.django_db
def test_overview_queries_do_not_grow_with_rows(admin_client, django_assert_num_queries):
    make_jobs(2)
    with CaptureQueriesContext(connection) as ctx:
        admin_client.get(OVERVIEW)
    make_jobs(40, JobStatus.FAILED, queue_name="emails")
    make_jobs(40, JobStatus.READY, queue_name="reports")
    with django_assert_num_queries(len(ctx.captured_queries)):
        admin_client.get(OVERVIEW)


# -- pause and resume ----------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_paused_queue_is_not_claimed_until_resumed(admin_client, run_worker):
    emails = [tasks.add.using(queue_name="emails").enqueue(i, i) for i in range(3)]
    other = tasks.add.enqueue(1, 1)
    response = admin_client.post(PAUSE, {"name": "emails", "paused": "1"}, follow=True)
    assert "Queue emails paused" in messages_of(response)[0]
    state = QueueState.objects.get(name="emails")
    assert state.paused and state.changed_by == "admin"
    assert "emails</strong> is paused" in admin_client.get(LIST).content.decode()
    assert [j.pk for j in claim(worker_id="w", limit=10, now=timezone.now())] == [int(other.id)]
    assert claim(worker_id="w", limit=10, now=timezone.now(), queues=["emails"]) == []
    run_worker()  # a fresh worker (a restart) does not claim them either
    assert all(Job.objects.get(pk=int(r.id)).status == JobStatus.READY for r in emails)

    admin_client.post(PAUSE, {"name": "emails", "paused": "0"})
    assert not QueueState.objects.get(name="emails").paused
    run_worker()
    assert all(tasks.add.get_result(r.id).return_value == 2 * i for i, r in enumerate(emails))


@pytest.mark.django_db(transaction=True)
def test_pause_without_returning_applies_to_select_then_update_too():
    from jobs.sql.generic import GenericStatements

    tasks.add.using(queue_name="emails").enqueue(1, 1)
    ready = tasks.add.enqueue(2, 2)
    QueueState.objects.create(name="emails", paused=True)
    claimed = GenericStatements(connection).claim(worker_id="w", limit=5, now=timezone.now(), queues=None,
                                                  backend="default")
    assert [j.pk for j in claimed] == [int(ready.id)]


@pytest.mark.django_db(transaction=True)
def test_a_running_worker_stops_claiming_at_its_next_poll(admin_client, workers):
    from tests.conftest import wait_for

    proc = workers.start("--sleep", "0.05")
    first = tasks.add.enqueue(1, 1)
    wait_for(lambda: Job.objects.get(pk=int(first.id)).status == JobStatus.SUCCESSFUL, message="the worker runs")
    admin_client.post(PAUSE, {"name": "emails", "paused": "1"})
    paused = tasks.add.using(queue_name="emails").enqueue(2, 2)
    marker = tasks.add.enqueue(3, 3)  # enqueued after: done means the worker polled after the pause
    wait_for(lambda: Job.objects.get(pk=int(marker.id)).status == JobStatus.SUCCESSFUL, message="a later poll")
    assert Job.objects.get(pk=int(paused.id)).status == JobStatus.READY
    admin_client.post(PAUSE, {"name": "emails", "paused": "0"})
    wait_for(lambda: Job.objects.get(pk=int(paused.id)).status == JobStatus.SUCCESSFUL, message="resumed")
    assert proc.poll() is None


@pytest.mark.django_db
def test_overview_pause_buttons(admin_client):
    make_jobs(1, queue_name="emails")
    page = admin_client.get(OVERVIEW).content.decode()
    assert page.count(">Pause</button>") == 4  # default, emails, other, reports
    admin_client.post(PAUSE, {"name": "emails", "paused": "1"})
    page = admin_client.get(OVERVIEW).content.decode()
    assert page.count(">Pause</button>") == 3 and page.count(">Resume</button>") == 1
    response = admin_client.post(PAUSE, {"name": "", "paused": "1"}, follow=True)
    assert messages_of(response) == ["No such queue."]
    assert admin_client.get(PAUSE).status_code == 405


# -- indexes (PostgreSQL: read the plans) ---------------------------------------------------

@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)  # VACUUM cannot run in a transaction
def test_filters_and_overview_read_their_indexes(admin_client):
    now = timezone.now()
    rows = [Job(task_path="tests.tasks.rare" if i % 499 == 0 else f"tests.tasks.t{i % 7}",
                queue_name=("default", "emails", "reports")[i % 3],
                status=JobStatus.FAILED if i % 97 == 0 else JobStatus.SUCCESSFUL, run_after=now, enqueued_at=now,
                finished_at=now - timedelta(days=i % 30)) for i in range(30000)]
    Job.objects.bulk_create(rows, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE jobs_job")

    def plan(queryset) -> str:
        sql, params = queryset.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql, params)
            return "\n".join(row[0] for row in cursor.fetchall())

    failed_page = Job.objects.filter(status=JobStatus.FAILED).order_by("-id")[:50]
    assert "jobs_job_status_idx" in plan(failed_page)
    old_day = Job.objects.filter(enqueued_at__gte=now - timedelta(days=1), enqueued_at__lt=now)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs_job SET enqueued_at = finished_at")  # spread over 30 days
        cursor.execute("ANALYZE jobs_job")
    assert "jobs_job_enqueued_idx" in plan(old_day.order_by().values("pk")[:10001])
    assert "jobs_job_task_idx" in plan(Job.objects.filter(task_path="tests.tasks.rare").order_by("-id")[:50])
    with CaptureQueriesContext(connection) as ctx:
        admin_client.get(LIST)
    loose = [q["sql"] for q in ctx.captured_queries if "WITH RECURSIVE" in q["sql"]]
    assert len(loose) == 2
    for sql in loose:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql)
            text = "\n".join(row[0] for row in cursor.fetchall())
        assert "Seq Scan on jobs_job" not in text, text
    with CaptureQueriesContext(connection) as ctx:
        admin_client.get(OVERVIEW)
    counts = next(q["sql"] for q in ctx.captured_queries if "unnest(" in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + counts)
        text = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan on jobs_job" not in text, text
    assert "Index Only Scan using jobs_job_queue_idx" in text, text  # the counts and the lag


def test_reverse_names():
    assert reverse("admin:jobs_queuestate_changelist") == OVERVIEW
    assert reverse("admin:jobs_job_requeue", args=[5]) == "/admin/jobs/job/5/requeue/"


# -- what hostile or huge rows do to the pages (issue 9) --------------------------------------

@pytest.mark.parametrize("term", ["²", "#²", "x" * 100_000, "#" + "9" * 30, "9" * 30, "%_\\", "\x00"])
def test_searches_that_are_not_ids_or_are_huge_answer_200(admin_client, term):
    make_jobs(1, JobStatus.FAILED)
    response = admin_client.get(LIST, {"q": term})
    assert response.status_code == 200


def test_the_list_shows_only_the_start_of_a_huge_error(admin_client):
    from jobs.admin.changelist import LIST_ERROR_CHARS

    make_jobs(20, JobStatus.FAILED, errors=[error(1, message="boom " * 400_000)])  # 2 MB each
    response = admin_client.get(LIST)
    assert response.status_code == 200
    assert len(response.content) < 500_000  # 20 jobs x 2 MB in a title attribute made a 42 MB page
    assert "boom " * (LIST_ERROR_CHARS // 5 - 1) in response.content.decode()


def test_the_job_page_shows_the_start_of_a_huge_argument_and_offers_the_whole_as_a_download(admin_client):
    big = "x" * 5_000_000
    (job,) = make_jobs(1, args=[big], errors=[error(i) for i in range(1, 201)])
    response = admin_client.get(f"{LIST}{job.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert len(page) < 1_000_000 and "more characters" in page and "The 150 oldest are not shown" in page
    url = reverse("admin:jobs_job_download", args=[job.pk, "args"])
    assert url in page
    download = admin_client.get(url)
    assert download.status_code == 200 and download["Content-Disposition"].startswith("attachment")
    assert big in download.content.decode()
    assert admin_client.get(reverse("admin:jobs_job_download", args=[job.pk, "task_path"])).status_code == 404


def test_a_damaged_row_has_a_job_page(admin_client):
    (job,) = make_jobs(1, JobStatus.FAILED)
    pg = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE jobs_job SET args = %s{'::jsonb' if pg else ''}, errors = %s{'::jsonb' if pg else ''},"
                       " worker_ids = '7' WHERE id = %s", ["[" + "9" * 5000 + "]", '"not a list"', job.pk])
    response = admin_client.get(f"{LIST}{job.pk}/change/")
    assert response.status_code == 200
    assert "unreadable JSON" in response.content.decode()
    assert admin_client.get(LIST).status_code == 200


def test_download_needs_view_permission(db):
    (job,) = make_jobs(1)
    nobody = staff("nobody")
    url = reverse("admin:jobs_job_download", args=[job.pk, "args"])
    assert nobody.get(url).status_code == 403
    assert staff("viewer", "view_job").get(url).status_code == 200


# -- job control in the admin (issue 12) ---------------------------------------------------------

def test_held_back_jobs_say_why_and_the_keys_show(admin_client):
    from jobs.models import JobLimit

    path = "/tmp/unused"
    running = tasks.one_at_a_time.enqueue(path, "first", 0)
    claim(worker_id="w", limit=1, now=timezone.now())
    waiting = tasks.one_at_a_time.enqueue(path, "second", 0)
    assert JobLimit.objects.get(key="one-at-a-time").running == 1
    page = admin_client.get(LIST).content.decode()
    assert "held back" in page and "held back by key one-at-a-time: 1 of 1 running" in page
    job_page = admin_client.get(f"{LIST}{waiting.id}/change/").content.decode()
    assert "held back by key one-at-a-time" in job_page and "Limit key" in job_page
    assert admin_client.get(LIST, {"limit_key": "one-at-a-time"}).context["cl"].result_count == 2
    overview = admin_client.get(OVERVIEW).content.decode()
    assert 'id="limit-keys"' in overview and "one-at-a-time" in overview
    assert Job.objects.get(pk=int(running.id)).status == JobStatus.RUNNING


def test_progress_shows_as_a_bar(admin_client):
    (running,) = make_jobs(1, JobStatus.RUNNING, progress={"done": 3, "total": 4, "message": "copying <files>",
                                                            "updated_at": timezone.now().isoformat()})
    page = admin_client.get(LIST).content.decode()
    assert 'class="jobs-progress-bar" style="width:75%"' in page and "3/4" in page
    assert "copying &lt;files&gt;" in page  # escaped
    job_page = admin_client.get(f"{LIST}{running.pk}/change/").content.decode()
    assert 'id="job-progress"' in job_page


# -- damaged rows: every page renders, and says what is damaged ----------------------------

def raw_update(table: str, pk_column: str, pk, **columns) -> None:
    """Raw values past the ORM, as any writer of the table could leave them."""
    pg, qn = connection.vendor == "postgresql", connection.ops.quote_name
    json_columns = {"progress", "args", "errors", "starts", "meta"}
    sets = [f"{qn(column)} = %s{'::jsonb' if pg and column in json_columns else ''}" for column in columns]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {qn(table)} SET {', '.join(sets)} WHERE {qn(pk_column)} = %s",
                       [*columns.values(), pk])


def damaged_jobs() -> dict[str, int]:
    """One job per kind of damage the admin must show rather than answer 500 for."""
    kinds = {"progress: a 400-digit int": ("RUNNING", {"progress": '{"done": %s, "total": 10}' % ("9" * 400)}),
             "progress: total of 400 digits": ("RUNNING", {"progress": '{"done": 1, "total": %s}' % ("9" * 400)})}
    if connection.vendor == "postgresql":
        kinds.update({
            "finished_at infinity": ("FAILED", {"finished_at": "infinity"}),
            "started_at infinity": ("FAILED", {"started_at": "infinity"}),
            "enqueued_at past 9999": ("FAILED", {"enqueued_at": "20000-01-01"}),
            "run_after -infinity": ("FAILED", {"run_after": "-infinity"}),
            "args nested deep": ("FAILED", {"args": "[" * 1200 + "]" * 1200}),
        })
    elif connection.vendor == "mysql":  # strict: no text in a time or a number; but the zero date
        kinds.update({
            "finished_at zero date": ("FAILED", {"finished_at": "0000-00-00 00:00:00"}),
            "started_at zero date": ("FAILED", {"started_at": "0000-00-00 00:00:00"}),
            "run_after zero date": ("READY", {"run_after": "0000-00-00 00:00:00"}),
        })
    else:
        kinds.update({
            "finished_at text": ("FAILED", {"finished_at": "soon"}),
            "finished_at impossible": ("FAILED", {"finished_at": "2026-13-45 00:00:00"}),
            "run_after text": ("READY", {"run_after": "9999-99-99 tomorrow"}),
            "attempts text": ("FAILED", {"attempts": "many"}),
            "priority text": ("READY", {"priority": "high"}),
        })
    made = {}
    for label, (status, columns) in kinds.items():
        (job,) = make_jobs(1, status, limit_key="damaged-key")
        raw_update("jobs_job", "id", job.pk, **columns)
        made[label] = job.pk
    return made


def damage_limit_rows() -> None:
    from jobs.models import JobLimit

    for key in ("damaged-key", "huge", "text", "nested"):
        JobLimit.objects.create(key=key)
    raw_update("jobs_joblimit", "key", "huge", running=1e300 if connection.vendor == "sqlite" else 2**31 - 1)
    raw_update("jobs_joblimit", "key", "nested", starts="[" * 10_000 + "]" * 10_000 if connection.vendor == "postgresql"
               else "[%s]" % ("9" * 5000))  # SQLite's json_valid refuses the depth; Python the digits
    if connection.vendor == "sqlite":
        raw_update("jobs_joblimit", "key", "text", running="x")
        raw_update("jobs_joblimit", "key", "damaged-key", running="0.5")
    else:
        raw_update("jobs_joblimit", "key", "damaged-key", running=-5)


@pytest.mark.django_db
def test_damaged_rows_are_shown_not_a_500(admin_client):
    damaged = damaged_jobs()
    damage_limit_rows()
    make_jobs(2, JobStatus.READY, limit_key="text")
    for url in (LIST, f"{LIST}?limit_key=damaged-key", f"{LIST}?limit_key=text", f"{LIST}?status__exact=FAILED",
                OVERVIEW):
        response = admin_client.get(url)
        assert response.status_code == 200, url
    page = admin_client.get(LIST).content.decode()
    assert "damaged" in page
    for label, pk in damaged.items():
        response = admin_client.get(f"{LIST}{pk}/change/")
        assert response.status_code == 200, label
        assert "damaged" in response.content.decode(), label


def test_rows_a_worker_failed_as_damaged_are_shown(admin_client, run_worker):
    from tests.test_fuzz_rows import MYSQL_DAMAGE, POSTGRES_DAMAGE, SQLITE_DAMAGE

    damage = {"postgresql": POSTGRES_DAMAGE, "mysql": MYSQL_DAMAGE}.get(connection.vendor, SQLITE_DAMAGE)
    ids = []
    for column, value in damage:
        (job,) = make_jobs(1, JobStatus.READY)
        raw_update("jobs_job", "id", job.pk, **{column: value})
        ids.append(job.pk)
    run_worker()
    # Each failed by the worker (the deep args decode, and fail the call: retried; the others as damaged).
    assert Job.objects.filter(pk__in=ids, status=JobStatus.FAILED).count() >= len(ids) - 1
    assert not Job.objects.filter(pk__in=ids, errors=[]).exists()
    assert admin_client.get(LIST).status_code == 200
    assert admin_client.get(f"{LIST}?status__exact=FAILED").status_code == 200
    assert admin_client.get(OVERVIEW).status_code == 200
    for pk in ids:
        assert admin_client.get(f"{LIST}{pk}/change/").status_code == 200, pk
