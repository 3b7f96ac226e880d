"""Option types shared by every management command: one rule per kind of value.

Each is an argparse ``type=``, so a bad value stops the command while its arguments
are parsed, before anything runs, with argparse's ``argument --sleep: ...`` naming
the option. Django turns that into a ``CommandError`` under ``call_command`` and
into the usage line, the message and exit status 2 on the command line: never a
traceback. Defaults given as strings go through the same rule.
"""

from __future__ import annotations

import argparse
import math

# A longer time is a typo (a century); datetime arithmetic overflows not far beyond.
MAX_SECONDS = 100 * 365.25 * 86400
# Job threads of one worker process. Each holds a database connection of its own (PostgreSQL
# allows 100 by default) and all share one GIL, so past a few hundred a process only waits on
# locks: run more worker processes instead.
MAX_CONCURRENCY = 256
MAX_PROCESSES = 64  # --processes: more would exhaust most databases' connections before the CPU
# --max-memory, in MiB: past a tebibyte it is a typo.
MAX_MEMORY_MB = 1024 * 1024
# --max-jobs: a worker that runs a billion jobs before it is recycled is not being recycled.
MAX_JOBS = 1_000_000_000
# Rows per statement or transaction of the batched commands: SQLite takes at most 32,766
# parameters per statement, and a longer transaction holds its locks longer.
MAX_BATCH_SIZE = 10_000


def seconds(*, positive: bool = False, minimum: float = 0.0):
    """A finite number of seconds, >= 0 (> 0 when ``positive``; >= ``minimum``), at most MAX_SECONDS."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
        if value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {'>' if positive else '>='} 0 seconds, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g} seconds, got {text!r}")
        if value > MAX_SECONDS:
            raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS:.0f} seconds (100 years), got {text!r}")
        return value

    return parse


def bounded_int(low: int, high: int):
    """An integer from ``low`` to ``high``, both included."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {text!r}")
        return value

    return parse


def backend_alias(text: str) -> str:
    """A ``TASKS`` alias whose backend is ``jobs.backends.DatabaseBackend`` with valid OPTIONS."""
    from django.core.exceptions import ImproperlyConfigured

    from jobs.backends import DatabaseBackend
    from jobs.framework import task_backends

    try:
        backend = task_backends[text]
    except Exception as exc:  # InvalidTaskBackend: no such alias, or its BACKEND does not import
        raise argparse.ArgumentTypeError(f"{text!r} is not a usable TASKS alias: {exc}") from None
    if not isinstance(backend, DatabaseBackend):
        raise argparse.ArgumentTypeError(
            f"TASKS[{text!r}] is {type(backend).__name__}, not jobs.backends.DatabaseBackend")
    try:
        backend.jobs_options  # noqa: B018  (parsed once, cached; a bad value names its key)
    except ImproperlyConfigured as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def database_alias(text: str) -> str:
    """An alias of ``DATABASES``."""
    from django.db import connections

    if text not in connections:
        raise argparse.ArgumentTypeError(f"{text!r} is not in DATABASES ({', '.join(connections)})")
    return text
