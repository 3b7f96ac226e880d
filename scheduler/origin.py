"""What a schedule's job carries in its meta, and how the jobs admin shows it.

The keys are written once, at enqueue (``job_meta``, called by ``runner.launch``), and
read back only by ``render_origin``, which ``SchedulerConfig.ready()`` registers in
``jobs.origins``: the jobs admin shows "Schedule: nightly-report, fire time ..." with
links to the schedule and the run, and never learns these keys or the scheduler's URLs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.http import urlencode

from jobs.origins import Link, Origin

KEYS = frozenset({"schedule", "fire_time", "schedule_run", "manual"})


def job_meta(name: str, fire_time: datetime | None, run_id: int, zone) -> dict:
    """The meta of the job enqueued for run ``run_id`` of schedule ``name`` (``fire_time`` None: run now)."""
    meta = {"schedule": name, "fire_time": fire_time.astimezone(zone).isoformat() if fire_time else None,
            "schedule_run": run_id}
    if fire_time is None:
        meta["manual"] = True
    return meta


def _reverse(name: str, *args) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:  # the scheduler's admin is not on this site
        return None


def _fire_time(value) -> datetime | None:
    """The fire time in the current time zone, as the job page shows its other times."""
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return timezone.localtime(parsed) if parsed is not None and parsed.tzinfo is not None else None


def render_origin(meta: Mapping[str, Any]) -> Origin | None:
    name = meta.get("schedule")
    if not isinstance(name, str) or not name:
        return None
    fire_time = _fire_time(meta.get("fire_time"))
    if fire_time is not None:
        text = f"{name}, fire time {fire_time:%Y-%m-%d %H:%M:%S %Z}"
    else:
        text = f"{name}, run on request" if meta.get("manual") else name
    links = []
    schedules = _reverse("admin:scheduler_schedule_changelist")
    if schedules:
        links.append(Link("the schedule", f"{schedules}?{urlencode({'q': name})}"))
    run = meta.get("schedule_run")
    if isinstance(run, int) and not isinstance(run, bool) and (url := _reverse("admin:scheduler_schedulerun_change", run)):
        links.append(Link("the run", url))
    return Origin("Schedule", text, links, consumed=KEYS)
