"""The job table, its state filters, the claim query and the named state changes.

A job is one launch of a task: one row, from READY through RUNNING to SUCCESSFUL or
FAILED (or CANCELLED), keeping its id across retries and requeues. Every change of
``status`` goes through a method here that writes only the columns it changes, and
every change made on behalf of a running attempt is *fenced*: it matches the
attempt number and the worker that holds it, so a worker that was presumed lost and
wakes up later cannot overwrite an attempt another worker has taken over.
"""

from __future__ import annotations

import json
import traceback as traceback_module
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.db import connections, models, router, transaction
from django.db.models import F, Q
from django.db.models.expressions import Col, RawSQL
from django.utils import timezone

from .framework import TaskResultStatus


class JobStatus(models.TextChoices):
    READY = TaskResultStatus.READY.value, "Ready"
    RUNNING = TaskResultStatus.RUNNING.value, "Running"
    SUCCESSFUL = TaskResultStatus.SUCCESSFUL.value, "Successful"
    FAILED = TaskResultStatus.FAILED.value, "Failed"
    # Never ran and never will: cancelled from the admin. Shown to Django's API as FAILED.
    CANCELLED = "CANCELLED", "Cancelled"


CLAIM_INDEX = "jobs_job_claim_idx"  # the partial index of due READY jobs, in claim order

FINISHED_STATUSES = (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELLED)

# Columns a claim hands back: what a worker needs to run the job and record it.
CLAIM_FIELDS = (
    "id", "task_path", "backend", "queue_name", "priority", "args", "kwargs", "status", "run_after",
    "enqueued_at", "started_at", "last_attempted_at", "finished_at", "attempts", "max_attempts", "worker_id",
    "heartbeat_at", "errors", "worker_ids", "meta",
)


def error_entry(exc: BaseException, *, attempt: int, worker_id: str, when: datetime,
                traceback: str | None = None) -> dict:
    """One failed attempt as stored in ``Job.errors``: class path, message, traceback."""
    cls = type(exc)
    return {
        "attempt": attempt,
        "exception_class_path": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc),
        "traceback": traceback if traceback is not None else "".join(traceback_module.format_exception(exc)),
        "worker_id": worker_id,
        "at": when.isoformat(),
    }


