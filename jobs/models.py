"""The job table, its state filters, and the changes made to jobs from outside a worker.

A job is one launch of a task: one row, from READY through RUNNING to SUCCESSFUL or
FAILED (or CANCELLED), keeping its id across retries and requeues. What a worker
writes for a running attempt (fenced on the attempt and its worker) is in
``jobs.store``, on statements of ``jobs.sql``; the claim is ``jobs.sql.claim``; a cancel
is ``jobs.control``'s. What the admin writes otherwise (requeue, run now, delete) is here:
one UPDATE however many rows, handing back the rows it changed. Of this project it imports
only ``jobs.framework`` and ``jobs.checks``, which import no model: the modules above import
it, never the other way round (``tests/test_module_graph.py``).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import NamedTuple

from django.core.exceptions import EmptyResultSet
from django.db import OperationalError, connections, models, transaction
from django.db.models import Case, F, Q, Value, When, sql
from django.db.models.fields.json import KeyTransform
from django.db.models.signals import post_delete, pre_delete
from django.utils import timezone

from .framework import TaskResultStatus


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
    # A child (jobs.enqueue_after) whose parents have not all ended SUCCESSFUL: no claim reads it
    # (the claim's indexes hold READY rows only). Shown to Django's API as READY.
    WAITING = "WAITING", "Waiting"


CLAIM_INDEX = "jobs_job_claim_idx"  # the partial index of READY jobs without limits, in claim order
LIMITED_INDEX = "jobs_job_limited_idx"  # READY jobs with a limit key, by key, in claim order
UNIQUE_READY = "jobs_job_unique_ready"  # the partial unique index of unique jobs' keys

FINISHED_STATUSES = (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELLED)
NOT_STARTED = (JobStatus.READY, JobStatus.WAITING)  # what a cancel ends at once
# A batch's count of its members' ends, by the status they ended in (jobs.settle adds, a requeue takes away).
BATCH_COUNTS = {"successful": JobStatus.SUCCESSFUL, "failed": JobStatus.FAILED, "cancelled": JobStatus.CANCELLED}


class JobQuerySet(models.QuerySet):
    def ready(self):
        return self.filter(status=JobStatus.READY)

    def due(self, now: datetime):
        return self.ready().filter(run_after__lte=now)

    def running(self):
        return self.filter(status=JobStatus.RUNNING)

    def retrying(self):
        """READY after a failed attempt: waiting for the next one (``jobs_job_retrying_idx``)."""
        return self.filter(status=JobStatus.READY, attempts__gt=0)

    def finished(self):
        return self.filter(status__in=FINISHED_STATUSES)

    def stale(self, cutoff: datetime):
        """RUNNING jobs whose worker has not heartbeaten since ``cutoff``."""
        return self.running().filter(heartbeat_at__lt=cutoff)

    # -- changes made from outside a running attempt -----------------------------------
    # Each is one UPDATE (or DELETE) however many rows, and hands back the jobs it changed,
    # read by the same statement (RETURNING), so the admin can record them without a second
    # scan of the table.

    def requeue(self, now: datetime | None = None, *, by: str = "") -> list[ChangedJob]:
        """Put finished jobs back to READY, due now, as the same jobs (same ids).

        Attempts start again from zero (a requeue is a fresh run, with all of
        ``max_attempts`` before it, and nothing of the last run's: no cancel request, no
        progress); earlier errors and their workers stay in the job's history, and
        ``meta["requeued"]`` says when and by whom. RUNNING and READY jobs are left alone:
        a running attempt is the worker's. Returns the jobs requeued.
        """
        now = now or timezone.now()
        finished = self.filter(status__in=FINISHED_STATUSES)
        # A unique job comes back only if no READY job holds its key, and one job per key at most.
        held = Job.objects.filter(status=JobStatus.READY, unique_key__isnull=False).values("unique_key")
        latest = finished.filter(unique_key__isnull=False).values("unique_key").annotate(
            latest=models.Max("id")).values("latest")
        finished = finished.filter(Q(unique_key__isnull=True) | (~Q(unique_key__in=held) & Q(pk__in=latest)))

        def requeue() -> list[ChangedJob]:
            with transaction.atomic(using=self.db):
                # A member of a batch still open is no longer counted as ended: it will be when it
                # ends again. (A finished batch stays finished; its callbacks do not fire again.)
                members = list(finished.filter(batch_id__isnull=False).values_list("pk", "batch_id", "status"))
                changed = finished.update_returning(
                    status=JobStatus.READY, run_after=now, attempts=0, started_at=None, last_attempted_at=None,
                    finished_at=None, worker_id="", heartbeat_at=None, return_value=None, cancel_requested_at=None,
                    progress=None, meta=JSONMerge("meta", {"requeued": {"at": now.isoformat(), "by": by}}),
                )
                if members:
                    requeued = {job.pk for job in changed}
                    uncount_members(self.db, [(batch, status) for pk, batch, status in members if pk in requeued])
            return changed

        return retried_on_conflict(self.db, requeue)

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

    def delete_jobs(self) -> list[ChangedJob]:
        """The one way jobs are deleted (the admin, pruning, the compat shim); returns them.

        One DELETE, plus one statement per model that points at jobs: ``QuerySet.delete()``
        would load every row first as soon as another model has a foreign key to Job with
        SET_NULL or CASCADE; here each such relation is handled by one statement over a
        subquery instead. With signal receivers on Job, or a relation rule other than
        these, Django's delete is used.
        """
        relations = [r for r in Job._meta.related_objects if r.one_to_many or r.one_to_one]
        simple = all(r.on_delete in (models.SET_NULL, models.CASCADE, models.DO_NOTHING) for r in relations)
        if not simple or any(signal.has_listeners(Job) for signal in (pre_delete, post_delete)):
            with transaction.atomic(using=self.db):
                gone = [ChangedJob(*row) for row in self.select_for_update().values_list("pk", "task_path", "status")]
                self.delete()
            return gone
        ids = self.order_by().values("pk")
        with transaction.atomic(using=self.db):
            for relation in relations:
                related = relation.related_model._base_manager.using(self.db).filter(
                    **{f"{relation.field.name}__in": ids})
                if relation.on_delete is models.SET_NULL:
                    related.update(**{relation.field.name: None})
                elif relation.on_delete is models.CASCADE:
                    related.delete()
            return self.delete_returning()

    def reschedule(self, run_after: datetime, *, priority: int) -> int:
        """READY jobs moved to another run time and priority (django-background-tasks'
        RESCHEDULE_EXISTING): to Django's API, enqueued with that run_after."""
        return self.ready().update(run_after=run_after, task_run_after=run_after, priority=priority)

    def merge_meta(self, values: dict) -> int:
        """Set top-level keys of these jobs' ``meta`` in one UPDATE (the compat shim's bookkeeping)."""
        return self.update(meta=JSONMerge("meta", values))

    def delete_returning(self) -> list[ChangedJob]:
        """One DELETE, no signals and no cascades (as ``_raw_delete``), handing back the rows deleted."""
        query = self.order_by().query.clone()
        query.__class__ = sql.DeleteQuery
        return self._returning(query, lambda ids: Job.objects.filter(pk__in=ids)._raw_delete(self.db))

    def _returning(self, query, by_ids) -> list[ChangedJob]:
        """Run ``query`` (UPDATE or DELETE) with RETURNING; without it (MySQL), read, then ``by_ids``."""
        connection = connections[self.db]
        if connection.vendor not in ("postgresql", "sqlite"):
            # InnoDB may pick this transaction as a deadlock's victim (1213) while workers claim and
            # finish beside it; it is rolled back whole, so run it again (outside a caller's own
            # transaction only: inside one, the caller's work is gone too and the error is theirs).
            for attempt in range(5):
                try:
                    with transaction.atomic(using=self.db):
                        rows = list(self.select_for_update().values_list("pk", "task_path", "status"))
                        by_ids([pk for pk, _, _ in rows])
                    break
                except OperationalError as exc:
                    if connection.in_atomic_block or attempt == 4 or exc.args[:1] not in ((1213,), (1205,)):
                        raise
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


