"""What ``manage.py jobs_status`` says about a snapshot: thresholds broken, JSON, a table.

Pure functions of a ``jobs.stats.Snapshot``, so the command stays thin and the wording
of each problem lives in one place (the command prints it on stderr and in its first
line, which is what Nagios shows).
"""

from __future__ import annotations

from dataclasses import dataclass

from .counts import EXACT_UP_TO
from .models import JobStatus
from .stats import Snapshot
from .templatetags.jobs_admin import human_duration

SCHEMA_VERSION = 1
STATUSES = [status.value for status in JobStatus]


@dataclass(frozen=True)
class Thresholds:
    max_lag: float | None = None  # seconds
    min_workers: int | None = None
    max_failed: int | None = None  # jobs failed for good in the last 24 h

    @property
    def given(self) -> bool:
        return any(value is not None for value in (self.max_lag, self.min_workers, self.max_failed))


def problems(snap: Snapshot, limits: Thresholds) -> list[str]:
    """One line per broken threshold, naming the queue, the count and the option."""
    found = []
    if limits.max_lag is not None:
        for queue in snap.queues:
            if queue.lag is not None and not queue.paused and queue.lag_seconds > limits.max_lag:
                found.append(f"lag: queue {queue.name!r} has a job waiting {queue.lag_seconds:.1f} s "
                             f"(over --max-lag {limits.max_lag:g})")
    if limits.min_workers is not None and len(snap.workers) < limits.min_workers:
        found.append(f"workers: {len(snap.workers)} alive, heartbeat within {snap.stale_after:g} s "
                     f"(under --min-workers {limits.min_workers})")
    if limits.max_failed is not None and snap.failed_24h > limits.max_failed:
        worst = ", ".join(f"{row['task_path']} {row['failures']}" for row in snap.failing[:3])
        found.append(f"failed: {snap.failed_24h} jobs failed in the last 24 h "
                     f"(over --max-failed {limits.max_failed}; {worst})")
    return found


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def as_json(snap: Snapshot, limits: Thresholds, found: list[str]) -> dict:
    """The report for scripts; the README's Operations section documents every key."""
    return {
        "schema": SCHEMA_VERSION,
        "now": _iso(snap.now),
        "ok": not found,
        "problems": found,
        "thresholds": {"max_lag": limits.max_lag, "min_workers": limits.min_workers, "max_failed": limits.max_failed},
        "stale_after": snap.stale_after,
        "queues": [{
            "name": q.name,
            "backend": q.backend,
            "paused": q.paused,
            "counts": {status: q.count(status) for status in STATUSES},
            "due": q.due,
            "scheduled": q.scheduled,
            "lag_seconds": round(q.lag_seconds, 3) if q.lag is not None else None,
            "oldest_due": _iso(q.oldest_due),
            "estimated": sorted({*q.estimated, *(["scheduled"] if q.scheduled_estimated else [])}),
        } for q in snap.queues],
        "workers": [{
            "worker_id": w["worker"].worker_id,
            "hostname": w["worker"].hostname,
            "pid": w["worker"].pid,
            "queues": list(w["worker"].queues or []),
            "concurrency": w["worker"].concurrency,
            "parent": w["worker"].parent or None,
            "busy": w["running"],
            "started_at": _iso(w["worker"].started_at),
            "heartbeat_at": _iso(w["worker"].heartbeat_at),
            "heartbeat_age_seconds": round(w["heartbeat_age"], 3),
        } for w in snap.workers],
        "failed_24h": {
            "total": snap.failed_24h,
            "by_task": [{"task": row["task_path"], "failures": row["failures"],
                         "last_failure": _iso(row["last_failure"])} for row in snap.failing],
        },
        "finished_last_hour": {"successful": snap.totals["successful_hour"], "failed": snap.totals["failed_hour"]},
    }


def _number(value: int, estimated: bool) -> str:
    return f"~{value:,}" if estimated else f"{value:,}"


def _table(header: list[str], rows: list[list[str]], numeric_from: int) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).rjust(width) if index >= numeric_from else str(cell).ljust(width)
                 for index, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def summary(snap: Snapshot, limits: Thresholds, found: list[str]) -> str:
    """The first line: OK or FAILING (when thresholds were given), then the headline numbers."""
    lag = human_duration(snap.max_lag_seconds) if snap.max_lag is not None else "none"
    queues, workers = len(snap.queues), len(snap.workers)
    text = (f"{queues} queue{'' if queues == 1 else 's'}, {workers} worker{'' if workers == 1 else 's'} alive, "
            f"longest lag {lag}, {snap.failed_24h} failed in 24 h")
    if found:
        return f"FAILING: {'; '.join(found)} | {text}"
    return f"OK: {text}" if limits.given else text


def as_text(snap: Snapshot, limits: Thresholds, found: list[str]) -> str:
    """The report for people: a summary line, then queues, workers and failing tasks as tables."""
    lines = [summary(snap, limits, found), ""]
    rows = []
    for q in snap.queues:
        rows.append([q.name, "paused" if q.paused else "active", _number(q.due, "due" in q.estimated),
                     _number(q.scheduled, q.scheduled_estimated)]
                    + [_number(q.count(s), s in q.estimated)
                       for s in (JobStatus.WAITING, JobStatus.RUNNING, JobStatus.SUCCESSFUL, JobStatus.FAILED,
                                 JobStatus.CANCELLED)]
                    + [human_duration(q.lag_seconds) if q.lag is not None else "-"])
    lines += _table(["queue", "state", "due", "later", "waiting", "running", "successful", "failed", "cancelled",
                     "lag"],
                    rows, numeric_from=2)
    if any("~" in cell for row in rows for cell in row):
        lines.append(f"~ the database's estimate: counts over {EXACT_UP_TO:,} are not read row by row")
    lines += ["", f"workers alive (heartbeat within {snap.stale_after:g} s): {len(snap.workers)}"]
    if snap.workers:
        parents = any(w["worker"].parent for w in snap.workers)  # a column only when --processes is in use
        lines += _table(["worker", *(["parent"] if parents else []), "queues", "busy", "last heartbeat"],
                        [[w["worker"].worker_id, *([w["worker"].parent or "-"] if parents else []),
                          ",".join(w["worker"].queues or []) or "all",
                          f"{w['running']}/{w['worker'].concurrency}", f"{human_duration(w['heartbeat_age'])} ago"]
                         for w in snap.workers], numeric_from=3 if parents else 2)
    totals = snap.totals
    lines += ["", f"finished in the last hour: {totals['successful_hour']:,} successful, "
                  f"{totals['failed_hour']:,} failed",
              f"failed in the last 24 h: {snap.failed_24h:,}"]
    if snap.failing:
        lines += _table(["task", "failures", "last failure"],
                        [[row["task_path"], f"{row['failures']:,}",
                          row["last_failure"].isoformat(timespec="seconds") if row["last_failure"] else "unreadable"]
                         for row in snap.failing], numeric_from=1)
    return "\n".join(lines)
