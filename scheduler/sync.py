"""Settings -> ``Schedule`` rows, whenever a scheduler starts.

Settings are the truth for what a schedule does; the row adds what settings
cannot hold: the admin's on/off switch and the progress (next and last fire time).
Upsert by name; an entry gone from the settings is marked ``in_settings=False``
(never run, kept for its history), not deleted. Schedules made in the admin are not
the settings': never updated nor marked removed here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from .conf import ScheduleEntry, scheduled_jobs
from .models import Schedule

logger = logging.getLogger(__name__)

# A change to any of these moves the next fire time: it is computed afresh from now.
_TIMING = ("cron", "timezone")


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: int = 0


def sync_schedules(now: datetime, entries: Iterable[ScheduleEntry] | None = None,
                   names: Iterable[str] | None = None) -> SyncReport:
    """Mirror ``entries`` (default: the parsed setting) into rows.

    ``names`` are every entry name in the setting, valid or not: an entry that
    is there but currently invalid is left as it is, not marked removed.
    """
    if entries is None:
        parsed = scheduled_jobs()
        for problem in parsed.problems:
            logger.error("schedule entry ignored %s", problem)
        entries, names = parsed.entries, parsed.names
    entries = list(entries)
    names = set(names if names is not None else ()) | {entry.name for entry in entries}
    report = SyncReport()
    for entry in entries:
        definition = entry.definition()
        schedule, created = Schedule.objects.get_or_create(
            name=entry.name, defaults={**definition, "next_fire_at": entry.cron_schedule().next_after(now)})
        if schedule.made_in_admin:
            # The admin refuses a name the settings use, but the settings may take one up later:
            # the admin's schedule stands, the entry is not run (manage.py check says so too).
            logger.error("schedule entry ignored name=%s: a schedule of that name was made in the admin "
                         "(rename the SCHEDULED_JOBS entry, or delete the admin's schedule)", entry.name)
            continue
        if created:
            report.created.append(entry.name)
            logger.info("schedule added name=%s cron=%r timezone=%s next=%s", entry.name, entry.cron,
                        entry.timezone, schedule.next_fire_at.isoformat())
            continue
        changes = {key: value for key, value in definition.items() if getattr(schedule, key) != value}
        if not schedule.in_settings:
            changes["in_settings"] = True
        if not schedule.in_settings or schedule.next_fire_at is None or any(key in changes for key in _TIMING):
            # New timing, or back in the settings: start from now, nothing to catch up on.
            changes["next_fire_at"] = entry.cron_schedule().next_after(now)
        if changes:
            Schedule.objects.filter(pk=schedule.pk).update(**changes)
            report.updated.append(entry.name)
            logger.info("schedule updated name=%s changed=%s", entry.name, ",".join(sorted(changes)))
    report.removed = (Schedule.objects.filter(in_settings=True, made_in_admin=False).exclude(name__in=names)
                      .update(in_settings=False))
    if report.removed:
        logger.info("schedules no longer in SCHEDULED_JOBS count=%d (kept, not run)", report.removed)
    return report
