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
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connections, models, router, transaction
from django.db.models import F, Q, sql
from django.db.models.expressions import Col
from django.db.models.fields.json import KeyTransform
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .errors import error_entry  # noqa: F401  (re-exported: its old home)
from .framework import DEFAULT_TASK_BACKEND_ALIAS, TaskResultStatus


class UnreadableJSON(str):
    """What a JSON column holds when its text does not decode: the text of the problem.

    Whoever can write a row can store JSON that Python refuses (an integer of 5000
    digits, arrays nested thousands deep). Reading such a row must not raise: the
    admin shows it, and the worker fails that job alone (see ``load_jobs``).
    """


class SafeJSONField(models.JSONField):
    """A JSONField whose reads never raise: undecodable text comes back as ``UnreadableJSON``.

    To migrations it is a plain JSONField (same ``deconstruct()``): reading is
    Python-side only, and a rebuild of the table for it on SQLite would be for nothing.
    """

    def from_db_value(self, value, expression, connection):
        if value is None or not isinstance(value, (str, bytes, bytearray)):
            return super().from_db_value(value, expression, connection)
        try:
            return json.loads(value, cls=self.decoder)
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, json.JSONDecodeError) and isinstance(expression, KeyTransform):
                return value  # SQLite hands a key's string value back unquoted, as Django expects
            return UnreadableJSON(f"unreadable JSON ({type(exc).__name__}: {str(exc)[:200]})")

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs


class JobStatus(models.TextChoices):
    READY = TaskResultStatus.READY.value, "Ready"
    RUNNING = TaskResultStatus.RUNNING.value, "Running"
    SUCCESSFUL = TaskResultStatus.SUCCESSFUL.value, "Successful"
    FAILED = TaskResultStatus.FAILED.value, "Failed"
    # Never ran and never will: cancelled from the admin. Shown to Django's API as FAILED.
    CANCELLED = "CANCELLED", "Cancelled"


MAX_INT = 2**31 - 1  # the largest value of an integer column on PostgreSQL (and MySQL)
CLAIM_INDEX = "jobs_job_claim_idx"  # the partial index of due READY jobs, in claim order

FINISHED_STATUSES = (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELLED)

