"""Cron maths, and the only module that uses croniter.

Fire times are wall-clock times in a schedule's time zone; what comes out are
instants in UTC. croniter only ever sees naive wall-clock times, so its own
time-zone handling plays no part: the mapping from wall clock to instants, and
with it the daylight-saving rule, is all here.

The daylight-saving rule (the one of Vixie cron, which most people know without
knowing it):

* An expression pinned to certain hours (its hour field is not ``*``, e.g. a
  daily 02:30) fires once per matching wall-clock time. A time skipped when the
  clocks go forward fires once, at the moment of the jump (03:00 in Berlin); a
  time that happens twice when the clocks go back fires at its first occurrence
  only.
* An expression with ``*`` in the hour field (every hour, every 15 minutes,
  every 2 seconds) follows the real clock: it fires whenever the wall clock
  shows a matching time. Skipped times do not happen, so they do not fire; the
  repeated hour is run through again. An hourly job stays one hour apart, an
  every-2-seconds job two seconds apart, across both transitions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from itertools import takewhile
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

ONE_US = timedelta(microseconds=1)
# Offset changes are searched for in steps of a day: no zone changes twice in one.
_SCAN_STEP = timedelta(days=1)

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class CronError(ValueError):
    """A cron expression or time zone that cannot be used."""


def normalise(expression) -> str:
    """The expression as croniter reads it: 5 fields, or 6 with seconds last.

    Macros (``@daily`` ...) become their 5-field form. Raises CronError for
    anything else, including expressions that can never fire (``0 0 30 2 *``).
    """
    if not isinstance(expression, str):
        raise CronError(f"must be a string, got {type(expression).__name__}")
    text = " ".join(expression.split())
    if text.startswith("@"):
        try:
            return MACROS[text.lower()]
        except KeyError:
            raise CronError(f"{expression!r} is not a known macro ({', '.join(MACROS)})") from None
    count = len(text.split(" ")) if text else 0
    if count not in (5, 6):
        raise CronError(f"{expression!r} has {count} fields; expected 5 (minute hour day month weekday) "
                        "or 6 (the same, then seconds)")
    try:
        itr = croniter(text, datetime(2000, 1, 1))
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        raise CronError(f"{expression!r} is not a valid cron expression ({exc})") from None
    try:
        itr.get_next(datetime)
    except CroniterBadDateError:
        raise CronError(f"{expression!r} never fires (no such date)") from None
    return text


def get_zone(name) -> tzinfo:
    """A zoneinfo time zone by its IANA name, or CronError."""
    if not isinstance(name, str) or not name:
        raise CronError(f"time zone must be an IANA name such as 'Europe/Berlin', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise CronError(f"unknown time zone {name!r} ({type(exc).__name__})") from None


def describe(expression) -> str:
    """A human-readable description (cron-descriptor), or the expression itself."""
    from cron_descriptor import Options, get_description

    try:
        fields = normalise(expression).split(" ")
    except CronError:
        return "invalid expression"
    if len(fields) == 6:  # ours has seconds last; cron-descriptor wants them first
        fields = [fields[5], *fields[:5]]
    try:
        # English and 24-hour, whatever the machine's locale (the admin is in English).
        return get_description(" ".join(fields), Options(use_24hour_time_format=True, locale_code="en_US"))
    except Exception:  # cron-descriptor does not know every croniter extension
        return " ".join(fields)


class CronSchedule:
    """An expression in a time zone: fire instants after a given instant."""

    def __init__(self, expression: str, zone: str | tzinfo):
        self.expression = normalise(expression)
        self.zone = get_zone(zone) if isinstance(zone, str) else zone
        hours = croniter(self.expression).expanded[1]
        # Pinned to certain hours: one run per wall-clock time (see the module docstring).
        self.pinned = hours != ["*"] and set(hours) != set(range(24))

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, {self.zone!s})"

    # -- public -----------------------------------------------------------------------

    def next_after(self, after: datetime) -> datetime:
        """The first fire instant strictly after ``after`` (aware), in UTC."""
        return next(self.iter_after(after))

    def between(self, after: datetime, until: datetime) -> list[datetime]:
        """Fire instants ``f`` with ``after < f <= until``, oldest first."""
        return list(takewhile(lambda f: f <= until, self.iter_after(after)))

    def latest(self, until: datetime, *, floor: datetime, count: int = 1) -> list[datetime]:
        """The latest ``count`` fire instants in ``[floor, until]``, oldest first.

        Searches back from ``until`` in windows that grow eightfold, so a long
        gap costs a handful of searches, not one step per missed fire time.
        """
        window = timedelta(seconds=1)
        while True:
            start = until - window
            bounded = start < floor
            found = self.between(floor - ONE_US if bounded else start, until)
            if len(found) >= count or bounded:
                return found[-count:] if count else []
            window *= 8

    def iter_after(self, after: datetime) -> Iterator[datetime]:
        """Fire instants strictly after ``after``, in UTC, ascending, without end.

        Walks the time line one UTC-offset segment at a time: inside a segment wall
        clock and instants map one to one; at each offset change the rule of the
        module docstring decides what the skipped or repeated wall times do.
        """
        if after.tzinfo is None:
            raise ValueError("after must be an aware datetime")
        local = after.astimezone(self.zone)
        offset = local.utcoffset()
        wall_from = local.replace(tzinfo=None, fold=0)
        segment_start = after
        last = after
        if self.pinned and local.fold == 1:
            # In the repeated hour after the clocks went back: pinned times here fired in the first pass.
            shift = local.replace(fold=0).utcoffset() - offset
            change = self._first_change(after - shift, after)
            if change is not None:
                wall_from = max(wall_from, self._wall(change) + shift - ONE_US)
        itr = croniter(self.expression, wall_from)
        while True:
            wall = itr.get_next(datetime)
            instant = (wall - offset).replace(tzinfo=UTC)
            change = self._first_change(segment_start, instant)
            if change is None:
                if instant > last:
                    last = instant
                    yield instant
                segment_start = instant
                continue
            new_offset = self._offset(change)
            if new_offset > offset:  # clocks forward: wall times [change+offset, change+new_offset) never happen
                gap_end = self._wall(change)
                if self.pinned and wall < gap_end and change > last:
                    last = change
                    yield change  # once, at the jump
                wall_from = gap_end - ONE_US
            else:  # clocks back: wall times [change+new_offset, change+offset) happen again
                wall_from = (self._wall(change) + (offset - new_offset if self.pinned else timedelta(0))) - ONE_US
            offset, segment_start = new_offset, change
            itr = croniter(self.expression, wall_from)

    # -- offsets ------------------------------------------------------------------------

    def _offset(self, instant: datetime) -> timedelta:
        return instant.astimezone(self.zone).utcoffset()

    def _wall(self, instant: datetime) -> datetime:
        return instant.astimezone(self.zone).replace(tzinfo=None, fold=0)

    def _first_change(self, a: datetime, b: datetime) -> datetime | None:
        """The first instant in ``(a, b]`` whose UTC offset differs from ``a``'s, or None."""
        if b <= a:
            return None
        offset = self._offset(a)
        lo = a
        while True:
            hi = min(lo + _SCAN_STEP, b)
            if self._offset(hi) != offset:
                break
            if hi >= b:
                return None
            lo = hi
        # Offset changes fall on whole seconds: bisect to the first second with the new one.
        lo_s, hi_s = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
        while hi_s - lo_s > 1:
            mid = (lo_s + hi_s) // 2
            if self._offset(datetime.fromtimestamp(mid, UTC)) == offset:
                lo_s = mid
            else:
                hi_s = mid
        return datetime.fromtimestamp(hi_s, UTC)


@lru_cache(maxsize=256)
def cron_schedule(expression: str, zone: str) -> CronSchedule:
    """A shared CronSchedule per (expression, zone name); raises CronError."""
    return CronSchedule(expression, zone)
