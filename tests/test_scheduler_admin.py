"""/admin/scheduler/schedule/: the list, the switch, "Run now", and the job's link back to its schedule."""

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from jobs.models import Job
from scheduler.cron import CronSchedule
from scheduler.models import Schedule, ScheduleRun
from scheduler.runner import Scheduler

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/scheduler/schedule/"


def make_schedule(name="nightly", cron="30 2 * * *", zone="Europe/Berlin", **fields):
    fields.setdefault("next_fire_at", CronSchedule(cron, zone).next_after(timezone.now()))
    return Schedule.objects.create(name=name, task="tests.tasks.add", cron=cron, timezone=zone, args=[1, 2], **fields)


def job_admin_url(job_id):
    try:
        return reverse("admin:jobs_job_change", args=[job_id])
    except NoReverseMatch:
        return None


def test_list_shows_cron_description_next_run_and_last_run_linked_to_its_job(admin_client):
    schedule = make_schedule()
    make_schedule("every-two-seconds", "* * * * * */2", "UTC")
    fire_time = datetime(2025, 1, 1, 1, 30, tzinfo=UTC)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=fire_time)
    Scheduler().tick(fire_time + timedelta(milliseconds=200))
    job = Job.objects.get()

    schedule.switch(True, now=timezone.now())  # back to the real clock for the next run
    schedule.refresh_from_db()

    page = admin_client.get(CHANGELIST).content.decode()
    assert "nightly" in page and "At 02:30" in page and "Every 2 seconds" in page
    next_local = schedule.next_fire_at.astimezone(schedule.cron_schedule().zone)
    assert next_local.strftime("%Y-%m-%d %H:%M:%S %Z") in page  # in the schedule's own time zone
    assert "2025-01-01 02:30:00 CET" in page and f"Ready (job #{job.pk})" in page
    if job_admin_url(job.pk):
        assert f'href="{job_admin_url(job.pk)}"' in page
    detail = admin_client.get(f"{CHANGELIST}{schedule.pk}/change/").content.decode()
    assert "Recent runs" in detail and f"job #{job.pk}" in detail


def test_run_now_action_enqueues_one_job_each(admin_client):
    first, second = make_schedule("a"), make_schedule("b")
    response = admin_client.post(CHANGELIST, {"action": "run_now_action", "_selected_action": [first.pk, second.pk]},
                                 follow=True)
    assert "Enqueued 2 jobs." in response.content.decode()
    assert sorted(Job.objects.values_list("meta__schedule", flat=True)) == ["a", "b"]
    assert all(run.manual for run in ScheduleRun.objects.all())


def test_run_now_reports_what_could_not_be_enqueued(admin_client):
    broken = make_schedule("broken")
    Schedule.objects.filter(pk=broken.pk).update(task="tests.tasks.nope")
    response = admin_client.post(CHANGELIST, {"action": "run_now_action", "_selected_action": [broken.pk]},
                                 follow=True)
    assert "Not enqueued for broken: tests.tasks.nope" in response.content.decode() and not Job.objects.exists()


def test_switch_off_and_on_from_the_change_form(admin_client):
    schedule = make_schedule(cron="*/5 * * * *", zone="UTC")
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=datetime(2020, 1, 1, tzinfo=UTC))
    url = f"{CHANGELIST}{schedule.pk}/change/"
    assert admin_client.post(url, {}).status_code == 302  # the checkbox left unticked: off
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.next_fire_at.year == 2020
    assert "switched off" in admin_client.get(CHANGELIST).content.decode()

    assert admin_client.post(url, {"enabled": "on"}).status_code == 302
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_fire_at > timezone.now()  # no catching up on the time it was off


def test_switch_from_the_list(admin_client):
    schedule = make_schedule()
    data = {"form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-0-id": str(schedule.pk), "_save": "Save"}
    assert admin_client.post(CHANGELIST, data).status_code == 302
    schedule.refresh_from_db()
    assert not schedule.enabled


def test_schedules_come_from_settings_only(admin_client):
    schedule = make_schedule()
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.get(f"{CHANGELIST}{schedule.pk}/delete/").status_code == 403
    Schedule.objects.filter(pk=schedule.pk).update(in_settings=False)
    assert admin_client.get(f"{CHANGELIST}{schedule.pk}/delete/").status_code == 200  # gone from settings: may go


