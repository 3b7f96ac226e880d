"""``TASKS[alias]["OPTIONS"]`` parsed once into a frozen, typed object.

Defaults live here and nowhere else. A bad value raises ``OptionsError`` naming
the key; the backend's ``check()`` turns that into a ``manage.py check`` error, so
a typo stops a deploy instead of surfacing in a worker at 3 a.m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Real

# The cap on one retry delay, whatever retry_backoff and the attempt number say.
MAX_RETRY_DELAY = 3600.0


class OptionsError(ValueError):
    """A TASKS OPTIONS value is wrong; ``key`` names it."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class JobsOptions:
    max_attempts: int = 3
    retry_backoff: float = 5.0
    stale_after: float = 30.0
    poll_interval: float = 1.0
    # Seconds running jobs get to finish after SIGTERM/SIGINT before they are handed back.
    shutdown_grace: float = 10.0
    # prune_jobs deletes finished jobs older than these (seconds since they finished).
    retain_successful: float = 7 * 86400.0
    retain_failed: float = 30 * 86400.0  # FAILED and CANCELLED: kept longer, someone may look

    @property
    def heartbeat_interval(self) -> float:
        """Three heartbeats fit in ``stale_after``, so one late beat never loses a job."""
        return self.stale_after / 3


# Upper bounds: past these a value is a typo (or an attack on the worker), not a choice.
# Attempts: any count the columns hold (PositiveIntegerField); the back-off is capped at
# MAX_RETRY_DELAY and its exponent bounded, so no number of attempts overflows anything.
MAX_ATTEMPTS = 2_147_483_647
DAY = 86400.0
YEAR = 365 * DAY
MAX_TIMEOUT = YEAR  # a task's timeout, seconds
# An idle worker polls this often at most (also the floor of process_tasks --sleep): below
# it, polling an empty queue costs a core.
MIN_POLL_INTERVAL = 0.01


def _number(key: str, value, minimum: float, maximum: float, *, integer: bool = False, inclusive: bool = True):
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, Real)
    if isinstance(value, bool) or not ok_type:
        raise OptionsError(key, f"OPTIONS[{key!r}] must be {kind}, got {value!r} ({type(value).__name__})")
    if not integer and not math.isfinite(value):
        raise OptionsError(key, f"OPTIONS[{key!r}] must be a finite number, got {value!r}")
    too_small = value < minimum or (not inclusive and value == minimum)
    if too_small or value > maximum:
        number = "{:d}" if integer else "{:g}"
        low = f"{'>=' if inclusive else '>'} {number.format(minimum)}"
        raise OptionsError(key, f"OPTIONS[{key!r}] must be {low} and <= {number.format(maximum)}, got {value!r}")
    return value if integer else float(value)


_RULES = {
    "max_attempts": lambda v: _number("max_attempts", v, 1, MAX_ATTEMPTS, integer=True),
    "retry_backoff": lambda v: _number("retry_backoff", v, 0, MAX_RETRY_DELAY, inclusive=False),
    "stale_after": lambda v: _number("stale_after", v, 3, DAY),
    "poll_interval": lambda v: _number("poll_interval", v, MIN_POLL_INTERVAL, 3600),
    "shutdown_grace": lambda v: _number("shutdown_grace", v, 0, DAY),
    "retain_successful": lambda v: _number("retain_successful", v, 0, 100 * YEAR),
    "retain_failed": lambda v: _number("retain_failed", v, 0, 100 * YEAR),
}


def parse_options(raw) -> JobsOptions:
    """Validate a raw OPTIONS dict; raise ``OptionsError`` for the first bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OptionsError("OPTIONS", f"OPTIONS must be a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {f.name for f in fields(JobsOptions)})
    if unknown:
        known = ", ".join(sorted(_RULES))
        raise OptionsError(unknown[0], f"OPTIONS has unknown key {unknown[0]!r} (known keys: {known})")
    return JobsOptions(**{key: _RULES[key](value) for key, value in raw.items()})