# Columns a claim hands back: what a worker needs to run the job and record it.
CLAIM_FIELDS = (
    "id", "task_path", "backend", "queue_name", "priority", "args", "kwargs", "status", "run_after",
    "task_run_after", "enqueued_at", "started_at", "last_attempted_at", "finished_at", "attempts", "max_attempts",
    "worker_id", "heartbeat_at", "errors", "worker_ids", "meta",
)


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

    def claim(self, *, worker_id: str, limit: int, now: datetime, queues: Sequence[str] | None = None,
              backend: str = DEFAULT_TASK_BACKEND_ALIAS) -> list[Job]:
        """Take up to ``limit`` due jobs of the ``backend`` alias for ``worker_id``, marking them RUNNING.

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
            jobs = _claim_returning(connection, worker_id=worker_id, limit=limit, now=now, queues=queues,
                                    backend=backend)
        else:
            jobs = _claim_select_then_update(self, worker_id=worker_id, limit=limit, now=now, queues=queues,
                                             backend=backend)
        jobs.sort(key=claim_order)
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
    # Each is one UPDATE (or DELETE) however many rows, and hands back the jobs it changed,
    # read by the same statement (RETURNING), so the admin can record them without a second
    # scan of the table.

    def requeue(self, now: datetime | None = None, *, by: str = "") -> list[ChangedJob]:
        """Put finished jobs back to READY, due now, as the same jobs (same ids).

        Attempts start again from zero (a requeue is a fresh run, with all of
        ``max_attempts`` before it); earlier errors and their workers stay in the job's
        history, and ``meta["requeued"]`` says when and by whom. RUNNING and READY jobs
        are left alone: a running attempt is the worker's. Returns the jobs requeued.
        """
        now = now or timezone.now()
        return self.filter(status__in=FINISHED_STATUSES).update_returning(
            status=JobStatus.READY, run_after=now, attempts=0, started_at=None, last_attempted_at=None,
            finished_at=None, worker_id="", heartbeat_at=None, return_value=None,
            meta=JSONMerge("meta", {"requeued": {"at": now.isoformat(), "by": by}}),
        )

    def cancel(self, reason: str, now: datetime | None = None, *, by: str = "") -> list[ChangedJob]:
        """READY jobs to CANCELLED: they never run. ``meta["cancelled"]`` keeps the reason.

        Only READY rows match, in the same UPDATE, so a job a worker claimed a moment
        ago is left to run (on PostgreSQL the UPDATE waits for the claim's row lock and
        then sees RUNNING). Returns the jobs cancelled.
        """
        now = now or timezone.now()
        return self.ready().update_returning(
            status=JobStatus.CANCELLED, finished_at=now,
            meta=JSONMerge("meta", {"cancelled": {"at": now.isoformat(), "by": by, "reason": reason}}),
        )

    def run_now(self, now: datetime | None = None) -> list[ChangedJob]:
        """READY jobs waiting for a later ``run_after`` (a delay or a retry) become due now; returns them."""
        now = now or timezone.now()
        return self.ready().filter(run_after__gt=now).update_returning(run_after=now)

    def update_returning(self, **changes) -> list[ChangedJob]:
        """``update(**changes)``, handing back the rows it changed (as they are after it)."""
        query = self.query.chain(sql.UpdateQuery)
        query.add_update_values(changes)
        query.clear_select_clause()
        return self._returning(query, lambda ids: Job.objects.filter(pk__in=ids).update(**changes))

    def delete_returning(self) -> list[ChangedJob]:
        """One DELETE, no signals and no cascades (as ``_raw_delete``), handing back the rows deleted."""
        query = self.order_by().query.clone()
        query.__class__ = sql.DeleteQuery
        return self._returning(query, lambda ids: Job.objects.filter(pk__in=ids)._raw_delete(self.db))

    def _returning(self, query, by_ids) -> list[ChangedJob]:
        """Run ``query`` (UPDATE or DELETE) with RETURNING; without it (MySQL), read, then ``by_ids``."""
        connection = connections[self.db]
        if connection.vendor not in ("postgresql", "sqlite"):
            with transaction.atomic(using=self.db):
                rows = list(self.select_for_update().values_list("pk", "task_path", "status"))
                by_ids([pk for pk, _, _ in rows])
            return [ChangedJob(*row) for row in rows]
        try:
            statement, params = query.get_compiler(self.db).as_sql()
        except EmptyResultSet:  # pk__in=[] and the like: nothing to change
            return []
        qn = connection.ops.quote_name
        returning = ", ".join(qn(Job._meta.get_field(name).column) for name in ("id", "task_path", "status"))
        with transaction.mark_for_rollback_on_error(using=self.db), connection.cursor() as cursor:
            cursor.execute(f"{statement} RETURNING {returning}", params)
            rows = cursor.fetchall()
        return [ChangedJob(*row) for row in rows]


class ChangedJob(NamedTuple):
    """A job as an admin change left it: enough to name it in the admin's history."""

    pk: int
    task_path: str
    status: str

    def __str__(self) -> str:
        return job_repr(self.task_path, self.pk, self.status)