def test_a_scheduled_job_shows_its_schedule_and_fire_time_in_the_jobs_admin(admin_client):
    schedule = make_schedule(cron="*/5 * * * *", zone="UTC")
    fire_time = datetime(2025, 1, 1, 12, 5, tzinfo=UTC)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=fire_time)
    Scheduler().tick(fire_time)
    job = Job.objects.get()
    if job_admin_url(job.pk) is None:
        pytest.skip("the jobs admin is not installed")
    page = admin_client.get(job_admin_url(job.pk)).content.decode()
    assert schedule.name in page and f"{CHANGELIST}?q={schedule.name}" in page


def test_run_history_list(admin_client):
    schedule = make_schedule()
    ScheduleRun.objects.create(schedule=schedule, fire_time=None, enqueued_at=timezone.now(), error="boom")
    page = admin_client.get("/admin/scheduler/schedulerun/").content.decode()
    assert "run now" in page and "Not enqueued" in page


def test_a_purged_job_leaves_its_run_as_history(admin_client):
    schedule = make_schedule(cron="*/5 * * * *", zone="UTC")
    fire_time = datetime(2025, 1, 1, 12, 5, tzinfo=UTC)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=fire_time)
    Scheduler().tick(fire_time)
    job_id = Job.objects.get().pk
    Job.objects.all().delete()  # as a bulk purge does
    run = ScheduleRun.objects.get()
    assert run.job_id == job_id
    assert f"job #{job_id} (deleted)" in admin_client.get(CHANGELIST).content.decode()
    assert f"job #{job_id} (deleted)" in admin_client.get(f"{CHANGELIST}{schedule.pk}/change/").content.decode()


# -- overlap off: skipped runs -------------------------------------------------------------

RUNS = "/admin/scheduler/schedulerun/"


def history_with_skipped_runs(name: str, fire_times: int) -> tuple[Schedule, Job]:
    """An every-2-s schedule with overlap off, ``fire_times`` late: one job (left RUNNING), the rest skipped."""
    start = datetime(2025, 1, 1, 12, tzinfo=UTC)
    schedule = make_schedule(name, "* * * * * */2", "UTC", overlap=False, next_fire_at=start)
    Scheduler().fire(schedule.pk, start)
    job = Job.objects.get(meta__schedule=name)
    Job.objects.filter(pk=job.pk).update(status="RUNNING")  # as its worker would
    if fire_times > 1:
        Scheduler().fire(schedule.pk, start + timedelta(seconds=2 * (fire_times - 1)))
    return schedule, job


def test_skipped_runs_show_on_the_schedule_its_recent_runs_and_the_runs_list(admin_client):
    schedule, job = history_with_skipped_runs("no-overlap", 3)
    skipped = f"Skipped: previous run (job #{job.pk}) still running"
    assert skipped in admin_client.get(CHANGELIST).content.decode()  # the last run, in the list
    detail = admin_client.get(f"{CHANGELIST}{schedule.pk}/change/").content.decode()
    assert detail.count(skipped) == 3 and f"Running (job #{job.pk})" in detail  # last run + recent runs
    assert "Overlap" in detail
    runs = admin_client.get(RUNS).content.decode()
    assert runs.count(skipped) == 2 and f"Running (job #{job.pk})" in runs
    only_skipped = admin_client.get(f"{RUNS}?skipped__exact=1").content.decode()
    assert only_skipped.count(skipped) == 2 and f"Running (job #{job.pk})" not in only_skipped


@pytest.mark.parametrize("url", [CHANGELIST, RUNS, "change"])
def test_pages_with_skipped_runs_cost_the_same_queries_for_few_rows_as_for_many(admin_client,
                                                                                 django_assert_num_queries, url):
    first, _ = history_with_skipped_runs("first", 3)
    page = f"{CHANGELIST}{first.pk}/change/" if url == "change" else url
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(page).status_code == 200
    Schedule.objects.filter(pk=first.pk).update(next_fire_at=datetime(2025, 1, 1, 12, 0, 6, tzinfo=UTC))
    Job.objects.update(status="SUCCESSFUL")
    Scheduler().fire(first.pk, datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC))  # 13 more runs, 12 skipped
    for n in range(6):
        history_with_skipped_runs(f"more-{n}", 5)
    with django_assert_num_queries(len(few.captured_queries)):
        assert admin_client.get(page).status_code == 200


