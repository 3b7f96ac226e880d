"""The operations pages in headless Chromium at 1280 x 800 with Django's navigation sidebar open.

Launched as tests/test_admin_browser.py launches it (Debian's chromium, never a
download). Each test checks the layout as a person sees it (nothing the page is about
scrolled out of sight) and saves a screenshot to docs/ for the README.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from tests.test_admin_browser import DOCS, browser, make_backdrop  # noqa: F401  (the browser fixture)

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
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / f"admin-{name}.png"), full_page=full_page)


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
