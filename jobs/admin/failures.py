"""Failures by cause (``/admin/jobs/job/failures/``): failed jobs grouped by task and exception class.

One GROUP BY over ``jobs_job_failures_idx`` (FAILED jobs only, by task path, exception
class, id and finish time: index-only, however many successful jobs the table holds)
gives each group's counts over the last hour, 24 hours and 7 days; one more query reads
the newest message of each group, from its newest job. Each group links to the job list
filtered to it, where "Requeue selected jobs" with "select all" requeues the whole group
(in batches, see actions.requeue_jobs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.db.models import Count, Max, Q

from ..models import Job, JobStatus
from .changelist import LastErrorMessage

MAX_GROUPS = 200  # the most recently failing first; more causes than this is a page nobody reads
WINDOWS = (("hour", timedelta(hours=1)), ("day", timedelta(hours=24)), ("week", timedelta(days=7)))


@dataclass
class FailureGroup:
    task_path: str
    error_class: str
    total: int
    hour: int
    day: int
    week: int
    last_failed_at: datetime | None
    newest_id: int = 0
    message: str = ""

    @property
    def task_name(self) -> str:
        return self.task_path.rsplit(".", 1)[-1]

    def list_query(self) -> str:
        """The job list's query string for this group (status, task and exception class)."""
        return urlencode({"status__exact": JobStatus.FAILED.value, "task": self.task_path,
                          "error_class": self.error_class})


def failure_groups(now: datetime, limit: int = MAX_GROUPS) -> list[FailureGroup]:
    """Every (task, exception class) with FAILED jobs, the most failures in 7 days first."""
    windows = {name: Count("id", filter=Q(finished_at__gte=now - span)) for name, span in WINDOWS}
    failed = Job.objects.order_by().filter(status=JobStatus.FAILED)
    rows = list(failed.values("task_path", "error_class")
                .annotate(total=Count("id"), last_failed_at=Max("finished_at"), **windows)
                .order_by("-week", "-day", "-total", "task_path", "error_class")[:limit])
    groups = [FailureGroup(**row) for row in rows]
    # The newest failure of each group (its latest finish; the highest id among equals), with the
    # start of its message: one query, reading each shown group's index entries once more.
    newest = Q(pk__in=[])
    for group in groups:
        newest |= Q(task_path=group.task_path, error_class=group.error_class, finished_at=group.last_failed_at)
    found: dict[tuple[str, str], tuple[int, str]] = {}
    for task_path, error_class, pk, message in (failed.filter(newest).annotate(message=LastErrorMessage())
                                                .values_list("task_path", "error_class", "pk", "message")):
        key = (task_path, error_class)
        if key not in found or pk > found[key][0]:
            found[key] = (pk, message or "")
    for group in groups:
        group.newest_id, group.message = found.get((group.task_path, group.error_class), (0, ""))
    return groups
