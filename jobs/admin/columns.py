"""The job list's columns: each reads only the row itself (and ``last_error``, see changelist.py),
so the list costs the same queries for 5 rows as for 50.

A column is one function here and one entry in ``JobAdmin.list_display``; its name is
its CSS class (``field-<name>``, see jobs/static/jobs/admin.css).
"""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from ..models import JobStatus
from ..templatetags.jobs_admin import human_duration, relative, when
from .common import attempt_limit_of, job_url, status_badge
from .control import progress_bar

ERROR_LINE_CHARS = 140  # of the last error's message, under the task's name


@admin.display(description="task")
def task_column(job):
    module, _, name = job.task_path.rpartition(".")
    error = ""
    if job.last_error and job.status in (JobStatus.FAILED, JobStatus.READY):
        text = job.last_error if len(job.last_error) <= ERROR_LINE_CHARS else job.last_error[:ERROR_LINE_CHARS - 1] + "…"
        # The title (a tooltip) holds the start of the message: LastErrorMessage reads no more.
        error = format_html('<div class="jobs-error-line" title="{}">{}</div>', job.last_error, text)
    return format_html('<a class="jobs-task" href="{}" title="{}">{}</a> <span class="jobs-module">{}</span>{}',
                       job_url(job.pk), job.task_path, name, module, error)


@admin.display(description="queue")
def queue_column(job):
    return job.queue_name


@admin.display(description="status")
def status_column(job):
    damage = getattr(job, "damage", None)  # set by jobs.admin.damage: values the row holds that are none
    if damage:
        return format_html('{} <span class="jobs-note jobs-damaged" title="{}">damaged</span>', _status(job),
                           "; ".join(damage))
    return _status(job)


def _status(job):
    badge = status_badge(job.status)
    if job.status == JobStatus.READY and job.run_after and job.run_after > timezone.now():
        note = ("retry " if job.attempts else "") + relative(job.run_after)
        return format_html('{} <span class="jobs-note">{}</span>', badge, note)
    held = getattr(job, "held_back", "")  # set for the page by JobChangeList (one query)
    if held:
        return format_html('{} <span class="jobs-note jobs-held" title="{}">held back</span>', badge, held)
    if job.status == JobStatus.RUNNING and job.cancel_requested_at:
        return format_html('{} <span class="jobs-note">cancelling</span>', badge)
    return badge


@admin.display(description="progress")
def progress_column(job):
    return progress_bar(job.progress) if job.status != JobStatus.READY else ""


@admin.display(description="attempts")
def attempts_column(job):
    css = "jobs-attempts jobs-attempts--retried" if job.attempts > 1 else "jobs-attempts"
    return format_html('<span class="{}">{}<span class="jobs-of"> / {}</span></span>', css, job.attempts,
                       attempt_limit_of(job))


@admin.display(description="enqueued", ordering="id")
def enqueued_column(job):
    return when(job.enqueued_at)


@admin.display(description="started")
def started_column(job):
    return when(job.last_attempted_at)


@admin.display(description="finished")
def finished_column(job):
    return when(job.finished_at)


@admin.display(description="duration")
def duration_column(job):
    if job.status in (JobStatus.SUCCESSFUL, JobStatus.FAILED) and job.finished_at and job.last_attempted_at:
        return human_duration(job.finished_at - job.last_attempted_at)
    if job.status == JobStatus.RUNNING and job.last_attempted_at:
        return format_html('<span class="jobs-quiet">{}…</span>', human_duration(timezone.now() - job.last_attempted_at))
    return when(None)
