"""Job control, the pure part: the keys a job gets, rate limits, and how much room a key has.

Three options of ``jobs.task`` become columns of the job when it is enqueued:

- ``unique``: ``unique_key``, on which a partial unique index keeps at most one READY
  job per key (``jobs_job_unique_ready``); the database, not a check-then-insert.
- ``concurrency_key`` / ``concurrency_limit``: ``limit_key`` and the limit: at most that
  many jobs of the key RUNNING at once, over all workers.
- ``rate_limit``: at most N attempts of the key (the concurrency key, or else the task)
  started per period, over all workers, in any window of that length (a sliding log of
  start times, not fixed windows, which would let 2N through across a boundary).

The claim (``jobs.sql``) locks each key's ``JobLimit`` row, asks ``room()`` how many
may start now, and records the starts with ``recorded_starts()``. Nothing here touches
the database or the clock.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAX_KEY = 200  # characters of a key a user's callable may give (the column holds 255)
MAX_CONCURRENCY = 10_000
MAX_RATE = 10_000  # attempts per period
MAX_RATE_TEXT = 32  # characters of rate_limit text (its column)
MAX_RUNNING = 2**31 - 1  # the running count's column
PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")


@dataclass(frozen=True)
class Rate:
    count: int
    period: float  # seconds
    text: str  # as given: "5/s"


def parse_rate(text) -> Rate:
    """``"N/s"``, ``"N/m"`` or ``"N/h"``, N from 1 to MAX_RATE; ValueError saying what is wrong."""
    match = _RATE.match(text) if isinstance(text, str) and len(text) <= MAX_RATE_TEXT else None
    if not match or not 1 <= int(match.group(1)) <= MAX_RATE:
        raise ValueError(f"rate_limit must be 'N/s', 'N/m' or 'N/h' with N from 1 to {MAX_RATE}, at most "
                         f"{MAX_RATE_TEXT} characters, got {str(text)[:80]!r}")
    count, unit = int(match.group(1)), match.group(2)
    return Rate(count, PERIODS[unit], f"{count}/{unit}")


def _bounded(path: str, key: str) -> str:
    """``path:key`` within the column: a key too long keeps its start and a digest of the whole."""
    text = f"{path}:{key}"
    if len(text) <= 255:
        return text
    return f"{text[:190]}#{hashlib.sha256(text.encode()).hexdigest()}"


def key_problem(value: str) -> str:
    """What makes a key text unstorable by every database ("" if nothing): PostgreSQL refuses NUL
    in text, and no driver encodes a lone surrogate."""
    if "\x00" in value:
        return "contains NUL"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate at {exc.start}"
    return ""


def _user_key(option: str, fn: Callable, path: str, args: Sequence, kwargs: dict) -> str:
    value = fn(*args, **kwargs)
    if not isinstance(value, str) or not value or len(value) > MAX_KEY:
        raise TypeError(f"{path}: {option}(*args, **kwargs) must return a non-empty str of at most {MAX_KEY} "
                        f"characters, got {str(value)[:80]!r}")
    problem = key_problem(value)
    if problem:
        raise ValueError(f"{path}: {option}(*args, **kwargs) returned a key that {problem}: {value[:80]!r}")
    return value


def valid_limit(value) -> bool:
    """Whether a stored concurrency_limit is one a declaration could give (1 to MAX_CONCURRENCY)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CONCURRENCY


def valid_running(value) -> bool:
    """Whether a stored running count is a count (0 to the column's maximum)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RUNNING


def counts_on_key(job) -> bool:
    """Whether ``job``'s attempt counts on its key's running count: it has a key and a valid limit.
    The claim adds exactly these, every way out of RUNNING takes exactly these away, and the
    stale sweep's mend counts exactly these (a damaged job is claimed only to fail alone)."""
    return isinstance(job.limit_key, str) and valid_limit(job.concurrency_limit)


def unique_key(task, args: list, kwargs: dict) -> str | None:
    """The job's unique key: the task path plus its arguments (``unique=True``), or plus what
    ``unique(*args, **kwargs)`` says; None when the task is not unique."""
    unique = getattr(task, "unique", False)
    if not unique:
        return None
    path = task.module_path
    if unique is True:
        call = json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"))
        return f"{path}:{hashlib.sha256(call.encode()).hexdigest()}"
    return _bounded(path, _user_key("unique", unique, path, args, kwargs))


def limit_key(task, args: list, kwargs: dict) -> str | None:
    """The key the job's limits count on: its concurrency key (shared by every task that gives
    it), or the task itself when it has only a rate limit; None without limits."""
    key = getattr(task, "concurrency_key", None)
    if key is not None:
        return key if isinstance(key, str) else _user_key("concurrency_key", key, task.module_path, args, kwargs)
    if getattr(task, "rate_limit", None):
        return f"task:{task.module_path}"[:255]
    return None


def room(*, running: int, concurrency_limit: int | None, starts: Sequence[float], rate: Rate | None,
         now: float) -> int:
    """How many more jobs of a key may start now (0: held back)."""
    free = []
    if concurrency_limit is not None:
        free.append(concurrency_limit - running)
    if rate is not None:
        free.append(rate.count - sum(1 for start in starts if start > now - rate.period))
    return max(min(free), 0) if free else 1_000_000


def recorded_starts(starts: Sequence[float], count: int, *, now: float, rate: Rate | None) -> list[float]:
    """The start log after ``count`` more attempts started at ``now``: what the window still needs."""
    if rate is None:
        return []
    recent = [start for start in starts if start > now - rate.period]
    return (recent + [now] * count)[-rate.count:]


def held_back(*, running: int, concurrency_limit: int | None, starts: Sequence[float], rate: Rate | None,
              now: float) -> str:
    """Why a key's READY jobs wait (for the admin), or "" when the key has room."""
    reasons = []
    if concurrency_limit is not None and running >= concurrency_limit:
        reasons.append(f"{running} of {concurrency_limit} running")
    if rate is not None:
        recent = sum(1 for start in starts if start > now - rate.period)
        if recent >= rate.count:
            reasons.append(f"rate limited: {recent} started in the last {rate.period:g} s ({rate.text})")
    return "; ".join(reasons)
