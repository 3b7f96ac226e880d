"""jobs.origins: apps say where their jobs came from; the job page shows it, and the rest of the meta.

The registry through its public functions, the scheduler's and the compat shim's
renderers (as registered by their apps), and the job page built on them: what no
renderer consumed is shown under "Meta", and a renderer that breaks costs nothing
but its own line.
"""

from __future__ import annotations

import ast
import logging
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs import compat
from jobs.models import Job, JobStatus
from jobs.origins import Link, Origin, origin_renderers, origins_of, register_origin, unregister_origin
from scheduler.models import Schedule, ScheduleRun
from scheduler.origin import job_meta, render_origin
from scheduler.runner import Scheduler, run_now
from tests import bgtasks_tasks

REPO = Path(__file__).resolve().parent.parent


def make_job(meta, status=JobStatus.READY) -> Job:
    now = timezone.now()
    return Job.objects.create(task_path="tests.tasks.add", queue_name="default", run_after=now, enqueued_at=now,
                              args=[1, 2], status=status, meta=meta)


def page_of(client, job: Job):
    response = client.get(reverse("admin:jobs_job_change", args=[job.pk]))
    assert response.status_code == 200
    return response


@pytest.fixture
def renderer():
    """Register renderers for one test; the registry is as it was afterwards."""
    added = []

    def add(key, function):
        register_origin(key, function)
        added.append(key)

    yield add
    for key in added:
        unregister_origin(key)


# -- the registry ------------------------------------------------------------------------------

def test_the_apps_register_their_renderers_at_start():
    renderers = origin_renderers()
    assert renderers["scheduler"] is render_origin and renderers["compat"] is compat.render_origin


def test_a_registered_renderer_is_asked_and_what_it_returns_is_shown(renderer):
    def imported(meta):
        if "imported_from" not in meta:
            return None
        return Origin("Imported", f"from {meta['imported_from']}", [Link("the source", "/src/")], {"imported_from"})

    renderer("importer", imported)
    (origin,) = origins_of({"imported_from": "cron", "other": 1})
    assert origin == Origin("Imported", "from cron", (Link("the source", "/src/"),), frozenset({"imported_from"}))
    assert origins_of({"other": 1}) == []  # not its meta: None, nothing shown


def test_registering_the_same_key_again_replaces_the_renderer(renderer):
    renderer("twice", lambda meta: Origin("first"))
    renderer("twice", lambda meta: Origin("second"))
    assert [o.label for o in origins_of({})] == ["second"]


def test_a_renderer_must_be_callable():
    with pytest.raises(TypeError, match="'broken' must be callable"):
        register_origin("broken", "scheduler.origin.render_origin")
    assert "broken" not in origin_renderers()


def test_a_renderer_that_raises_or_returns_junk_is_skipped_and_logged(renderer, caplog):
    def raises(meta):
        raise KeyError("oops")

    renderer("raises", raises)
    renderer("junk", lambda meta: {"label": "not an Origin"})
    renderer("fine", lambda meta: Origin("Fine"))
    with caplog.at_level(logging.ERROR, logger="jobs.origins"):
        assert [o.label for o in origins_of({})] == ["Fine"]
    logged = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert ("ERROR", "origin renderer failed, skipped: renderer=raises", True) in logged
    assert ("ERROR", "origin renderer returned dict, not an Origin, skipped: renderer=junk", False) in logged


def test_a_renderer_cannot_change_the_meta_others_read(renderer):
    def meddles(meta):
        meta["seen"] = True  # raises: the mapping is read-only, so this renderer is skipped

    renderer("meddles", meddles)
    renderer("reader", lambda meta: Origin("Reader", f"seen={meta.get('seen')}"))
    meta = {"note": 1}
    assert [(o.label, o.text) for o in origins_of(meta)] == [("Reader", "seen=None")] and meta == {"note": 1}


def test_jobs_never_imports_scheduler():
    """The registry's reason to be: jobs knows nothing of the apps that register into it."""
    offenders = []
    for path in (REPO / "jobs").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(REPO)}: {name}" for name in names if name.split(".")[0] == "scheduler"]
        if "admin:scheduler_" in path.read_text():
            offenders.append(f"{path.relative_to(REPO)}: reverses a scheduler URL")
    assert offenders == []


