"""The admin end to end, in headless Chromium driven by Playwright.

Debian's ``chromium`` is used as it is (``/usr/bin/chromium``); nothing here downloads
a browser. Without it this test fails rather than skips: CI installs it (.ci/run), and
``apt-get install chromium`` does it by hand. Deselect with ``-m "not browser"``.

The story: a job fails for good; someone logs in, filters the failed jobs, opens it,
reads the traceback, deploys the fix, requeues it; a real worker process runs it
again and the page shows it succeeded, its earlier error kept. Screenshots of the
list, the job page and the overview go to test-artifacts/<suite>/, one folder per
database and Django version, so that suites running side by side do not overwrite
each other's (with ``UPDATE_DOCS_SCREENSHOTS=1`` the list and the overview are also
copied to docs/ for the docs site).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from jobs import task
from jobs.models import Job, JobStatus, QueueState, WorkerProcess
from tests.conftest import REPO, subprocess_env

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS = REPO / "docs"


def artifacts() -> Path:
    """This suite's folder under test-artifacts/: sqlite-django6.1, postgresql-pgbouncer-django6.1..."""
    import django
    from django.conf import settings
    from django.db import connection

    pooled = "-pgbouncer" if getattr(settings, "VIA_PGBOUNCER", False) else ""
    return REPO / "test-artifacts" / f"{connection.vendor}{pooled}-django{django.VERSION[0]}.{django.VERSION[1]}"


@task(max_attempts=1, queue_name="emails")
def send_invoice(marker: str, order: int) -> str:
    """Fails until the "fix" (a marker file) is in place."""
    if not Path(marker).exists():
        raise ConnectionError(f"mail.example.com refused the connection while sending invoice {order}")
    return f"invoice {order} sent"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium); "
                    "this test never downloads a browser. Deselect it with -m 'not browser'.")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread, and Django refuses
    # database calls from a thread with a running loop. Our calls are plain sync code
    # between Playwright calls, so the guard is lifted while the browser is open
    # (Playwright's documented advice for Django).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def run_worker_burst() -> None:
    """A real worker process: run every due job, then exit."""
    env = subprocess_env()
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    subprocess.run([sys.executable, str(REPO / "manage.py"), "process_tasks", "--burst", "--no-scheduler"],
                   cwd=REPO, env=env, check=True, timeout=120, capture_output=True)


def screenshot(page, name: str, *, full_page: bool = False, docs: bool = False) -> None:
    folder = artifacts()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"admin-{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if docs and os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        partial = DOCS / f".admin-{name}.png.{os.getpid()}"  # whole or not at all, were two runs at it
        shutil.copyfile(path, partial)
        os.replace(partial, DOCS / f"admin-{name}.png")


TRACEBACK = """Traceback (most recent call last):
  File "/srv/shop/.venv/lib/python3.13/site-packages/jobs/execution.py", line 96, in run_attempt
    value = task.call(*job.args, **job.kwargs)
  File "/srv/shop/shop/tasks.py", line {line}, in {function}
    {code}
{error}
"""

BACKDROP_TASKS = [  # (path, queue, share, error or None, code line)
    ("shop.tasks.send_receipt", "emails", 30, "smtplib.SMTPServerDisconnected: Connection unexpectedly closed",
     "smtp.send_message(message)"),
    ("shop.tasks.sync_inventory", "default", 25, None, ""),
    ("shop.tasks.resize_image", "default", 15, None, ""),
    ("shop.tasks.charge_card", "default", 12, "httpx.ConnectTimeout: timed out connecting to payments.example.com",
     "response = client.post(url, json=payload)"),
    ("reports.tasks.build_daily_report", "reports", 8, "KeyError: 'region'", "totals[row['region']] += row['sum']"),
    ("newsletter.tasks.send_newsletter", "emails", 10, None, ""),
]


def make_backdrop(now) -> None:
    """An hour of a small shop's jobs, so that the pages look like a working site's."""
    rnd = random.Random(4)
    weights = [t[2] for t in BACKDROP_TASKS]
    rows = []
    for i in range(420):
        path, queue, _, error, code = rnd.choices(BACKDROP_TASKS, weights)[0]
        enqueued = now - timedelta(seconds=(420 - i) * 8.5 + rnd.random() * 3)
        started = enqueued + timedelta(milliseconds=rnd.randint(5, 400))
        job = Job(task_path=path, queue_name=queue, priority=rnd.choice([0, 0, 0, 0, 10]),
                  args=[rnd.randint(1000, 9999)], run_after=enqueued, enqueued_at=enqueued, started_at=started,
                  last_attempted_at=started, max_attempts=3, worker_ids=["web-1:4242:9f3ab2c1"])
        if error and rnd.random() < 0.22:
            attempts = 3
            errors = []
            for attempt in range(1, 4):
                cls, _, message = error.partition(": ")
                errors.append({"attempt": attempt, "exception_class_path": cls, "message": message,
                               "traceback": TRACEBACK.format(line=40 + attempt, function=path.rsplit(".", 1)[1],
                                                             code=code, error=error),
                               "worker_id": "web-1:4242:9f3ab2c1",
                               "at": (started + timedelta(seconds=attempt * 6)).isoformat()})
            job.status, job.attempts, job.errors = JobStatus.FAILED, attempts, errors
            job.last_attempted_at = started + timedelta(seconds=12)
            job.finished_at = started + timedelta(seconds=18.4)
            job.worker_ids = ["web-1:4242:9f3ab2c1"] * 3
        else:
            job.status, job.attempts = JobStatus.SUCCESSFUL, 1
            job.finished_at = started + timedelta(seconds=rnd.uniform(0.05, 3.5))
            job.return_value = {"ok": True}
        rows.append(job)
    Job.objects.bulk_create(rows)
    for minutes in (4, 11, 25):  # delayed ones, not due yet: the burst worker leaves them
        Job.objects.create(task_path="newsletter.tasks.send_newsletter", queue_name="emails", args=[minutes],
                           run_after=now + timedelta(minutes=minutes), enqueued_at=now - timedelta(seconds=30))
    Job.objects.create(task_path="reports.tasks.build_daily_report", queue_name="reports", status=JobStatus.RUNNING,
                       args=["2026-11-20"], run_after=now, enqueued_at=now - timedelta(seconds=20),
                       started_at=now - timedelta(seconds=19), last_attempted_at=now - timedelta(seconds=19),
                       attempts=1, worker_id="web-2:977:1c0d55e2",
                       heartbeat_at=now + timedelta(hours=1))  # a pretend worker the sweep must not take back


