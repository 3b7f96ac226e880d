"""Job control as the harness sees it: concurrency limits and unique keys, sampled all run long.

A thread reads the job table every quarter of a second: per concurrency key, how many
jobs are RUNNING against the key's limit; per unique key, how many jobs are READY.
RUNNING rows are what the claim counts (a frozen worker's rows stay RUNNING until they
are taken back, and keep their places until then), so a sample over a limit, or two
READY jobs of one unique key, is a broken promise, whatever the faults. The checker
also holds the tasks' own effects against the limits (chaos.check), which sees what
the samples miss between two reads.
"""

from __future__ import annotations

import threading

from .database import retrying

EVERY = 0.25  # seconds between samples


class LimitSamples(threading.Thread):
    def __init__(self):
        super().__init__(name="chaos-limits", daemon=True)
        self.samples = 0
        self.peaks: dict[str, tuple[int, int]] = {}  # concurrency key -> (most RUNNING seen, its limit)
        self.doubled: dict[str, int] = {}  # unique key -> most READY jobs seen at once (when 2 or more)
        self.done = threading.Event()

    def run(self) -> None:
        from django.db import connection

        while not self.done.wait(EVERY):
            running, doubled = retrying(_sample, attempts=1, default=([], []))
            self.samples += 1
            for key, n, limit in running:
                if n > self.peaks.get(key, (0, 0))[0]:
                    self.peaks[key] = (n, limit)
            for key, n in doubled:
                self.doubled[key] = max(n, self.doubled.get(key, 0))
        connection.close()


def _sample() -> tuple[list, list]:
    from django.db.models import Count, Max

    from jobs.models import Job, JobStatus

    with_limits = Job.objects.filter(status=JobStatus.RUNNING, limit_key__isnull=False, concurrency_limit__isnull=False)
    running = [(row["limit_key"], row["n"], row["limit"]) for row in with_limits.values("limit_key").annotate(
        n=Count("id"), limit=Max("concurrency_limit")).order_by()]
    doubled = list(Job.objects.filter(status=JobStatus.READY, unique_key__isnull=False).values("unique_key").annotate(
        n=Count("id")).filter(n__gt=1).order_by().values_list("unique_key", "n"))
    return running, doubled
