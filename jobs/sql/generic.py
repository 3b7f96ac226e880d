"""Other databases (MySQL 8, MariaDB): the same verbs through the ORM, without RETURNING.

Not tested here (this project runs PostgreSQL and SQLite); kept so that the queue
still works, more slowly, where Django does. Concurrency and rate limits are not
enforced here: the claim takes jobs with limits like any other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from django.db import models, transaction
from django.db.models import F

from ..models import Job, JobLimit, JobStatus, QueueState
from ..rows import CLAIMED, STALE, ClaimedJob, claim_order
from .base import INSERT_DEFAULTS, INSERT_FIELDS, Statements


def _as_claimed(values: dict) -> ClaimedJob:
    return ClaimedJob(**values)


class GenericStatements(Statements):
    vendor = "generic"

    def _jobs(self):
        return Job.objects.using(self.connection.alias)

    def insert_job(self, values: dict, *, notify: str | None) -> int | None:
        from django.db import IntegrityError

        try:
            with transaction.atomic(using=self.connection.alias):
                return self._jobs().create(
                    **{name: values.get(name, INSERT_DEFAULTS.get(name)) for name in INSERT_FIELDS}).pk
        except IntegrityError:
            if values.get("unique_key"):
                return None
            raise

    def insert_jobs(self, rows: Sequence[dict], *, notify: str | None) -> list[int]:
        if any(row.get("unique_key") for row in rows):  # one by one: a taken key skips its row alone
            return [pk for pk in (self.insert_job(row, notify=notify) for row in rows) if pk is not None]
        made = self._jobs().bulk_create(
            [Job(**{name: row.get(name, INSERT_DEFAULTS.get(name)) for name in INSERT_FIELDS}) for row in rows])
        return [job.pk for job in made]

    def insert_calls(self, common: dict, batches: Sequence[str], *, notify: str | None) -> list[tuple[int, str]]:
        inserted = []
        for call in (call for text in batches for call in json.loads(text)):
            args, kwargs, unique, limit = (call + [None, None])[:4]
            job_id = self.insert_job(dict(common, args=args, kwargs=kwargs, unique_key=unique, limit_key=limit),
                                     notify=notify)
            if job_id is not None:
                inserted.append((job_id, unique))
        return inserted

    def ensure_limits(self, keys: Sequence[str]) -> None:
        for key in dict.fromkeys(keys):
            JobLimit.objects.using(self.connection.alias).get_or_create(key=key)

    def claim(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        paused = QueueState.objects.filter(paused=True).values("name")
        candidates = self._jobs().filter(status=JobStatus.READY, run_after__lte=now, backend=backend).exclude(
            queue_name__in=paused)
        if queues:
            candidates = candidates.filter(queue_name__in=list(queues))
        with transaction.atomic(using=self.connection.alias):
            ids = list(candidates.order_by("-priority", "run_after", "id")
                       .select_for_update(skip_locked=True).values_list("id", flat=True)[:limit])
            if not ids:
                return []
            self._jobs().filter(id__in=ids).update(
                status=JobStatus.RUNNING, attempts=F("attempts") + 1, worker_id=worker_id, heartbeat_at=now,
                last_attempted_at=now, started_at=models.functions.Coalesce("started_at", now), progress=None,
                cancel_requested_at=None)
            jobs = [_as_claimed(values) for values in self._jobs().filter(id__in=ids).values(*CLAIMED)]
        jobs.sort(key=claim_order)
        return jobs

    def finish_and_claim(self, successes, *, worker_id: str, now: datetime, limit: int, queues,
                         backend: str) -> tuple[set[int], list[ClaimedJob]]:
        written = set()
        with transaction.atomic(using=self.connection.alias):
            for job, value in successes:
                if self._jobs().filter(pk=job.id, status=JobStatus.RUNNING, attempts=job.attempts,
                                       worker_id=worker_id, batch_id__isnull=True, has_dependents=False).update(
                        status=JobStatus.SUCCESSFUL, return_value=value, finished_at=now, heartbeat_at=None,
                        cancel_requested_at=None, worker_ids=[*job.worker_ids, worker_id]):
                    written.add(job.id)
            claimed = self.claim(worker_id=worker_id, limit=limit, now=now, queues=queues,
                                 backend=backend) if limit > 0 else []
        return written, claimed

    def mend_counts(self, *, limit: int = 1000) -> list:
        return []  # this claim keeps no counts (it does not enforce limits)

    def stale(self, *, cutoff: datetime, backend: str, limit: int,
              worker_id: str | None = None) -> list[ClaimedJob]:
        rows = self._jobs().filter(status=JobStatus.RUNNING, backend=backend, heartbeat_at__lt=cutoff)
        if worker_id is not None:
            rows = rows.filter(worker_id=worker_id)
        rows = rows.order_by("heartbeat_at").values(*STALE)[:limit]
        return [_as_claimed(values) for values in rows]