def keep_workers_alive() -> None:
    now = timezone.now()
    for worker_id, host, pid, queues, slots, age in [("web-1:4242:9f3ab2c1", "web-1", 4242, [], 4, 3),
                                                      ("web-2:977:1c0d55e2", "web-2", 977, ["reports"], 2, 1)]:
        WorkerProcess.objects.update_or_create(worker_id=worker_id, defaults=dict(
            hostname=host, pid=pid, queues=queues, concurrency=slots, heartbeat_at=now,
            started_at=now - timedelta(hours=age)))


def test_log_in_find_the_failed_job_requeue_it_and_see_it_succeed(page, tmp_path):
    from playwright.sync_api import expect

    User.objects.create_superuser("admin", "admin@example.com", "correct horse")
    make_backdrop(timezone.now())
    fix = tmp_path / "fix-deployed"
    result = send_invoice.enqueue(str(fix), 1042)
    job_id = int(result.id)
    run_worker_burst()  # the backdrop is finished, running or due later: only our job runs
    assert Job.objects.get(pk=job_id).status == JobStatus.FAILED
    keep_workers_alive()

    # Log in: the admin sends an anonymous visitor to the login page first.
    page.goto("/admin/jobs/job/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/admin/jobs/job/$"))
    page.evaluate("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")
    expect(page.locator("h1")).to_have_text("Jobs")
    expect(page.locator("#result_list tbody tr")).to_have_count(50)
    screenshot(page, "list", docs=True)

    # Filter the failed jobs: ours is the newest one.
    page.locator("#changelist-filter").get_by_role("link", name="Failed", exact=True).click()
    expect(page).to_have_url(re.compile(r"\?status__exact=FAILED$"))
    first_row = page.locator("#result_list tbody tr").first
    expect(first_row.locator(".jobs-badge")).to_have_text("Failed")
    expect(first_row).to_contain_text("refused the connection while sending invoice 1042")

    # Open it: the traceback says why.
    first_row.locator("a.jobs-task").click()
    expect(page).to_have_url(re.compile(f"/admin/jobs/job/{job_id}/change/$"))
    expect(page.locator("#job-status")).to_have_text("Failed")
    expect(page.locator("#job-attempts .jobs-traceback").first).to_contain_text(
        "ConnectionError: mail.example.com refused the connection while sending invoice 1042")
    expect(page.locator("#job-call")).to_have_text(f'send_invoice("{fix}", 1042)')
    screenshot(page, "job", full_page=True)

    # Deploy the fix, requeue, let a worker run it.
    fix.write_text("deployed")
    page.get_by_role("button", name="Requeue").click()
    expect(page.locator(".messagelist")).to_contain_text(f"Job #{job_id} requeued")
    expect(page.locator("#job-status")).to_have_text("Ready")
    run_worker_burst()
    page.reload()
    expect(page.locator("#job-status")).to_have_text("Successful")
    expect(page.locator("#job-return")).to_have_text('"invoice 1042 sent"')
    expect(page.locator("#job-attempts")).to_contain_text("before the requeue")  # the first failure stays
    assert Job.objects.get(pk=job_id).status == JobStatus.SUCCESSFUL

    # The overview: pause a queue and resume it.
    keep_workers_alive()
    page.goto("/admin/")
    page.get_by_role("link", name="Queues", exact=True).first.click()
    expect(page.locator("h1")).to_have_text("Queues")
    emails = page.locator("#queue-emails")
    emails.get_by_role("button", name="Pause").click()
    expect(page.locator(".messagelist")).to_contain_text("Queue emails paused")
    expect(page.locator("#queue-emails .jobs-badge")).to_have_text("Paused")
    assert QueueState.objects.get(name="emails").paused
    page.locator("#queue-emails").get_by_role("button", name="Resume").click()
    expect(page.locator("#queue-emails .jobs-badge")).to_have_text("Active")
    assert not QueueState.objects.get(name="emails").paused
    keep_workers_alive()
    page.goto("/admin/jobs/queuestate/")
    expect(page.locator("#stat-workers")).to_have_text("2")
    screenshot(page, "overview", full_page=True, docs=True)