def job_repr(task_path: str, pk, status: str) -> str:
    return f"{task_path} #{pk} ({status})"


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
    args = SafeJSONField(default=list, blank=True)
    kwargs = SafeJSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.READY)
    run_after = models.DateTimeField(help_text="Earliest time the next attempt may start.")
    # What TaskResult.task.run_after says: the task as enqueued (None: no run_after given), kept
    # apart from run_after, which retries, requeues and "run now" move.
    task_run_after = models.DateTimeField(null=True, blank=True, help_text="run_after the job was enqueued with.")
    enqueued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True, help_text="Start of the first attempt.")
    last_attempted_at = models.DateTimeField(null=True, blank=True, help_text="Start of the latest attempt.")
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts started (the current one included).")
    # The task's own limit (jobs.task(max_attempts=...)); empty: the backend's default as configured
    # when an attempt ends (OPTIONS["max_attempts"], or settings.MAX_ATTEMPTS for @background tasks).
    max_attempts = models.PositiveIntegerField(null=True, blank=True, default=None,
                                               help_text="The task's own attempt limit; empty: the default in force.")
    worker_id = models.CharField(max_length=128, blank=True, default="", help_text="Worker holding or last holding the job.")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life of the holding worker.")
    worker_ids = SafeJSONField(default=list, blank=True,
                                  help_text="Worker of each finished attempt.")
    return_value = SafeJSONField(null=True, blank=True)
    errors = SafeJSONField(default=list, blank=True,
                              help_text="One entry per failed attempt, oldest first.")
    meta = SafeJSONField(default=dict, blank=True,
                            help_text="Where the job came from (schedule, import, ...).")

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The claim reads only due READY rows of its backend alias in claim order; finished
            # rows, however many millions, are not in this index at all, and another alias's
            # backlog is skipped by the seek on the leading column.
            models.Index("backend", F("priority").desc(), "run_after", "id", name=CLAIM_INDEX,
                         condition=Q(status="READY")),
            # The stale sweep reads only RUNNING rows.
            models.Index(fields=["heartbeat_at"], name="jobs_job_running_idx", condition=Q(status="RUNNING")),
            # The admin (jobs/admin.py). Each list filter reads its own index newest first; the
            # queue index also answers the overview's counts per queue, status and backend alias
            # and its lag (index-only), and both leading columns give the filters their choices
            # by a loose index scan instead of a DISTINCT over the table.
            models.Index(fields=["status", "id"], name="jobs_job_status_idx"),
            models.Index(fields=["queue_name", "status", "backend", "run_after"], name="jobs_job_queue_idx"),
            models.Index(fields=["task_path", "id"], name="jobs_job_task_idx"),
            models.Index(fields=["enqueued_at"], name="jobs_job_enqueued_idx"),
            # The overview's throughput chart and failing tasks read recent finishes only.
            models.Index(fields=["finished_at"], name="jobs_job_finished_idx"),
        ]

    def __str__(self) -> str:
        return job_repr(self.task_path, self.pk, self.status)

    @property
    def task_name(self) -> str:
        return self.task_path.rsplit(".", 1)[-1]

    # -- named state changes for a running attempt, all fenced -------------------------

    def _attempt(self):
        """This job's current attempt, as long as ``self.worker_id`` still holds it.

        A damaged row's attempt count may not be a number (text on SQLite): such a job
        is fenced on its holder alone, which every claim sets.
        """
        held = Job.objects.filter(pk=self.pk, status=JobStatus.RUNNING, worker_id=self.worker_id)
        if isinstance(self.attempts, int) and not isinstance(self.attempts, bool):
            held = held.filter(attempts=self.attempts)
        return held

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
        attempts = models.Case(models.When(attempts__gt=0, then=F("attempts") - 1), default=models.Value(0))
        return bool(self._attempt().update(status=JobStatus.READY, attempts=attempts, heartbeat_at=None))

    def mark_lost(self, error: dict, *, cutoff: datetime, now: datetime, retry_at: datetime | None) -> bool:
        """Take back an attempt whose worker stopped heartbeating, as a failed attempt.

        Fenced on the heartbeat too: if the worker beat again since we looked, it is alive.
        """
        changes = dict(errors=[*self.errors, error], heartbeat_at=None, worker_ids=[*self.worker_ids, self.worker_id])
        if retry_at is None:
            changes.update(status=JobStatus.FAILED, finished_at=now)
        else:
            changes.update(status=JobStatus.READY, run_after=retry_at)
        return bool(self._attempt().filter(heartbeat_at__lt=cutoff).update(**changes))


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


