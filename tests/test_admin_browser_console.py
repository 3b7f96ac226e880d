"""The operations pages in headless Chromium at 1280 x 800 with Django's navigation sidebar open.

Launched as tests/test_admin_browser.py launches it (Debian's chromium, never a
download). Each test checks the layout as a person sees it (nothing the page is about
scrolled out of sight) and saves a screenshot to docs/ for the docs site.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from tests.test_admin_browser import browser, make_backdrop, screenshot  # noqa: F401  (the browser fixture)

pytestmark = pytest.mark.browser
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture
def page(browser, live_server):  # noqa: F811
    User.objects.create_superuser("admin", "admin@example.com", "correct horse")
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto("/admin/login/?next=/admin/")
    page.evaluate("localStorage.setItem('django.admin.navSidebarIsOpen', 'true')")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/admin/$"))
    yield page
    context.close()


def shot(page, name: str, *, full_page: bool = False) -> None:
    """Into the test artifacts; into docs/ only with UPDATE_DOCS_SCREENSHOTS=1 (a test run never edits the checkout)."""
    screenshot(page, name, full_page=full_page, docs=True)


def right_edge(page, selector: str) -> float:
    return page.locator(selector).first.evaluate("e => e.getBoundingClientRect().right")


def test_job_list_shows_status_task_queue_and_times_at_1280_with_the_sidebar_open(page):
    from playwright.sync_api import expect

    make_backdrop(timezone.now())
    page.goto("/admin/jobs/job/")
    expect(page.locator("#nav-sidebar")).to_be_visible()
    expect(page.locator("#result_list tbody tr")).to_have_count(50)
    shot(page, "list-sidebar")
    for column in ("task_column", "queue_column", "status_column", "enqueued_column", "started_column",
                   "finished_column", "duration_column"):
        edge = right_edge(page, f"#result_list th.column-{column}")
        assert edge <= VIEWPORT["width"], f"{column} ends at {edge}px, beyond the window"
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= VIEWPORT["width"], f"the page scrolls sideways ({scroll}px)"


def test_failures_page_groups_the_backdrops_failures_and_leads_to_a_requeue_of_the_group(page):
    from playwright.sync_api import expect

    from jobs.models import Job, JobStatus

    make_backdrop(timezone.now())
    Job.objects.filter(status=JobStatus.FAILED).update(error_class="smtplib.SMTPServerDisconnected")
    Job.objects.filter(status=JobStatus.FAILED, task_path="shop.tasks.charge_card").update(
        error_class="httpx.ConnectTimeout")
    Job.objects.filter(status=JobStatus.FAILED, task_path="reports.tasks.build_daily_report").update(
        error_class="builtins.KeyError")
    charge = Job.objects.filter(status=JobStatus.FAILED, task_path="shop.tasks.charge_card").count()
    page.goto("/admin/jobs/job/")
    page.get_by_role("link", name="Failures by cause").click()
    expect(page.locator("h1")).to_have_text("Failures by cause")
    rows = page.locator(".jobs-failure-group")
    expect(rows).to_have_count(3)
    shot(page, "failures")
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= VIEWPORT["width"], f"the page scrolls sideways ({scroll}px)"

    row = rows.filter(has_text="charge_card")
    expect(row).to_contain_text("httpx.ConnectTimeout")
    row.get_by_role("link", name="charge_card").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(charge)
    page.locator("#action-toggle").check()
    page.select_option("select[name=action]", "requeue_jobs")
    page.get_by_role("button", name="Run").click()
    expect(page.locator(".messagelist")).to_contain_text(f"Requeued {charge} jobs")
    assert not Job.objects.filter(status=JobStatus.FAILED, task_path="shop.tasks.charge_card").exists()


def test_schedule_page_run_now_upcoming_fire_times_and_cron_on_one_line(page):
    from playwright.sync_api import expect

    from jobs.models import Job
    from scheduler.cron import CronSchedule
    from scheduler.models import Schedule

    schedule = Schedule.objects.create(
        name="weekday-office-hours-report", task="tests.tasks.add", cron="0 9-17/2 * * 1-5",
        timezone="America/New_York", args=[1, 2], overlap=False,
        next_fire_at=CronSchedule("0 9-17/2 * * 1-5", "America/New_York").next_after(timezone.now()))
    Schedule.objects.create(name="every-ten-seconds", task="tests.tasks.noop", cron="* * * * * */10", timezone="UTC",
                            next_fire_at=timezone.now() + timedelta(seconds=7))
    page.goto("/admin/scheduler/schedule/")
    shot(page, "schedules")
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= VIEWPORT["width"], f"the schedule list scrolls sideways ({scroll}px)"
    for column in ("name", "cron_display", "next_run", "last_run", "enabled", "source"):
        edge = right_edge(page, f"#result_list th.column-{column}")
        assert edge <= VIEWPORT["width"] - 40, f"{column} ends at {edge}px, out of sight"
    # "in 40 minutes" is fine; a bare "in 0 minutes" is the defect.
    expect(page.locator("#result_list")).not_to_contain_text(re.compile(r"\bin 0 minutes"))
    cron = page.locator("code.scheduler-cron").first
    box = cron.bounding_box()
    assert box["height"] < 2 * float(cron.evaluate("e => parseFloat(getComputedStyle(e).lineHeight) || 20")), \
        "the cron expression wraps"
    page.get_by_role("link", name="weekday-office-hours-report").click()
    expect(page.locator(".scheduler-upcoming li")).to_have_count(5)
    for text in page.locator(".scheduler-upcoming li").all_inner_texts():
        assert re.fullmatch(r"\d{4}-\d\d-\d\d (09|11|13|15|17):00:00 E[SD]T", text), text
    expect(page.locator(".field-overlap_display")).to_contain_text("No: a fire time is skipped")
    shot(page, "schedule", full_page=True)
    page.locator("#schedule-run-now").click()
    expect(page.locator(".messagelist")).to_contain_text("Enqueued 1 job.")
    assert Job.objects.get().meta["schedule"] == schedule.name


def test_schedule_add_form_shows_the_settings_messages_then_makes_the_schedule(page, settings):
    from playwright.sync_api import expect

    from scheduler.models import Schedule

    settings.SCHEDULER_ADMIN_TASKS = ["tests.tasks.add", "tests.tasks.noop"]
    page.goto("/admin/scheduler/schedule/")
    page.get_by_role("link", name="Add schedule").click()
    page.fill("#id_name", "quarter-hourly-sum")
    page.select_option("#id_task", "tests.tasks.add")
    page.fill("#id_cron", "*/15 * * * * 99")
    page.fill("#id_timezone", "Europe/Atlantis")
    page.fill("#id_args", "[1, 2")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".field-cron .errorlist")).to_be_visible()
    expect(page.locator(".field-timezone .errorlist")).to_contain_text("Europe/Atlantis")
    expect(page.locator(".field-args .errorlist")).to_contain_text("is not JSON")
    shot(page, "schedule-add-errors", full_page=True)
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= VIEWPORT["width"], f"the page scrolls sideways ({scroll}px)"

    page.fill("#id_cron", "*/15 * * * *")
    page.fill("#id_timezone", "Europe/Paris")
    page.fill("#id_args", "[1, 2]")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("quarter-hourly-sum")
    schedule = Schedule.objects.get(name="quarter-hourly-sum")
    assert schedule.made_in_admin and schedule.args == [1, 2] and schedule.next_fire_at.minute % 15 == 0


def test_the_overview_updates_itself_in_place_and_pauses_while_hidden(page):
    from playwright.sync_api import expect

    from jobs.models import Job, JobStatus, WorkerProcess

    make_backdrop(timezone.now())
    later = timezone.now() + timedelta(hours=1)  # alive throughout (the tests' stale_after is 3 s)
    WorkerProcess.objects.create(worker_id="web-1:4242:9f3ab2c1", hostname="web-1", pid=4242, concurrency=8,
                                 started_at=timezone.now(), heartbeat_at=later)
    page.goto("/admin/jobs/queuestate/")
    expect(page.locator("#jobs-live-status")).to_contain_text("Live")
    page.evaluate("window.sameDocument = true")
    running = page.locator("#stat-running")
    before = int(running.inner_text().replace(",", ""))
    now = timezone.now()
    Job.objects.bulk_create([Job(task_path="shop.tasks.resize_image", queue_name="default", status=JobStatus.RUNNING,
                                 run_after=now, enqueued_at=now, started_at=now, last_attempted_at=now, attempts=1,
                                 worker_id="web-1:4242:9f3ab2c1", heartbeat_at=now + timedelta(hours=1))
                             for _ in range(3)])
    expect(running).to_have_text(str(before + 3), timeout=15_000)  # without a reload:
    assert page.evaluate("window.sameDocument") is True
    expect(page.locator('#workers tr[data-worker="web-1:4242:9f3ab2c1"] .jobs-running-now')).to_contain_text(
        "resize_image")
    shot(page, "overview-live", full_page=True)

    # Hidden: no request until shown again.
    requests = []
    page.on("request", lambda request: requests.append(request.url) if "/queuestate/" in request.url else None)
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    updates = page.locator(".jobs-page").get_attribute("data-updates")
    page.wait_for_timeout(6_500)  # longer than one refresh period: nothing may happen
    assert requests == [] and page.locator(".jobs-page").get_attribute("data-updates") == updates
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    expect(page.locator(".jobs-page")).not_to_have_attribute("data-updates", updates or "", timeout=10_000)
    assert requests, "no refresh after the tab was shown again"


def test_the_admin_index_shows_the_queue_state_one_click_from_the_overview(page):
    from playwright.sync_api import expect

    make_backdrop(timezone.now())
    page.goto("/admin/")
    state = page.locator("#jobs-index-state")
    expect(state).to_contain_text("failed in 24 h")
    shot(page, "index")
    state.get_by_role("link", name="Queue overview →").click()
    expect(page.locator("h1")).to_have_text("Queues")