class JobQuerySet(models.QuerySet):
    def ready(self):
        return self.filter(status=JobStatus.READY)

    def due(self, now: datetime):
        return self.ready().filter(run_after__lte=now)

    def running(self):
        return self.filter(status=JobStatus.RUNNING)

    def finished(self):
        return self.filter(status__in=FINISHED_STATUSES)

    def stale(self, cutoff: datetime):
        """RUNNING jobs whose worker has not heartbeaten since ``cutoff``."""
        return self.running().filter(heartbeat_at__lt=cutoff)

    # -- the claim: the only place that takes READY jobs -------------------------------

    def claim(self, *, worker_id: str, limit: int, now: datetime, queues: Sequence[str] | None = None) -> list[Job]:
        """Take up to ``limit`` due jobs for ``worker_id``, marking them RUNNING.

        One statement, one short transaction (or part of the caller's): the rows are
        chosen by priority, then ``run_after``, then enqueue order, locked with
        ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so concurrent workers take disjoint
        rows without waiting, and updated with ``RETURNING`` so no second round
        trip is needed. On SQLite the single UPDATE runs under the database's write
        lock, which makes it just as exclusive across processes.
        """
        if limit <= 0:
            return []
        connection = connections[router.db_for_write(Job)]
        if connection.vendor in ("postgresql", "sqlite"):
            jobs = _claim_returning(connection, worker_id=worker_id, limit=limit, now=now, queues=queues)
        else:
            jobs = _claim_select_then_update(self, worker_id=worker_id, limit=limit, now=now, queues=queues)
        jobs.sort(key=lambda job: (-job.priority, job.run_after, job.id))
        return jobs

    def mark_successful_many(self, outcomes: Sequence[tuple[Job, object]], *, now: datetime) -> set[int]:
        """Record many successes in one round trip, each fenced like ``Job.mark_successful``.

        The worker's hot path: one prepared UPDATE run for every row (executemany), not
        one ORM query built per job. Returns the ids that were still ours to record.
        """
        if not outcomes:
            return set()
        connection = connections[router.db_for_write(Job)]
        meta = Job._meta
        qn = connection.ops.quote_name
        col = {name: qn(meta.get_field(name).column) for name in
               ("id", "status", "return_value", "finished_at", "heartbeat_at", "worker_ids", "attempts", "worker_id")}
        sql = (f"UPDATE {qn(meta.db_table)} SET {col['status']} = %s, {col['return_value']} = %s, "
               f"{col['finished_at']} = %s, {col['heartbeat_at']} = NULL, {col['worker_ids']} = %s "
               f"WHERE {col['id']} = %s AND {col['status']} = %s AND {col['attempts']} = %s AND {col['worker_id']} = %s")
        json_field = meta.get_field("return_value")
        now_db = meta.get_field("finished_at").get_db_prep_value(now, connection)
        rows = [(JobStatus.SUCCESSFUL.value, json_field.get_db_prep_value(value, connection), now_db,
                 json_field.get_db_prep_value([*job.worker_ids, job.worker_id], connection),
                 job.pk, JobStatus.RUNNING.value, job.attempts, job.worker_id) for job, value in outcomes]
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)
            written = cursor.rowcount
        ids = {job.pk for job, _ in outcomes}
        if written == len(outcomes):
            return ids
        # Some attempt was taken over meanwhile (rare): find out which rows we wrote.
        held = {(job.pk, job.attempts, job.worker_id) for job, _ in outcomes}
        return {pk for pk, attempts, worker in Job.objects.filter(pk__in=ids, status=JobStatus.SUCCESSFUL)
                .values_list("pk", "attempts", "worker_id") if (pk, attempts, worker) in held}

    def insert_many(self, common: dict, varying: Sequence[dict], *, batch_size: int = 500) -> list[int]:
        """INSERT many jobs that share most columns; returns their ids in order.

        Bulk enqueue's hot path: the shared values are prepared once, and each batch is
        one multi-row INSERT ... RETURNING, instead of the ORM preparing every field of
        every row.
        """
        connection = connections[router.db_for_write(Job)]
        if connection.vendor not in ("postgresql", "sqlite"):
            jobs = Job.objects.bulk_create([Job(**common, **row) for row in varying], batch_size=batch_size)
            return [job.pk for job in jobs]
        fields = [f for f in Job._meta.concrete_fields if not f.primary_key]
        varying_names = sorted({name for row in varying for name in row})
        prepared = {}
        for field in fields:
            if field.name not in varying_names:
                value = common[field.name] if field.name in common else field.get_default()
                prepared[field.name] = field.get_db_prep_save(value, connection)
        qn = connection.ops.quote_name
        table, columns = qn(Job._meta.db_table), ", ".join(qn(f.column) for f in fields)
        ids: list[int] = []
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql" and all(
                    isinstance(Job._meta.get_field(name), models.JSONField) for name in varying_names):
                # One statement per 5000 jobs with a handful of parameters: the varying JSON
                # comes as text arrays that unnest() turns into rows, in order.
                items = [f"v.{qn(f.column)}::jsonb" if f.name in varying_names else f"%s::{f.cast_db_type(connection)}"
                         for f in fields]
                sql = (f"INSERT INTO {table} ({columns}) SELECT {', '.join(items)} FROM unnest("
                       f"{', '.join(['%s::text[]'] * len(varying_names))}) WITH ORDINALITY "
                       f"AS v({', '.join(qn(Job._meta.get_field(n).column) for n in varying_names)}, ord) "
                       f"ORDER BY v.ord RETURNING {qn('id')}")
                constants = [prepared[f.name] for f in fields if f.name not in varying_names]
                for start in range(0, len(varying), 5000):
                    batch = varying[start:start + 5000]
                    arrays = [[json.dumps(row.get(name, Job._meta.get_field(name).get_default())) for row in batch]
                              for name in varying_names]
                    cursor.execute(sql, [*constants, *arrays])
                    ids.extend(row[0] for row in cursor.fetchall())
                return ids
            row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
            for start in range(0, len(varying), batch_size):
                batch = varying[start:start + batch_size]
                params = []
                for row in batch:
                    for field in fields:
                        if field.name in prepared:
                            params.append(prepared[field.name])
                        else:
                            value = row[field.name] if field.name in row else common.get(field.name, field.get_default())
                            params.append(field.get_db_prep_save(value, connection))
                cursor.execute(f"INSERT INTO {table} ({columns}) VALUES "
                               f"{', '.join([row_sql] * len(batch))} RETURNING {qn('id')}", params)
                ids.extend(row[0] for row in cursor.fetchall())
        return ids

    # -- changes made from outside a running attempt -----------------------------------

    def requeue(self, now: datetime | None = None, *, by: str = "") -> int:
        """Put finished jobs back to READY, due now, as the same jobs (same ids).

        Attempts start again from zero (a requeue is a fresh run, with all of
        ``max_attempts`` before it); earlier errors and their workers stay in the job's
        history, and ``meta["requeued"]`` says when and by whom. RUNNING and READY jobs
        are left alone: a running attempt is the worker's. One UPDATE, however many rows.
        """
        now = now or timezone.now()
        return self.filter(status__in=FINISHED_STATUSES).update(
            status=JobStatus.READY, run_after=now, attempts=0, started_at=None, last_attempted_at=None,
            finished_at=None, worker_id="", heartbeat_at=None, return_value=None,
            meta=JSONMerge("meta", {"requeued": {"at": now.isoformat(), "by": by}}),
        )

    def cancel(self, reason: str, now: datetime | None = None, *, by: str = "") -> int:
        """READY jobs to CANCELLED: they never run. ``meta["cancelled"]`` keeps the reason.

        Only READY rows match, in the same UPDATE, so a job a worker claimed a moment
        ago is left to run (on PostgreSQL the UPDATE waits for the claim's row lock and
        then sees RUNNING).
        """
        now = now or timezone.now()
        return self.ready().update(
            status=JobStatus.CANCELLED, finished_at=now,
            meta=JSONMerge("meta", {"cancelled": {"at": now.isoformat(), "by": by, "reason": reason}}),
        )

    def run_now(self, now: datetime | None = None) -> int:
        """READY jobs waiting for a later ``run_after`` (a delay or a retry) become due now."""
        now = now or timezone.now()
        return self.ready().filter(run_after__gt=now).update(run_after=now)