def uncount_members(using: str, members: list[tuple[str, str]]) -> None:
    """Requeued members (batch id, the status they had ended with) are no longer counted as
    ended, on batches that have not finished (a finished batch stays finished)."""
    by_batch: dict[str, Counter] = defaultdict(Counter)
    for batch, status in members:
        by_batch[batch][status] += 1
    for batch in sorted(by_batch, key=str):
        counts = by_batch[batch]
        taken = {field: Case(When(**{f"{field}__gt": counts[status]}, then=F(field) - counts[status]),
                             default=Value(0)) for field, status in BATCH_COUNTS.items() if counts[status]}
        if taken:
            JobBatch.objects.using(using).filter(pk=batch, finished_at__isnull=True).update(**taken)


def retried_on_conflict(using: str, change):
    """``change()`` (a transaction of its own), run again when InnoDB picks it as a deadlock's
    victim (1213) or a lock wait times out (1205) while workers claim and finish beside it; inside
    a caller's transaction the error is the caller's (its work is gone too)."""
    connection = connections[using]
    for attempt in range(5):
        try:
            return change()
        except OperationalError as exc:
            if (connection.vendor != "mysql" or connection.in_atomic_block or attempt == 4
                    or exc.args[:1] not in ((1213,), (1205,))):
                raise


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
        self.updates = value

    def as_postgresql(self, compiler, connection, **extra):
        return self._merge(compiler, connection, "(COALESCE({col}, '{{}}'::jsonb) || {val})")

    def as_sqlite(self, compiler, connection, **extra):
        # json_set, key by key: json_patch (merge-patch) would drop keys whose value is null.
        column, _value = self.get_source_expressions()
        col_sql, col_params = compiler.compile(column)
        pairs, params = [], []
        for key, value in self.updates.items():
            pairs.append("%s, json(%s)")
            params += ["$." + json.dumps(str(key)), json.dumps(value)]
        sql = f"json_set(CASE WHEN json_type({col_sql}) = 'object' THEN {col_sql} ELSE '{{}}' END, {', '.join(pairs)})"
        return sql, (*col_params, *col_params, *params)

    def as_mysql(self, compiler, connection, **extra):
        # JSON_SET, key by key, as on SQLite: JSON_MERGE_PATCH drops keys whose value is null.
        column, _value = self.get_source_expressions()
        col_sql, col_params = compiler.compile(column)
        pairs, params = [], []
        for key, value in self.updates.items():
            pairs.append("%s, JSON_EXTRACT(%s, '$')")
            params += ["$." + json.dumps(str(key)), json.dumps(value)]
        sql = (f"JSON_SET(CASE WHEN JSON_TYPE({col_sql}) = 'OBJECT' THEN {col_sql} ELSE JSON_OBJECT() END, "
               f"{', '.join(pairs)})")
        return sql, (*col_params, *col_params, *params)

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
    # Copied from the latest error as it is written (jobs.store.fail_attempt), so that failures
    # group by cause from an index, without reading the JSON of every failed job.
    error_class = models.CharField(max_length=255, blank=True, default="", db_default="",
                                   help_text="Exception class of the latest failed attempt.")
    meta = SafeJSONField(default=dict, blank=True,
                            help_text="Where the job came from (schedule, import, ...).")
    # Job control (jobs.task(unique=..., concurrency_key=..., rate_limit=...); see jobs/limits.py).
    # NULL, not "", is "none": the partial indexes below hold only the jobs that have one.
    unique_key = models.CharField(max_length=255, null=True, blank=True,  # noqa: DJ001
                                  help_text="At most one READY job of this backend has it.")
    limit_key = models.CharField(max_length=255, null=True, blank=True,  # noqa: DJ001
                                 help_text="The key its concurrency and rate limits count on.")
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True,
                                                    help_text="Jobs of limit_key RUNNING at once, at most.")
    rate_limit = models.CharField(max_length=32, null=True, blank=True,  # noqa: DJ001
                                  help_text="Attempts of limit_key started per period, at most (N/s, N/m, N/h).")
    cancel_requested_at = models.DateTimeField(null=True, blank=True,
                                               help_text="A cancel was asked while it ran: its worker stops it.")
    progress = SafeJSONField(null=True, blank=True, help_text="What the running task last said of its progress.")
    # Batches and dependencies (jobs.batches, jobs.dependencies); what a job's end sets off is jobs.settle.
    batch_id = models.CharField(max_length=32, null=True, blank=True,  # noqa: DJ001
                                help_text="The batch it is a member of.")
    waiting_for = models.PositiveIntegerField(default=0, db_default=0,
                                              help_text="Parents that have not yet ended SUCCESSFUL.")
    has_dependents = models.BooleanField(default=False, db_default=False,
                                         help_text="Jobs wait for it (jobs.enqueue_after).")

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The claim reads only due READY rows of its backend alias in claim order; finished
            # rows, however many millions, are not in this index at all, and another alias's
            # backlog is skipped by the seek on the leading column.
            models.Index("backend", F("priority").desc(), "run_after", "id", name=CLAIM_INDEX,
                         condition=Q(status="READY", limit_key__isnull=True)),
            # Jobs with a concurrency or rate limit, by key: the claim takes each key's first
            # jobs when the key has room, and never reads through a key's held-back backlog.
            models.Index("backend", "limit_key", F("priority").desc(), "run_after", "id", name=LIMITED_INDEX,
                         condition=Q(status="READY", limit_key__isnull=False)),
            # The stale sweep reads only RUNNING rows.
            models.Index(fields=["heartbeat_at"], name="jobs_job_running_idx", condition=Q(status="RUNNING")),
            # The admin (jobs/admin.py). Each list filter reads its own index newest first; the
            # queue index also answers the overview's counts per queue, status and backend alias
            # and its lag (index-only), and both leading columns give the filters their choices
            # by a loose index scan instead of a DISTINCT over the table.
            models.Index(fields=["status", "id"], name="jobs_job_status_idx"),
            # The "Retrying" filter and count: READY jobs after a failed attempt, few of them.
            models.Index(fields=["id"], name="jobs_job_retrying_idx", condition=Q(status="READY", attempts__gt=0)),
            # Failures by cause (/admin/jobs/job/failures/): failed jobs by task and exception class,
            # newest first for the list of a group, and finished_at for the counts by window, index-only.
            models.Index(fields=["task_path", "error_class", "id", "finished_at"], name="jobs_job_failures_idx",
                         condition=Q(status="FAILED")),
            models.Index(fields=["queue_name", "status", "backend", "run_after"], name="jobs_job_queue_idx"),
            models.Index(fields=["task_path", "id"], name="jobs_job_task_idx"),
            models.Index(fields=["enqueued_at"], name="jobs_job_enqueued_idx"),
            # The overview's throughput chart, failing tasks and pruning read finishes only: jobs
            # not finished are not in it, so enqueues and claims never write to it.
            models.Index(fields=["finished_at"], name="jobs_job_finished_idx", condition=Q(finished_at__isnull=False)),
            # A batch's members (its page, its count when its block ends, pruning's check); most jobs
            # have no batch and are not in it.
            models.Index(fields=["batch_id", "status"], name="jobs_job_batch_idx", condition=Q(batch_id__isnull=False)),
        ]
        constraints = [
            # Unique jobs: the database, not a check-then-insert, keeps a key to one READY job.
            models.UniqueConstraint(fields=["backend", "unique_key"], name=UNIQUE_READY,
                                    condition=Q(status="READY", unique_key__isnull=False)),
        ]

    def __str__(self) -> str:
        return job_repr(self.task_path, self.pk, self.status)

    @classmethod
    def check(cls, **kwargs):
        """Django's checks, less its warnings that MySQL and MariaDB leave out the partial and
        expression indexes: migration 0008 makes their stand-ins there (``jobs.I030`` says so)."""
        from .checks import MYSQL_INDEX_WARNINGS

        return [issue for issue in super().check(**kwargs) if issue.id not in MYSQL_INDEX_WARNINGS]

    @property
    def task_name(self) -> str:
        return self.task_path.rsplit(".", 1)[-1]