def claim_sql(connection, *, worker_id: str, limit: int, now: datetime, queues,
              backend: str = DEFAULT_TASK_BACKEND_ALIAS) -> tuple[str, list]:
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
        # A damaged row at the integer column's maximum must not make every claim fail.
        f"UPDATE {table} SET {col['status']} = %s, {col['attempts']} = CASE WHEN {col['attempts']} < {MAX_INT} "
        f"THEN {col['attempts']} + 1 ELSE {col['attempts']} END, "
        f"{col['worker_id']} = %s, {col['heartbeat_at']} = %s, {col['last_attempted_at']} = %s, "
        f"{col['started_at']} = COALESCE({col['started_at']}, %s) "
        f"WHERE {col['id']} IN (SELECT {col['id']} FROM {table}{hint} "
        # 'READY' is written out, not a parameter: only a literal lets the planner prove
        # that the partial claim index applies (SQLite never uses it for a parameter).
        f"WHERE {col['status']} = '{JobStatus.READY.value}' AND {col['backend']} = %s "
        f"AND {col['run_after']} <= %s{queue_sql}"
        f"{_not_paused_sql(connection)} "
        f"ORDER BY {col['priority']} DESC, {col['run_after']}, {col['id']} LIMIT %s{lock}) "
        f"RETURNING {', '.join(column_sql(connection, name) for name in _claimed_fields())}"
    )
    params = [JobStatus.RUNNING.value, worker_id, now_db, now_db, now_db, backend, now_db,
              *queue_params, limit]
    return sql, params


def _not_paused_sql(connection) -> str:
    """The claim's filter for paused queues: a hashed subplan over a table of a few rows."""
    qn = connection.ops.quote_name
    meta = QueueState._meta
    return (f" AND {qn(Job._meta.get_field('queue_name').column)} NOT IN "
            f"(SELECT {qn(meta.get_field('name').column)} FROM {qn(meta.db_table)} "
            f"WHERE {qn(meta.get_field('paused').column)})")


def _claim_returning(connection, *, worker_id: str, limit: int, now: datetime, queues, backend: str) -> list[Job]:
    sql, params = claim_sql(connection, worker_id=worker_id, limit=limit, now=now, queues=queues, backend=backend)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return rows_to_jobs(connection, _claimed_fields(), rows)


# What a damaged field of a job is read as, so that the job can still be failed and shown.
_FALLBACKS = {"args": list, "kwargs": dict, "errors": list, "worker_ids": list, "meta": dict}
_SHAPES = {"args": list, "kwargs": dict, "errors": list, "worker_ids": list, "meta": dict,
           "attempts": int, "max_attempts": int, "priority": int, "task_path": str, "queue_name": str}


def column_sql(connection, name: str) -> str:
    """How the worker reads a column of Job: time columns as text.

    The drivers convert times themselves, and raise inside the fetch (taking the
    whole claim with them) for values a row writer can store: 'infinity' or a year
    past 9999 on PostgreSQL, '2026-13-45' on SQLite. As text, the value reaches
    ``rows_to_jobs``, which turns a bad one into damage of that one job.
    """
    field = Job._meta.get_field(name)
    column = connection.ops.quote_name(field.column)
    if isinstance(field, models.DateTimeField):
        return f"CAST({column} AS TEXT)" if connection.vendor == "sqlite" else f"{column}::text"
    return column


def stored_datetime(value, connection) -> datetime | None:
    """A time column read as text (see ``column_sql``) as the ORM would hand it back."""
    if value is None or isinstance(value, datetime):
        return value
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValueError(f"{value[:60]!r} is not a time")
    if settings.USE_TZ and timezone.is_naive(parsed):
        return timezone.make_aware(parsed, connection.timezone)
    if not settings.USE_TZ and timezone.is_aware(parsed):
        return timezone.make_naive(parsed, connection.timezone)
    return parsed