class JSONMerge(models.Func):
    """``column`` (a JSON object) with ``value``'s top-level keys set, inside an UPDATE."""

    output_field = models.JSONField()

    def __init__(self, column: str, value: dict):
        super().__init__(F(column), models.Value(value, output_field=models.JSONField()))

    def as_postgresql(self, compiler, connection, **extra):
        return self._merge(compiler, connection, "(COALESCE({col}, '{{}}'::jsonb) || {val})")

    def as_sqlite(self, compiler, connection, **extra):
        return self._merge(compiler, connection, "json_patch(COALESCE({col}, '{{}}'), {val})")

    def as_mysql(self, compiler, connection, **extra):
        return self._merge(compiler, connection, "JSON_MERGE_PATCH(COALESCE({col}, '{{}}'), {val})")

    def as_sql(self, compiler, connection, **extra):
        from django.db import NotSupportedError

        raise NotSupportedError(f"JSONMerge has no SQL for {connection.vendor}")

    def _merge(self, compiler, connection, template: str):
        column, value = self.get_source_expressions()
        col_sql, col_params = compiler.compile(column)
        val_sql, val_params = compiler.compile(value)
        return template.format(col=col_sql, val=val_sql), (*col_params, *val_params)


class Job(models.Model):
    task_path = models.CharField(max_length=255, help_text="Dotted path of the task object.")
    backend = models.CharField(max_length=64, default="default")
    queue_name = models.CharField(max_length=64, default="default")
    priority = models.SmallIntegerField(default=0, help_text="-100..100; higher runs first.")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.READY)
    run_after = models.DateTimeField(help_text="Earliest time the next attempt may start.")
    enqueued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True, help_text="Start of the first attempt.")
    last_attempted_at = models.DateTimeField(null=True, blank=True, help_text="Start of the latest attempt.")
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts started (the current one included).")
    max_attempts = models.PositiveIntegerField(default=3)
    worker_id = models.CharField(max_length=128, blank=True, default="", help_text="Worker holding or last holding the job.")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life of the holding worker.")
    worker_ids = models.JSONField(default=list, blank=True, help_text="Worker of each finished attempt.")
    return_value = models.JSONField(null=True, blank=True)
    errors = models.JSONField(default=list, blank=True, help_text="One entry per failed attempt, oldest first.")
    meta = models.JSONField(default=dict, blank=True, help_text="Where the job came from (schedule, import, ...).")

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The claim reads only due READY rows in claim order; finished rows, however
            # many millions, are not in this index at all.
            models.Index(F("priority").desc(), "run_after", "id", name=CLAIM_INDEX,
                         condition=Q(status="READY")),
            # The stale sweep reads only RUNNING rows.
            models.Index(fields=["heartbeat_at"], name="jobs_job_running_idx", condition=Q(status="RUNNING")),
            # The admin (jobs/admin.py). Each list filter reads its own index newest first; the
            # queue index also answers the overview's counts per queue and status and its lag
            # (index-only), and both leading columns give the filters their choices by a
            # loose index scan instead of a DISTINCT over the table.
            models.Index(fields=["status", "id"], name="jobs_job_status_idx"),
            models.Index(fields=["queue_name", "status", "run_after"], name="jobs_job_queue_idx"),
            models.Index(fields=["task_path", "id"], name="jobs_job_task_idx"),
            models.Index(fields=["enqueued_at"], name="jobs_job_enqueued_idx"),
            # The overview's throughput chart and failing tasks read recent finishes only.
            models.Index(fields=["finished_at"], name="jobs_job_finished_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_path} #{self.pk} ({self.status})"

    @property
    def task_name(self) -> str:
        return self.task_path.rsplit(".", 1)[-1]

    # -- named state changes for a running attempt, all fenced -------------------------

    def _attempt(self):
        """This job's current attempt, as long as ``self.worker_id`` still holds it."""
        return Job.objects.filter(pk=self.pk, status=JobStatus.RUNNING, attempts=self.attempts,
                                  worker_id=self.worker_id)

    def mark_successful(self, return_value, *, now: datetime) -> bool:
        """Record success; False if this attempt is no longer ours to record."""
        return Job.objects.mark_successful_many([(self, return_value)], now=now) == {self.pk}

    def mark_failed(self, error: dict, *, now: datetime, retry_at: datetime | None) -> bool:
        """Record a failed attempt: back to READY at ``retry_at``, or FAILED for good."""
        changes = dict(errors=[*self.errors, error], heartbeat_at=None, worker_ids=[*self.worker_ids, self.worker_id])
        if retry_at is None:
            changes.update(status=JobStatus.FAILED, finished_at=now)
        else:
            changes.update(status=JobStatus.READY, run_after=retry_at)
        return bool(self._attempt().update(**changes))

    def mark_handed_back(self) -> bool:
        """Give an unfinished attempt back on shutdown; it does not count as an attempt."""
        return bool(self._attempt().update(status=JobStatus.READY, attempts=F("attempts") - 1, heartbeat_at=None))

    def mark_lost(self, error: dict, *, cutoff: datetime, now: datetime, retry_at: datetime | None) -> bool:
        """Take back an attempt whose worker stopped heartbeating, as a failed attempt.

        Fenced on the heartbeat too: if the worker beat again since we looked, it is alive.
        A row that a transaction holds locked (its worker frozen or cut off in the middle
        of writing it) is left for a later sweep (False) instead of waited for, which would
        stall the sweeping worker, and every other one sweeping the same oldest row, for
        as long as that lasts. Run it in autocommit: the lock it takes ends with it.
        """
        changes = dict(errors=[*self.errors, error], heartbeat_at=None, worker_ids=[*self.worker_ids, self.worker_id])
        if retry_at is None:
            changes.update(status=JobStatus.FAILED, finished_at=now)
        else:
            changes.update(status=JobStatus.READY, run_after=retry_at)
        return bool(self._attempt().filter(heartbeat_at__lt=cutoff).filter(_unless_locked(self.pk)).update(**changes))


def _unless_locked(pk: int) -> Q:
    """The row ``pk``, unless a transaction holds it locked: then nothing matches, at once.

    PostgreSQL only (SKIP LOCKED in a subquery of the same table); elsewhere no filter.
    """
    connection = connections[router.db_for_write(Job)]
    if connection.vendor != "postgresql":
        return Q()
    table = connection.ops.quote_name(Job._meta.db_table)
    return Q(pk__in=RawSQL(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE SKIP LOCKED", [pk]))


class WorkerProcess(models.Model):
    """One row per live worker process, for liveness and the admin's overview.

    The identity is a random id, not the PID: PIDs mean nothing across hosts.
    """

    worker_id = models.CharField(max_length=128, primary_key=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list, blank=True, help_text="Empty: every queue.")
    concurrency = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField()

    class Meta:
        ordering = ["started_at"]

    def __str__(self) -> str:
        return self.worker_id

    def is_alive(self, now: datetime, stale_after: float) -> bool:
        return self.heartbeat_at >= now - timedelta(seconds=stale_after)


class QueueState(models.Model):
    """A queue's persisted state: a paused queue is skipped by every worker's claim.

    A queue without a row is running. The claim itself reads this table (see
    ``claim_sql``), so a pause takes effect at the next claim of every worker, with
    no extra query, and survives worker restarts.
    """

    name = models.CharField(max_length=64, primary_key=True)
    paused = models.BooleanField(default=False)
    changed_at = models.DateTimeField(null=True, blank=True)
    changed_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["name"]
        verbose_name = "queue"

    def __str__(self) -> str:
        return f"{self.name} ({'paused' if self.paused else 'running'})"


# -- claim implementations (private to JobQuerySet.claim) ---------------------------------

def _claimed_fields() -> list[str]:
    """CLAIM_FIELDS in the model's field order, which ``Model.from_db`` expects."""
    return [f.name for f in Job._meta.concrete_fields if f.name in CLAIM_FIELDS]


def claim_sql(connection, *, worker_id: str, limit: int, now: datetime, queues) -> tuple[str, list]:
    """The claim statement for PostgreSQL and SQLite: UPDATE ... WHERE id IN (SELECT ...) RETURNING.

    Exposed so that tests can EXPLAIN exactly what the workers run.
    """
    meta = Job._meta
    qn = connection.ops.quote_name
    table = qn(meta.db_table)
    col = {name: qn(meta.get_field(name).column) for name in CLAIM_FIELDS}
    now_db = meta.get_field("run_after").get_db_prep_value(now, connection)
    queue_sql, queue_params = "", []
    if queues:
        queue_sql = f" AND {col['queue_name']} IN ({', '.join(['%s'] * len(queues))})"
        queue_params = list(queues)
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    # SQLite's planner, without statistics, would rather sort every READY row found through
    # another index on status; the claim index already holds them in claim order.
    hint = f" INDEXED BY {qn(CLAIM_INDEX)}" if connection.vendor == "sqlite" else ""
    sql = (
        f"UPDATE {table} SET {col['status']} = %s, {col['attempts']} = {col['attempts']} + 1, "
        f"{col['worker_id']} = %s, {col['heartbeat_at']} = %s, {col['last_attempted_at']} = %s, "
        f"{col['started_at']} = COALESCE({col['started_at']}, %s) "
        f"WHERE {col['id']} IN (SELECT {col['id']} FROM {table}{hint} "
        # 'READY' is written out, not a parameter: only a literal lets the planner prove
        # that the partial claim index applies (SQLite never uses it for a parameter).
        f"WHERE {col['status']} = '{JobStatus.READY.value}' AND {col['run_after']} <= %s{queue_sql}"
        f"{_not_paused_sql(connection)} "
        f"ORDER BY {col['priority']} DESC, {col['run_after']}, {col['id']} LIMIT %s{lock}) "
        f"RETURNING {', '.join(col[name] for name in _claimed_fields())}"
    )
    params = [JobStatus.RUNNING.value, worker_id, now_db, now_db, now_db, now_db,
              *queue_params, limit]
    return sql, params


def _not_paused_sql(connection) -> str:
    """The claim's filter for paused queues: a hashed subplan over a table of a few rows."""
    qn = connection.ops.quote_name
    meta = QueueState._meta
    return (f" AND {qn(Job._meta.get_field('queue_name').column)} NOT IN "
            f"(SELECT {qn(meta.get_field('name').column)} FROM {qn(meta.db_table)} "
            f"WHERE {qn(meta.get_field('paused').column)})")


def _claim_returning(connection, *, worker_id: str, limit: int, now: datetime, queues) -> list[Job]:
    sql, params = claim_sql(connection, worker_id=worker_id, limit=limit, now=now, queues=queues)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return _rows_to_jobs(connection, rows)


def _rows_to_jobs(connection, rows: Iterable[tuple]) -> list[Job]:
    """Turn raw rows into Job instances with Django's own per-backend converters."""
    names = _claimed_fields()
    expressions = [Col(Job._meta.db_table, Job._meta.get_field(name)) for name in names]
    converters = [connection.ops.get_db_converters(e) + e.get_db_converters(connection) for e in expressions]
    jobs = []
    for row in rows:
        values = []
        for value, fns, expression in zip(row, converters, expressions):
            for fn in fns:
                value = fn(value, expression, connection)
            values.append(value)
        jobs.append(Job.from_db(connection.alias, names, values))
    return jobs


def _claim_select_then_update(queryset: JobQuerySet, *, worker_id: str, limit: int, now: datetime, queues) -> list[Job]:
    """For databases without UPDATE ... RETURNING (MySQL 8, MariaDB): lock, then update."""
    candidates = queryset.due(now).exclude(queue_name__in=QueueState.objects.filter(paused=True).values("name"))
    if queues:
        candidates = candidates.filter(queue_name__in=list(queues))
    with transaction.atomic(using=queryset.db):
        ids = list(candidates.order_by("-priority", "run_after", "id")
                   .select_for_update(skip_locked=True).values_list("id", flat=True)[:limit])
        if not ids:
            return []
        Job.objects.filter(id__in=ids).update(
            status=JobStatus.RUNNING, attempts=F("attempts") + 1, worker_id=worker_id, heartbeat_at=now,
            last_attempted_at=now, started_at=models.functions.Coalesce("started_at", now),
        )
        return list(Job.objects.filter(id__in=ids).only(*CLAIM_FIELDS))
