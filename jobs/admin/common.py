"""What every jobs admin page uses: breadcrumbs, status badges, job URLs, attempt limits, JSON shown."""

from __future__ import annotations

import functools
import json

import django
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils.html import format_html

from ..backends import DatabaseBackend
from ..execution import attempt_limit
from ..framework import task_backends
from ..models import Job, UnreadableJSON
from ..templatetags.jobs_admin import status_label


def crumbs(*trail: tuple[str, str]) -> dict:
    """Breadcrumbs from the admin index to this page; the last has no link."""
    home = [(reverse("admin:index"), "Home"), (reverse("admin:app_list", args=["jobs"]), "Jobs")]
    return {"crumbs": [*home, *trail], "crumbs_as_list": django.VERSION >= (6, 0)}


@functools.lru_cache(maxsize=16)
def _job_url_pattern(prefix: str, urlconf) -> str:
    return reverse("admin:jobs_job_change", args=["__pk__"])


def job_url(pk: int) -> str:
    """A job page's URL, without a ``reverse()`` per row of the list."""
    return _job_url_pattern(get_script_prefix(), get_urlconf()).replace("__pk__", str(pk))


def plural_jobs(n: int) -> str:
    return f"{n:,} job" if n == 1 else f"{n:,} jobs"


def status_badge(status: str):
    return format_html('<span class="jobs-badge jobs-badge--{}">{}</span>', status.lower(), status_label(status))


def attempt_limit_of(job: Job) -> int | str:
    """The attempt limit a worker of the job's backend alias applies to it now ("?" without one)."""
    try:
        backend = task_backends[job.backend]
    except Exception:  # an alias no longer in TASKS: no worker serves it
        return job.max_attempts or "?"
    if not isinstance(backend, DatabaseBackend):
        return job.max_attempts or "?"
    return attempt_limit(job, backend)


def as_json(value) -> str:
    """A JSON column as the pages and downloads show it, indented."""
    if isinstance(value, UnreadableJSON):  # a damaged row: say so rather than pretend
        return f"<{value}>"
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)
