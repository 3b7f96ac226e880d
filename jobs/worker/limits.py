"""When a worker should end by itself, to be replaced by a fresh process: ``--max-jobs``, ``--max-memory``.

Task code that leaks (a cache that only grows, a library that keeps what it was
given, fragmentation) makes a long-lived worker grow until the machine swaps. A
worker that ends cleanly after N jobs, or once its resident memory passes a bound,
and is started again by its supervisor (systemd's ``Restart=always``), starts
from a clean slate: the cure for leaks one cannot fix. Either limit stops the
claiming only; the jobs running then finish, and the worker exits 0 as after
SIGTERM.

Memory is read from ``/proc/self/statm`` (Linux: the resident set now), else from
``getrusage`` (the peak resident set, which for this purpose says the same: the
process grew that far), at most every ``MEMORY_CHECK_EVERY`` seconds: reading
costs microseconds, but a busy worker turns its loop thousands of times a second.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

MEMORY_CHECK_EVERY = 0.25  # seconds
MEBIBYTE = 1024 * 1024


def rss_bytes() -> int | None:
    """This process's resident memory in bytes, or None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


class Limits:
    """``max_jobs`` attempts finished, ``max_memory`` MiB resident (0: no limit)."""

    def __init__(self, *, max_jobs: int = 0, max_memory: int = 0, rss: Callable[[], int | None] = rss_bytes):
        self.max_jobs = max_jobs
        self.max_memory = max_memory
        self.rss = rss
        self._memory_checked = float("-inf")

    def reached(self, *, jobs_done: int, now: float) -> str | None:
        """Why the worker should stop claiming now (``jobs_done`` attempts finished by ``now``,
        monotonic), or None."""
        if self.max_jobs and jobs_done >= self.max_jobs:
            return f"max-jobs {self.max_jobs} reached ({jobs_done} finished)"
        if self.max_memory and now - self._memory_checked >= MEMORY_CHECK_EVERY:
            self._memory_checked = now
            rss = self.rss()
            if rss is not None and rss > self.max_memory * MEBIBYTE:
                return f"max-memory {self.max_memory} MiB passed (resident {rss / MEBIBYTE:.0f} MiB)"
        return None
