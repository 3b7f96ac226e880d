"""Every change a worker makes to the job table, and the one failure transition.

A change made for a running attempt is *fenced*: it matches the attempt number and
the worker that holds it, so a worker that was presumed lost and wakes up later
cannot overwrite an attempt another worker has taken over (its write matches no
row, and it says so). ``fail_attempt`` is the only way an attempt fails, whatever
the reason: the task raised, it timed out, its worker was lost, it was cancelled.

``WorkerStore`` is a worker's side of it, on the calling thread's connection: the
batch (record outcomes, claim more), heartbeats, the stale sweep's read, hand-backs.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, InterfaceError, OperationalError, connections, models, router, transaction
from django.db.models import F
from django.db.models.expressions import RawSQL
from django.utils import timezone

from . import retry
from .models import FINISHED_STATUSES, Job, JobStatus, JSONMerge, WorkerProcess
from .rows import ClaimedJob
from .settle import settle_guarded
from .sql import statements

logger = logging.getLogger(__name__)


def _attempt(job: ClaimedJob, using: str):
    """The row of ``job``'s current attempt, as long as ``job.worker_id`` still holds it.

    A damaged row's attempt count may not be a number (text on SQLite): such a job is
    fenced on its holder alone, which every claim sets.
    """
    held = Job.objects.using(using).filter(pk=job.id, status=JobStatus.RUNNING, worker_id=job.worker_id)
    if isinstance(job.attempts, int) and not isinstance(job.attempts, bool):
        held = held.filter(attempts=job.attempts)
    return held


def fail_attempt(job: ClaimedJob, error: dict, decision: retry.RetryDecision, *, now: datetime,
                 final: str = JobStatus.FAILED, lost_before: datetime | None = None,
                 using: str | None = None) -> str | None:
    """Record a failed attempt: back to READY after ``decision.delay``, or ``final`` for good.

    The error joins the job's history (a history that could not be read as stored is
    replaced) and the attempt's worker joins its workers. A row that says a cancel was
    asked of this attempt is not retried, whether or not its worker had heard: it ends
    CANCELLED (and so does a final failure of it, unless the row is damaged).
    ``lost_before`` is the stale sweep's extra fence: the take-back holds only if the
    worker has not beaten since. Returns the status written, None when the attempt was
    no longer ``job.worker_id``'s to record.
    """
    using = using or router.db_for_write(Job)
    errors = job.errors if isinstance(job.errors, list) else []
    workers = job.worker_ids if isinstance(job.worker_ids, list) else []
    changes = dict(errors=[*errors, error], heartbeat_at=None, worker_ids=[*workers, job.worker_id],
                   error_class=str(error.get("exception_class_path") or "")[:255], cancel_requested_at=None)
    held = _attempt(job, using)
    if lost_before is not None:
        # A take-back: the row of a worker frozen or cut off inside a transaction is left for a
        # later sweep, not waited for (every worker sweeping would wait on the same oldest row).
        held = unless_locked(held.filter(heartbeat_at__lt=lost_before), using)
    # The flag is read by the UPDATE itself (its WHERE), not before it: a cancel asked a moment
    # earlier is seen (PostgreSQL re-reads a row it waited for), one asked after finds it gone.
    unasked, asked = held.filter(cancel_requested_at__isnull=True), held.filter(cancel_requested_at__isnull=False)
    status = None
    with transaction.atomic(using=using):
        if decision.retry:
            try:
                with transaction.atomic(using=using):
                    if unasked.update(**changes, status=JobStatus.READY,
                                      run_after=now + timedelta(seconds=decision.delay)):
                        status = JobStatus.READY
            except IntegrityError:
                # A READY job with its unique key was enqueued while it ran: that job stands for the retry.
                superseded = {**error, "message": f"{error['message']} (not retried: a job with the same unique key "
                                                  "is queued)"}
                if unasked.update(**{**changes, "errors": [*errors, superseded]}, status=JobStatus.FAILED,
                                  finished_at=now):
                    status = JobStatus.FAILED
        elif final != JobStatus.FAILED or job.damage:
            if held.update(**changes, status=final, finished_at=now):
                status = final
        elif unasked.update(**changes, status=final, finished_at=now):
            status = final
        if status is None and final != JobStatus.CANCELLED and not job.damage:
            cancelled = {**error, "message": f"{error['message']} (not retried: a cancel was asked while it ran)"}
            if asked.update(**{**changes, "errors": [*errors, cancelled]}, status=JobStatus.CANCELLED,
                            finished_at=now):
                status = JobStatus.CANCELLED
        if status is not None:
            statements(connections[using]).release([job])
        if status in FINISHED_STATUSES:
            settle_guarded(using, {job.id: status}, now=now)
    return status


def hand_back(jobs: Sequence[ClaimedJob], *, using: str | None = None) -> int:
    """Give unstarted or unfinished attempts back, READY; they do not count as attempts."""
    using = using or router.db_for_write(Job)
    attempts = models.Case(models.When(attempts__gt=0, then=F("attempts") - 1), default=models.Value(0))
    given, cancelled = [], {}
    with transaction.atomic(using=using):
        for job in jobs:
            held = _attempt(job, using)
            try:
                with transaction.atomic(using=using):
                    back = held.filter(cancel_requested_at__isnull=True).update(
                        status=JobStatus.READY, attempts=attempts, heartbeat_at=None)
            except IntegrityError:
                # A READY job with its unique key exists: it will run; this one is not needed again.
                back = held.update(status=JobStatus.CANCELLED, attempts=attempts, heartbeat_at=None,
                                   cancel_requested_at=None, finished_at=timezone.now(),
                                   meta=JSONMerge("meta", {"cancelled": {
                                       "at": timezone.now().isoformat(), "by": job.worker_id,
                                       "reason": "handed back while a job with the same unique key was queued"}}))
                if back:
                    cancelled[job.id] = JobStatus.CANCELLED
            # Someone asked to cancel it while this worker held it: it does not go back, it is cancelled
            # (and the attempt handed back does not count, as in every hand-back).
            if not back and held.filter(cancel_requested_at__isnull=False).update(
                    status=JobStatus.CANCELLED, attempts=attempts, heartbeat_at=None, cancel_requested_at=None,
                    finished_at=timezone.now()):
                back = cancelled[job.id] = JobStatus.CANCELLED
            if back:
                given.append(job)
        statements(connections[using]).release(given)
        settle_guarded(using, cancelled, now=timezone.now())
    return len(given)


def unless_locked(jobs: models.QuerySet, using: str) -> models.QuerySet:
    """``jobs`` less the rows another transaction holds locked, found without waiting (PostgreSQL:
    ``FOR UPDATE SKIP LOCKED``, its locks ending with the statement in autocommit; MySQL/MariaDB:
    the same read, made now); elsewhere (SQLite: one writer at a time) all."""
    connection = connections[using]
    if connection.vendor == "mysql":
        # MySQL/MariaDB cannot UPDATE a table it reads in a subquery: the rows free now, read first.
        sql, params = jobs.values("pk").query.get_compiler(using=using).as_sql()
        with connection.cursor() as cursor:
            cursor.execute(f"{sql} FOR UPDATE SKIP LOCKED", params)
            return jobs.filter(pk__in=[row[0] for row in cursor.fetchall()])
    if connection.vendor != "postgresql":
        return jobs
    sql, params = jobs.values("pk").query.get_compiler(using=using).as_sql()
    table, pk = connection.ops.quote_name(Job._meta.db_table), connection.ops.quote_name(Job._meta.pk.column)
    # Raw: the ORM refuses select_for_update() in a subquery outside a transaction.
    return jobs.filter(pk__in=RawSQL(f"SELECT {pk} FROM {table} WHERE {pk} IN ({sql}) FOR UPDATE SKIP LOCKED",
                                     params))


@dataclass
class Written:
    """What a batch wrote: for each outcome, its status as written (None: the attempt was
    no longer ours, so nothing was), and the jobs it claimed."""

    outcomes: list[tuple[object, str | None]]
    claimed: list[ClaimedJob]


class WorkerStore:
    """A worker's database verbs, on the connection of the thread that calls them."""

    def __init__(self, *, worker_id: str, backend: str):
        self.worker_id = worker_id
        self.backend = backend
        self.alias = router.db_for_write(Job)

    @property
    def connection(self):
        return connections[self.alias]

    def close(self) -> None:
        """Drop this thread's connection (after a database error: the next call reconnects)."""
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - it is broken already
            pass

    # -- the process row ------------------------------------------------------------------

    def register(self, *, queues: Sequence[str] | None, concurrency: int, now: datetime, parent: str = "") -> None:
        WorkerProcess.objects.using(self.alias).update_or_create(worker_id=self.worker_id, defaults=dict(
            hostname=socket.gethostname(), pid=os.getpid(), queues=list(queues or []), concurrency=concurrency,
            parent=parent, started_at=now, heartbeat_at=now))

    def unregister(self) -> None:
        WorkerProcess.objects.using(self.alias).filter(pk=self.worker_id).delete()

    # -- the batch ------------------------------------------------------------------------

    def finish_and_claim(self, outcomes: Sequence, *, limit: int, queues, now: datetime) -> Written:
        """Write the outcomes (fenced) and claim up to ``limit`` jobs: one transaction, and on
        PostgreSQL one statement when every outcome is a success.

        ``outcome.decision`` says what a failure comes to. Each failure is written in its
        own savepoint, so that a value the database refuses (or a bug) loses that one
        outcome, logged, instead of failing the whole batch again and again; its job is
        taken back once its heartbeat stops. A lost connection still raises.

        A success that sets something off (a member of a batch, a parent) is written with what
        it sets off and the claim that may take the child or callback it released, in the
        same transaction: one commit per link of a chain, not two. On MySQL a deadlock or lock
        wait timeout rolls all of it back, and it runs again.
        """
        if not any(o.succeeded and o.job.coordinated for o in outcomes):
            return self._finish_and_claim(outcomes, limit=limit, queues=queues, now=now)
        from .sql.mysql import RETRIES, conflict

        for attempt in range(RETRIES):
            try:
                with transaction.atomic(using=self.alias):
                    return self._finish_and_claim(outcomes, limit=limit, queues=queues, now=now)
            except OperationalError as exc:
                if not conflict(exc) or attempt == RETRIES - 1:
                    raise
                logger.debug("worker batch met a lock conflict, running it again: %s", exc)
        raise AssertionError("unreachable")

    def _finish_and_claim(self, outcomes: Sequence, *, limit: int, queues, now: datetime) -> Written:
        successes = [o for o in outcomes if o.succeeded and not o.job.coordinated]
        # Members of batches and parents: their ends set something off (jobs.settle), first, so that
        # this batch's claim can take a child or a callback they release.
        settled = [o for o in outcomes if o.succeeded and o.job.coordinated]
        failures = [o for o in outcomes if not o.succeeded]
        written = set()
        if settled:
            written = self.finish_settled(settled, now=now)
            now = max(now, timezone.now())  # a callback it enqueued is due by its own clock: claimable now
        sql = statements(self.connection)
        arguments = dict(worker_id=self.worker_id, now=now, limit=limit, queues=queues, backend=self.backend)
        if not failures:
            fast, claimed = sql.finish_and_claim([(o.job, o.return_value) for o in successes], **arguments)
        else:
            with transaction.atomic(using=self.alias):
                failed = [(o, self._isolated(o, now)) for o in failures]
                fast, claimed = sql.finish_and_claim([(o.job, o.return_value) for o in successes], **arguments)
        # The fast statements leave alone a row that became a parent after its claim (enqueue_after
        # marked it meanwhile): recorded here, as the others were (a lost attempt is not written again).
        late = [o for o in successes if o.job.id not in fast]
        written |= fast | (self.finish_settled(late, now=now) if late else set())
        done = [(o, JobStatus.SUCCESSFUL if o.job.id in written else None) for o in settled + successes]
        return Written(done + (failed if failures else []), claimed)

    def finish_settled(self, outcomes: Sequence, *, now: datetime) -> set[int]:
        """Record successes one by one (fenced), with what each sets off, in one transaction (the
        caller's, when it has one: no savepoint of its own)."""
        written: set[int] = set()
        with transaction.atomic(using=self.alias, savepoint=False):
            for outcome in outcomes:
                job = outcome.job
                workers = job.worker_ids if isinstance(job.worker_ids, list) else []
                if _attempt(job, self.alias).update(
                        status=JobStatus.SUCCESSFUL, return_value=outcome.return_value, finished_at=now,
                        heartbeat_at=None, cancel_requested_at=None, worker_ids=[*workers, self.worker_id]):
                    written.add(job.id)
            sql = statements(self.connection)
            sql.release([o.job for o in outcomes if o.job.id in written])
            # A parent's mark, read at its claim, never goes away: its row need not be read again.
            parents = {o.job.id: (o.job.batch_id, o.job.task_path) for o in outcomes
                       if o.job.id in written and o.job.has_dependents in (True, 1)
                       and isinstance(o.job.batch_id, (str, type(None)))}
            settle_guarded(self.alias, dict.fromkeys(written, JobStatus.SUCCESSFUL), now=now, known=parents)
        return written

    def _isolated(self, outcome, now: datetime) -> str | None:
        decision = outcome.decision
        try:
            with transaction.atomic(using=self.alias):
                return fail_attempt(outcome.job, outcome.error, decision, now=now, final=outcome.final,
                                    using=self.alias)
        except (OperationalError, InterfaceError):
            raise
        except Exception:  # noqa: BLE001
            logger.exception("job outcome could not be written id=%s task=%s; it will be taken back as lost",
                             outcome.job.id, outcome.job.task_path)
            return None

    def hand_back(self, jobs: Sequence[ClaimedJob]) -> int:
        return hand_back(jobs, using=self.alias)

    # -- liveness ---------------------------------------------------------------------------

    def heartbeat(self, held: Sequence[int], *, now: datetime) -> tuple[bool, list[int]]:
        """Beat for the process and every job it holds: (False if the process row was gone, the
        held jobs someone asked to cancel)."""
        # Statements of their own, not one transaction: the server ends each one's row locks with
        # it, whatever becomes of this process (see jobs.sessions). A held row that another
        # transaction has locked is beaten next time rather than waited for.
        asked: list[int] = []
        alive = WorkerProcess.objects.using(self.alias).filter(pk=self.worker_id).update(heartbeat_at=now)
        if held:
            unless_locked(self._mine(held), self.alias).update(heartbeat_at=now)
            asked = self.asked_to_cancel(held)
        return bool(alive), asked

    def _mine(self, held: Sequence[int]) -> models.QuerySet:
        return Job.objects.using(self.alias).filter(pk__in=list(held), worker_id=self.worker_id,
                                                    status=JobStatus.RUNNING)

    def asked_to_cancel(self, held: Sequence[int]) -> list[int]:
        """The held jobs whose rows say a cancel was asked (whatever else said so, this is read)."""
        return list(self._mine(held).filter(cancel_requested_at__isnull=False).values_list("pk", flat=True))

    def stale(self, *, cutoff: datetime, limit: int = 100, worker_id: str | None = None) -> list[ClaimedJob]:
        return statements(self.connection).stale(cutoff=cutoff, backend=self.backend, limit=limit, worker_id=worker_id)

    def mend_counts(self) -> list[tuple[str, object, int]]:
        """Set each limit key's running count to its RUNNING jobs where they differ (see jobs.sql)."""
        return statements(self.connection).mend_counts()

    def forget_dead_processes(self, before: datetime) -> int:
        """Rows of worker processes that died long ago say nothing useful any more."""
        return WorkerProcess.objects.using(self.alias).filter(heartbeat_at__lt=before).delete()[0]