# -- the job page ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_bad_renderer_does_not_break_the_job_page(admin_client, renderer, caplog):
    renderer("raises", lambda meta: 1 / 0)
    job = make_job({"verbose_name": "Old report"})
    with caplog.at_level(logging.ERROR, logger="jobs.origins"):
        response = page_of(admin_client, job)
    assert [o.label for o in response.context["origins"]] == ["django-background-tasks call"]
    assert "Old report" in response.content.decode()
    assert any("renderer=raises" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
def test_meta_no_renderer_consumed_is_shown_as_other_meta(admin_client):
    job = make_job({"imported_from": "cron", "schedule": "nightly", "fire_time": None, "schedule_run": 3,
                    "requeued": {"at": timezone.now().isoformat(), "by": "ann"}})
    response = page_of(admin_client, job)
    (origin,) = response.context["origins"]
    assert origin.label == "Schedule"
    other = response.context["other_meta"]["text"]
    assert '"imported_from": "cron"' in other
    assert "schedule" not in other and "requeued" not in other  # said by the origin, and by the timeline


@pytest.mark.django_db
def test_a_job_with_no_origin_says_it_came_from_code_and_has_no_meta_section(admin_client):
    response = page_of(admin_client, make_job({}))
    assert response.context["origins"] == [] and response.context["other_meta"] is None
    assert "Enqueued from code" in response.content.decode()


@pytest.mark.django_db
def test_origin_text_and_links_are_escaped(admin_client, renderer):
    renderer("hostile", lambda meta: Origin("<b>label</b>", meta["x"], [Link('"><script>', '/"><script>/')]))
    page = page_of(admin_client, make_job({"x": "<script>alert(1)</script>"})).content.decode()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;label" in page


@pytest.mark.django_db
def test_a_huge_origin_is_cut_on_the_page(admin_client):
    job = make_job({"verbose_name": "v" * 5_000_000, "creator": {"repr": "c" * 5_000_000}})  # written by hand
    page = page_of(admin_client, job).content.decode()
    assert len(page) < 200_000 and "v" * 400 in page


@pytest.mark.django_db
@pytest.mark.parametrize("meta", [[1, 2], "text", 7])
def test_meta_that_is_not_an_object_asks_no_renderer(admin_client, meta):
    response = page_of(admin_client, make_job(meta))
    assert response.context["origins"] == [] and response.context["other_meta"] is None


# -- the scheduler's renderer --------------------------------------------------------------------

def test_the_scheduler_renderer_links_to_the_schedule_and_the_run():
    meta = job_meta("nightly report", datetime(2026, 1, 2, 2, 0, tzinfo=UTC), 7, ZoneInfo("Europe/Berlin"))
    origin = render_origin(meta)
    assert origin.label == "Schedule"
    assert origin.text == "nightly report, fire time 2026-01-02 02:00:00 UTC"  # the page's time zone, as elsewhere
    with timezone.override(ZoneInfo("Asia/Tokyo")):
        assert render_origin(meta).text == "nightly report, fire time 2026-01-02 11:00:00 JST"
    assert origin.links == (Link("the schedule", "/admin/scheduler/schedule/?q=nightly+report"),
                            Link("the run", "/admin/scheduler/schedulerun/7/change/"))
    assert set(meta) == {"schedule", "fire_time", "schedule_run"} and origin.consumed >= set(meta)


def test_the_scheduler_renderer_says_a_run_now_was_on_request():
    origin = render_origin(job_meta("nightly", None, 8, UTC))
    assert origin.text == "nightly, run on request" and "manual" in origin.consumed


@pytest.mark.parametrize("meta", [{}, {"schedule": ""}, {"schedule": 5}, {"verbose_name": "x"}])
def test_the_scheduler_renderer_leaves_other_meta_alone(meta):
    assert render_origin(meta) is None


def test_the_scheduler_renderer_ignores_values_it_cannot_use():
    origin = render_origin({"schedule": "nightly", "fire_time": "soon", "schedule_run": "7"})
    assert origin.text == "nightly" and [link.text for link in origin.links] == ["the schedule"]
    assert render_origin({"schedule": "n", "schedule_run": True}).links[-1].text == "the schedule"


@pytest.mark.django_db
def test_a_scheduled_job_page_links_to_its_schedule_and_its_run(admin_client):
    schedule = Schedule.objects.create(name="nightly", task="tests.tasks.add", cron="*/5 * * * *", timezone="UTC",
                                       args=[1, 2], next_fire_at=datetime(2025, 1, 1, 12, 5, tzinfo=UTC))
    Scheduler().tick(datetime(2025, 1, 1, 12, 5, tzinfo=UTC))
    run_now(schedule)
    with CaptureQueriesContext(connection) as plain:
        page_of(admin_client, make_job({}))
    for run in ScheduleRun.objects.all():
        with CaptureQueriesContext(connection) as scheduled:
            response = page_of(admin_client, Job.objects.get(pk=run.job_id))
        assert len(scheduled) == len(plain)  # the renderers read no rows
        page = response.content.decode()
        assert f'href="/admin/scheduler/schedulerun/{run.pk}/change/"' in page
        assert 'href="/admin/scheduler/schedule/?q=nightly"' in page
        assert ("fire time 2025-01-01 12:05:00 UTC" if run.fire_time else "nightly, run on request") in page
        assert response.context["other_meta"] is None  # every key the scheduler wrote was said


# -- the compat shim's renderer ----------------------------------------------------------------

def test_the_compat_renderer_names_the_call_and_its_creator():
    origin = compat.render_origin({"verbose_name": "Old report",
                                   "creator": {"content_type": "auth.user", "object_id": 3, "repr": "alice"}})
    assert (origin.label, origin.text, origin.links) == ("django-background-tasks call", "Old report (creator alice)", ())
    assert origin.consumed == {"verbose_name", "creator"}
    nameless = compat.render_origin({"creator": {"content_type": "auth.user", "object_id": 3}})
    assert nameless.text == "(creator auth.user #3)"
    assert compat.render_origin({"schedule": "nightly"}) is None


def test_a_compat_job_page_names_the_task_and_links_its_next_run(run_worker, admin_client, tmp_path):
    job = bgtasks_tasks.notify(str(tmp_path / "runs"), 1, repeat=compat.HOURLY)
    run_worker()  # the run enqueues the next one
    job.refresh_from_db()
    successor = job.meta[compat.META_KEY]["next_job"]
    response = page_of(admin_client, job)
    (origin,) = response.context["origins"]
    assert origin.text == "tests.bgtasks_tasks.notify"  # no verbose_name: the django-background-tasks name
    assert origin.links == (Link("the next run", f"/admin/jobs/job/{successor}/change/"),)
    assert f'"{compat.META_KEY}"' in response.context["other_meta"]["text"]  # its details stay under Meta
    (following,) = page_of(admin_client, Job.objects.get(pk=successor)).context["origins"]
    assert following.links == (Link("the previous run", f"/admin/jobs/job/{job.pk}/change/"),)

