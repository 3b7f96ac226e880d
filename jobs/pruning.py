"""Deleting old finished jobs in small batches, so the table stays small and no lock is long.

Each batch is its own short transaction touching at most ``batch_size`` rows, so
workers and the admin never wait behind a prune.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction

from .framework import DEFAULT_TASK_BACKEND_ALIAS
from .models import FINISHED_STATUSES, Job, JobBatch, JobDependency, JobStatus

logger = logging.getLogger(__name__)


def prune(*, now: datetime, retain_successful: float, retain_failed: float, batch_size: int = 1000,
          dry_run: bool = False, backend: str = DEFAULT_TASK_BACKEND_ALIAS) -> dict[str, int]:
    """Delete the ``backend`` alias's SUCCESSFUL jobs finished over ``retain_successful`` s
    ago, FAILED and CANCELLED ones over ``retain_failed`` s ago (each alias keeps jobs as
    long as its own OPTIONS say). Returns the counts per status group."""
    groups = {
        "successful": ((JobStatus.SUCCESSFUL,), retain_successful),
        "failed": ((JobStatus.FAILED, JobStatus.CANCELLED), retain_failed),
    }
    counts = {}
    for name, (statuses, retain) in groups.items():
        old = kept_back(Job.objects.filter(backend=backend, status__in=statuses,
                                           finished_at__lt=now - timedelta(seconds=retain)))
        if dry_run:
            counts[name] = old.count()
            continue
        deleted = 0
        while True:
            with transaction.atomic():
                ids = list(old.order_by("finished_at").values_list("id", flat=True)[:batch_size])
                if not ids:
                    break
                deleted += len(Job.objects.filter(id__in=ids).delete_jobs())
        counts[name] = deleted
    logger.info("prune done dry_run=%s successful=%d failed=%d", dry_run, counts["successful"], counts["failed"])
    return counts


def kept_back(jobs):
    """``jobs`` less those something still needs: a member of a batch that has not finished (its
    page lists it) and a parent of a child that has not ended (``parent_results()`` reads it)."""
    open_batches = JobBatch.objects.filter(finished_at__isnull=True).values("pk")
    needed = JobDependency.objects.exclude(child__status__in=FINISHED_STATUSES).values("parent_id")
    return jobs.exclude(batch_id__in=open_batches).exclude(has_dependents=True, pk__in=needed)

