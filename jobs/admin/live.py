"""What the live overview adds to the shared snapshot: the last hour per task and per queue,
the jobs each worker runs now, and the workers lost in the last day.

Each is one query bounded by an index: finishes of the last hour through
``jobs_job_finished_idx`` (the durations of at most ``DURATION_SAMPLE`` of them, the newest),
RUNNING jobs through ``jobs_job_running_idx``, workers from their own small table.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Q

from ..models import Job, JobStatus, WorkerProcess
from ..stats import SecondsBetween

HOUR = timedelta(hours=1)
DURATION_SAMPLE = 20_000  # newest finishes of the hour whose durations give the percentiles
RUNNING_SHOWN = 200  # running jobs listed under their workers, at most
# A worker that stopped beating stays listed as lost this long (its row is kept as long:
# jobs.worker.liveness.LOST_WORKERS_KEPT).
LOST_FOR = timedelta(days=1)


@dataclass
class TaskHour:
    task_path: str
    ran: int = 0
    failed: int = 0
    durations: list[float] = field(default_factory=list, repr=False)

    @property
    def task_name(self) -> str:
        return self.task_path.rsplit(".", 1)[-1]

    @property
    def failure_rate(self) -> float:
        return self.failed / self.ran if self.ran else 0.0

    @property
    def failure_percent(self) -> str:
        return f"{self.failure_rate * 100:.1f} %" if self.failed else "0 %"

    def percentile(self, share: float) -> float | None:
        """The nearest-rank percentile of the sampled durations (seconds)."""
        if not self.durations:
            return None
        ordered = sorted(self.durations)
        return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]

    @property
    def p50(self) -> float | None:
        return self.percentile(0.5)

    @property
    def p95(self) -> float | None:
        return self.percentile(0.95)


def last_hour(now: datetime) -> tuple[list[TaskHour], list[dict]]:
    """(per task: ran, failed, p50 and p95 of the last attempt's duration; per queue: ran, failed),
    over the jobs that ended SUCCESSFUL or FAILED in the last hour, busiest first."""
    finished = Job.objects.order_by().filter(finished_at__gte=now - HOUR,
                                             status__in=[JobStatus.SUCCESSFUL, JobStatus.FAILED])
    tasks: dict[str, TaskHour] = {}
    queues: dict[str, dict] = defaultdict(lambda: {"ran": 0, "failed": 0})
    for task_path, queue_name, ran, failed in (finished.values("task_path", "queue_name")
                                               .annotate(ran=Count("pk"),
                                                         failed=Count("pk", filter=Q(status=JobStatus.FAILED)))
                                               .values_list("task_path", "queue_name", "ran", "failed")):
        row = tasks.setdefault(task_path, TaskHour(task_path))
        row.ran += ran
        row.failed += failed
        queues[queue_name]["ran"] += ran
        queues[queue_name]["failed"] += failed
    sample = (finished.filter(last_attempted_at__isnull=False).order_by("-finished_at")
              .annotate(seconds=SecondsBetween("finished_at", "last_attempted_at"))
              .values_list("task_path", "seconds")[:DURATION_SAMPLE])
    for task_path, seconds in sample:
        if task_path in tasks and seconds is not None:
            tasks[task_path].durations.append(max(float(seconds), 0.0))
    by_task = sorted(tasks.values(), key=lambda row: (-row.ran, row.task_path))
    by_queue = [{"name": name, **counts, "per_minute": counts["ran"] / 60}
                for name, counts in sorted(queues.items(), key=lambda item: (-item[1]["ran"], item[0]))]
    return by_task, by_queue


def running_by_worker(limit: int = RUNNING_SHOWN) -> dict[str, list[dict]]:
    """The jobs RUNNING now, by the worker holding them (the longest running first)."""
    jobs: dict[str, list[dict]] = defaultdict(list)
    for row in (Job.objects.running().order_by("last_attempted_at", "pk")
                .values("pk", "task_path", "worker_id", "last_attempted_at")[:limit]):
        row["task_name"] = row["task_path"].rsplit(".", 1)[-1]
        jobs[row["worker_id"]].append(row)
    return dict(jobs)


def lost_workers(now: datetime, stale: float) -> list[dict]:
    """Workers whose heartbeat stopped in the last day: listed as lost, not dropped."""
    cutoff = now - timedelta(seconds=stale)
    return [{"worker": worker, "silent_for": max((now - worker.heartbeat_at).total_seconds(), 0.0)}
            for worker in WorkerProcess.objects.filter(heartbeat_at__lt=cutoff, heartbeat_at__gte=now - LOST_FOR)
            .order_by("-heartbeat_at")]


def held_back_keys(limit_keys: list[dict], now: datetime) -> int:
    """Mark each of the overview's limit keys whose waiting jobs a limit holds back now (``row["held"]``:
    why, or ""), and return how many jobs wait on such keys. One probe per key with waiting jobs (the
    overview shows 20 at most) for its limits, one query for the keys' counters."""
    from ..limits import held_back, parse_rate
    from ..models import JobLimit

    waiting = [row for row in limit_keys if row["waiting"]]
    counters = {row.key: row for row in JobLimit.objects.filter(key__in=[row["key"] for row in waiting])}
    total = 0
    for row in limit_keys:
        row["held"] = ""
    for row in waiting:
        limits = (Job.objects.filter(status=JobStatus.READY, limit_key=row["key"]).order_by()
                  .values_list("concurrency_limit", "rate_limit").first())
        if limits is None:
            continue
        concurrency, rate_text = limits
        try:
            rate = parse_rate(rate_text) if rate_text else None
        except ValueError:
            rate = None
        counter = counters.get(row["key"])
        starts = counter.starts if counter is not None and isinstance(counter.starts, list) else []
        row["held"] = held_back(running=counter.running if counter else 0, concurrency_limit=concurrency,
                                starts=[s for s in starts if isinstance(s, (int, float))], rate=rate,
                                now=now.timestamp())
        if row["held"]:
            total += row["waiting"]
    return total