class JobBatch(models.Model):
    """A batch (``jobs.batch``): its members' outcomes counted as each ends, and its callbacks.

    Each member's end adds one to a count here, in the transaction that records it (no
    count over the members per outcome). ``sealed_at`` is set when the ``with`` block
    ends, with ``total``; the batch finishes (``finished_at``, its callbacks enqueued) in
    the one transaction that finds every member counted, under this row's lock.
    """

    id = models.CharField(max_length=32, primary_key=True)
    backend = models.CharField(max_length=64, default="default")
    on_success = models.CharField(max_length=255, blank=True, default="", help_text="Task path.")
    on_failure = models.CharField(max_length=255, blank=True, default="", help_text="Task path.")
    on_finish = models.CharField(max_length=255, blank=True, default="", help_text="Task path.")
    created_at = models.DateTimeField()
    sealed_at = models.DateTimeField(null=True, blank=True, help_text="Its block ended: every member is known.")
    finished_at = models.DateTimeField(null=True, blank=True, help_text="Every member ended; callbacks enqueued.")
    total = models.PositiveIntegerField(default=0, help_text="Members, counted when its block ended.")
    successful = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    callbacks = SafeJSONField(default=list, blank=True, help_text="The callback jobs it enqueued (or why not).")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "batch"
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"batch {self.id}"