def test_run_now_says_why_a_schedule_that_does_not_overlap_was_not_run(admin_client):
    schedule, job = history_with_skipped_runs("no-overlap", 1)
    response = admin_client.post(CHANGELIST, {"action": "run_now_action", "_selected_action": [schedule.pk]},
                                 follow=True)
    page = response.content.decode()
    assert (f"Not run for no-overlap: previous run (job #{job.pk}) still running (overlap is off for this schedule)"
            in page) and "Enqueued" not in page
    assert Job.objects.count() == 1 and ScheduleRun.objects.get(fire_time=None).skipped


# -- the schedule page ---------------------------------------------------------------------

def test_the_schedule_page_has_a_run_now_button_that_enqueues_one_job(admin_client):
    schedule = make_schedule()
    url = f"{CHANGELIST}{schedule.pk}/change/"
    page = admin_client.get(url).content.decode()
    run_now_url = f"{CHANGELIST}{schedule.pk}/run-now/"
    assert f'action="{run_now_url}"' in page and ">Run now</button>" in page
    assert admin_client.get(run_now_url).status_code == 405  # a change: POST only
    response = admin_client.post(run_now_url, follow=True)
    assert response.redirect_chain[-1][0] == url and "Enqueued 1 job." in response.content.decode()
    assert Job.objects.get().meta["schedule"] == "nightly" and ScheduleRun.objects.get().manual


def test_run_now_button_needs_the_change_permission(client, django_user_model):
    from django.contrib.auth.models import Permission

    schedule = make_schedule()
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_schedule"))
    client.force_login(viewer)
    assert ">Run now</button>" not in client.get(f"{CHANGELIST}{schedule.pk}/change/").content.decode()
    assert client.post(f"{CHANGELIST}{schedule.pk}/run-now/").status_code == 403
    assert not Job.objects.exists()


@pytest.mark.parametrize("overlap", [True, False])
def test_the_overlap_line_says_what_the_setting_does(admin_client, overlap):
    schedule = make_schedule(overlap=overlap)
    page = admin_client.get(f"{CHANGELIST}{schedule.pk}/change/").content.decode()
    expected = ("Yes: a fire time runs even while" if overlap else "No: a fire time is skipped while")
    assert expected in page and "Off: a fire time" not in page


def test_a_fire_time_under_a_minute_away_is_in_seconds_never_in_0_minutes(admin_client):
    schedule = make_schedule(cron="* * * * *", zone="UTC")
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=timezone.now() + timedelta(seconds=20))
    page = admin_client.get(CHANGELIST).content.decode()
    assert not re.search(r"\bin 0 minutes", page) and re.search(r"<small>in (1\d|20) seconds</small>", page)


def test_next_fire_times_are_listed_in_the_schedules_time_zone(admin_client):
    schedule = make_schedule(cron="30 2 * * *", zone="America/New_York")
    page = admin_client.get(f"{CHANGELIST}{schedule.pk}/change/").content.decode()
    upcoming = re.search(r'<ul class="scheduler-upcoming">(.*?)</ul>', page, re.S).group(1)
    times = re.findall(r"<li>(.*?)</li>", upcoming)
    assert len(times) == 5 and all(re.fullmatch(r"\d{4}-\d\d-\d\d 02:30:00 E[SD]T", t) for t in times)


def test_the_runs_list_uses_one_date_format(admin_client):
    schedule = make_schedule(zone="UTC")
    ScheduleRun.objects.create(schedule=schedule, fire_time=datetime(2025, 3, 4, 5, 6, tzinfo=UTC),
                               enqueued_at=datetime(2025, 3, 4, 5, 6, 1, tzinfo=UTC), error="boom")
    page = admin_client.get(RUNS).content.decode()
    rows = re.search(r'<table id="result_list">.*?</table>', page, re.S).group(0)
    assert "2025-03-04 05:06:00 UTC" in rows and "2025-03-04 05:06:01 UTC" in rows
    assert "March" not in rows and "a.m." not in rows and "p.m." not in rows


def test_cron_expressions_are_kept_on_one_line(admin_client):
    make_schedule(cron="0 9-17/2 * * 1-5", zone="UTC")
    page = admin_client.get(CHANGELIST).content.decode()
    assert '<code class="scheduler-cron">0 9-17/2 * * 1-5</code>' in page
    assert "scheduler/admin.css" in page
    from django.contrib.staticfiles import finders

    rules = re.findall(r"([^{}]+)\{([^}]*)\}", Path(finders.find("scheduler/admin.css")).read_text())
    assert any(".scheduler-cron" in selector and "white-space: nowrap" in body for selector, body in rules)
