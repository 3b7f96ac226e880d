"""Formatting for the jobs admin: durations, compact times, status labels, estimated counts."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.html import format_html

from ..models import JobStatus

register = template.Library()


@register.filter
def status_label(status: str) -> str:
    """"Ready", "Failed", ...: the label of ``JobStatus`` (the one list of them), else the stored value."""
    try:
        return JobStatus(status).label
    except ValueError:
        return status


@register.filter
def human_duration(value: float | timedelta | None) -> str:
    """Compact: 0.42 s -> "420 ms", 3.4 -> "3.40 s", 75 -> "1m 15s", 7300 -> "2h 1m", 200000 -> "2d 7h"."""
    if value is None or value == "":
        return ""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def short_time(value: datetime | None, now: datetime | None = None) -> str:
    """A time as short as is clear: 13:42:07 today, 21 Nov 13:42 this year, else the date."""
    if value is None:
        return ""
    now = timezone.localtime(now or timezone.now())
    local = timezone.localtime(value)
    if local.date() == now.date():
        return local.strftime("%H:%M:%S")
    if local.year == now.year:
        return local.strftime("%d %b %H:%M")
    return local.strftime("%Y-%m-%d")


@register.filter
def when(value: datetime | None) -> str:
    """A <time> element: the short form, with the full local time on hover."""
    if value is None:
        return format_html('<span class="jobs-quiet">{}</span>', "—")
    local = timezone.localtime(value)
    return format_html('<time datetime="{}" title="{}">{}</time>', value.isoformat(),
                       local.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + local.strftime(" %Z"), short_time(value))


@register.filter
def relative(value: datetime | None) -> str:
    """"4 min ago" or "in 4 min"."""
    if value is None:
        return ""
    delta = (value - timezone.now()).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"in {human_duration(delta)}" if delta > 0 else f"{human_duration(-delta)} ago"


@register.filter
def thousands(value) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return ""


@register.simple_tag
def result_count(cl) -> str:
    """The change list's count, said as an estimate when it is one (PostgreSQL, big results)."""
    count = f"{cl.result_count:,}"
    return f"about {count}" if getattr(cl.paginator, "count_is_estimate", False) else count


@register.simple_tag
def jobs_index_state(request) -> dict | None:
    """The queue's state for the admin index (failed in 24 h, lag, workers), for users who may see jobs."""
    from django.urls import reverse

    from .. import stats
    from ..models import Job, WorkerProcess

    user = getattr(request, "user", None)
    if user is None or not (user.has_perm("jobs.view_job") or user.has_perm("jobs.change_job")):
        return None
    now = timezone.now()
    stale = stats.stale_after()
    lags = [row.lag for row in stats.queue_rows(now) if row.lag is not None and not row.paused]
    lag = max(lags) if lags else None
    failed = Job.objects.order_by().filter(status=JobStatus.FAILED, finished_at__gte=now - timedelta(hours=24)).count()
    return {"failed_24h": failed, "lag": lag, "lag_seconds": lag.total_seconds() if lag is not None else 0.0,
            "workers": WorkerProcess.objects.filter(heartbeat_at__gte=now - timedelta(seconds=stale)).count(),
            "overview_url": reverse("admin:jobs_queuestate_changelist"),
            "failures_url": reverse("admin:jobs_job_failures")}