class JobDependency(models.Model):
    """One parent of a child job (``jobs.enqueue_after``), in the order given.

    ``satisfied`` turns true once, in the transaction that records the parent's success,
    and only then is the child's ``waiting_for`` lowered: a parent counts once, however
    often it is requeued.
    """

    child = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="parent_links", db_index=False)
    parent = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="child_links")
    position = models.PositiveSmallIntegerField()
    satisfied = models.BooleanField(default=False)

    class Meta:
        verbose_name = "dependency"
        verbose_name_plural = "dependencies"
        constraints = [models.UniqueConstraint(fields=["child", "position"], name="jobs_dependency_order")]

    def __str__(self) -> str:
        return f"#{self.child_id} after #{self.parent_id}"


class JobLimit(models.Model):
    """The state of one limit key, which the claim locks and reads (jobs/limits.py).

    ``running``: jobs of the key RUNNING now (the claim adds, every way out of RUNNING
    takes away, in the same transaction). ``starts``: when the key's latest attempts
    started (epoch seconds, oldest first, as many as its rate allows), for its rate
    limit's sliding window. A row is made when the first job of its key is enqueued.
    """

    key = models.CharField(max_length=255, primary_key=True)
    running = models.IntegerField(default=0)
    starts = SafeJSONField(default=list, blank=True)  # read by the admin: damage must not raise

    class Meta:
        verbose_name = "limit key"

    def __str__(self) -> str:
        return f"{self.key} ({self.running} running)"


class WorkerProcess(models.Model):
    """One row per live worker process, for liveness and the admin's overview.

    The identity is a random id, not the PID: PIDs mean nothing across hosts.
    """

    worker_id = models.CharField(max_length=128, primary_key=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list, blank=True, help_text="Empty: every queue.")
    concurrency = models.PositiveIntegerField(default=1)
    # A child of ``process_tasks --processes``: its parent's id (the parent has no row: it runs no job).
    parent = models.CharField(max_length=128, blank=True, default="")
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