def rows_to_jobs(connection, names: Sequence[str], rows: Iterable[tuple]) -> list[Job]:
    """Rows read with ``column_sql`` to Job instances, never raising on a stored value.

    A value that does not convert (or has the wrong shape: arguments that are not a
    list, a priority stored as text on SQLite, NULL where a value is required) is
    replaced by a harmless stand-in and named in the job's ``damage`` list; the
    worker fails such a job alone, without running it, instead of letting one row
    stop every claim.
    """
    fields = [Job._meta.get_field(name) for name in names]
    converters = []
    for field in fields:
        if isinstance(field, models.DateTimeField):
            converters.append(lambda value, _field=field: stored_datetime(value, connection))
        else:
            expression = Col(Job._meta.db_table, field)
            fns = connection.ops.get_db_converters(expression) + expression.get_db_converters(connection)
            converters.append(lambda value, _fns=fns, _e=expression: _convert(value, _fns, _e, connection))
    jobs = []
    for row in rows:
        values, damage = [], []
        for raw, convert, field in zip(row, converters, fields):
            name = field.name
            try:
                value = convert(raw)
            except Exception as exc:  # noqa: BLE001 - a stored value must not stop the worker
                damage.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
                value = _FALLBACKS.get(name, lambda: None)()
            else:
                if isinstance(value, UnreadableJSON):
                    damage.append(f"{name}: {value}")
                    value = _FALLBACKS.get(name, lambda: None)()
                elif value is None and not field.null:
                    damage.append(f"{name}: missing (NULL or not a value of its type: {str(raw)[:60]!r})")
                elif value is not None and name in _SHAPES and (not isinstance(value, _SHAPES[name])
                                                                  or isinstance(value, bool)):
                    damage.append(f"{name}: stored as {type(value).__name__} {str(value)[:60]!r}, "
                                  f"expected {_SHAPES[name].__name__}")
                    if name in _FALLBACKS:
                        value = _FALLBACKS[name]()
            values.append(value)
        job = Job.from_db(connection.alias, list(names), values)
        job.damage = damage
        jobs.append(job)
    return jobs


def _convert(value, fns, expression, connection):
    for fn in fns:
        value = fn(value, expression, connection)
    return value


def load_jobs(queryset, names: Sequence[str]) -> list[Job]:
    """The jobs ``queryset`` selects, with only ``names`` loaded, through ``rows_to_jobs``."""
    names = [f.name for f in Job._meta.concrete_fields if f.name in set(names) | {"id"}]
    connection = connections[queryset.db]
    inner, params = queryset.values("pk").query.get_compiler(using=queryset.db).as_sql()
    qn = connection.ops.quote_name
    sql = (f"SELECT {', '.join(column_sql(connection, name) for name in names)} FROM {qn(Job._meta.db_table)} "
           f"WHERE {qn('id')} IN ({inner})")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return rows_to_jobs(connection, names, rows)


def claim_order(job: Job) -> tuple:
    """The claim's order (priority, then run_after, then id), for whatever a row holds."""
    priority = job.priority if isinstance(job.priority, int) else 0
    run_after = job.run_after if isinstance(job.run_after, datetime) else None
    return (-priority, run_after is not None, run_after or datetime.min, job.id)


def _claim_select_then_update(queryset: JobQuerySet, *, worker_id: str, limit: int, now: datetime, queues,
                              backend: str = DEFAULT_TASK_BACKEND_ALIAS) -> list[Job]:
    """For databases without UPDATE ... RETURNING (MySQL 8, MariaDB): lock, then update."""
    paused = QueueState.objects.filter(paused=True).values("name")
    candidates = queryset.due(now).filter(backend=backend).exclude(queue_name__in=paused)
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
