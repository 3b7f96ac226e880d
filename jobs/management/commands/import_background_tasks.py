"""``manage.py import_background_tasks``: django-background-tasks' pending tasks become jobs.

Reads its tables with plain SQL, so the package need not be installed any more.
Each pending row of ``background_task`` (name, ``[args, kwargs]`` JSON, ``run_at``,
priority, queue, attempts, last error, verbose name, creator, repeat) becomes one
READY job, in batches of one transaction each. The row's id is kept in
``Job.meta["background_task"]["source_id"]`` and rows already imported are
skipped, so running the command twice imports nothing twice. The source rows are
left in place. Each job gets the columns an enqueue of its task writes
(``DatabaseBackend.row_values``: unique and limit keys, limits, max_attempts), so a
unique task's row whose key a READY job holds makes no second job.

A row is left out, and reported, when its task name is not registered (no
``@background`` task of that name in an installed app's ``tasks`` module, and no
task at that dotted path), its parameters do not parse, its queue is not in
``TASKS["QUEUES"]``, it is locked by a worker that may still be running it, or it
already failed for good; so is a row the driver cannot read (text that is not
UTF-8 on SQLite) or the database refuses, alone. Fix the cause and run the command
again: it picks up where it left off.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, router, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from jobs import compat
from jobs.backends import serialise_arguments
from jobs.conf import MAX_ATTEMPTS
from jobs.errors import entry_from_traceback
from jobs.exceptions import JobError
from jobs.framework import (
    DEFAULT_TASK_BACKEND_ALIAS,
    DEFAULT_TASK_QUEUE_NAME,
    Task,
    task_backends,
)
from jobs.management.options import MAX_BATCH_SIZE, backend_alias, bounded_int, database_alias
from jobs.resolve import resolve_task

TABLE = "background_task"
COMPLETED_TABLE = "background_task_completedtask"
COLUMNS = ("id", "task_name", "task_params", "task_hash", "verbose_name", "priority", "run_at", "repeat",
           "repeat_until", "queue", "attempts", "failed_at", "last_error", "locked_by", "locked_at",
           "creator_content_type_id", "creator_object_id")
TIME_COLUMNS = ("run_at", "repeat_until", "failed_at", "locked_at")
TEXT_COLUMNS = ("task_name", "task_params", "task_hash", "verbose_name", "queue", "last_error", "locked_by")
UNREADABLE = "_unreadable"  # the key of a row the driver could not read: why
# Serialises concurrent imports on PostgreSQL (a transaction-level advisory lock).
ADVISORY_LOCK_KEY = 0x6A6F6273_62677431  # "jobsbgt1"


class Unreadable(ValueError):
    """A source row that cannot be read as django-background-tasks writes them."""


@dataclass
class Report:
    pending: int = 0
    imported: int = 0
    already: int = 0
    unregistered: Counter = field(default_factory=Counter)
    bad_queue: Counter = field(default_factory=Counter)
    unreadable: list = field(default_factory=list)
    locked: list = field(default_factory=list)
    failed: int = 0
    merged: int = 0  # rows of a unique task whose key a READY job held: that job stands for them
    repeat_dropped: Counter = field(default_factory=Counter)

    @property
    def left(self) -> int:
        return (sum(self.unregistered.values()) + sum(self.bad_queue.values()) + len(self.unreadable)
                + len(self.locked) + self.failed)


def aware(value) -> datetime | None:
    """A datetime read with plain SQL (a string, or naive, on SQLite) as Django would read it."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parsed = parse_datetime(value)  # None, or ValueError, for text that is no time
        if parsed is None:
            raise ValueError(f"{value[:60]!r} is not a time")
        value = parsed
    if not isinstance(value, datetime):
        raise ValueError(f"{value!r} is not a time")
    if not settings.USE_TZ:  # Django stores local time, and wants it back naive
        return timezone.make_naive(value) if timezone.is_aware(value) else value
    # Django stores UTC when USE_TZ is on.
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = ("Move django-background-tasks' pending tasks (its background_task table) into jobs; "
            "idempotent, batched, with --dry-run.")

    def add_arguments(self, parser):
        parser.add_argument("--database", type=database_alias, default=DEFAULT_DB_ALIAS,
                            help="DATABASES alias holding the background_task table (default 'default'). "
                                 "Jobs are written where the Job model lives.")
        parser.add_argument("--backend", type=backend_alias, default=DEFAULT_TASK_BACKEND_ALIAS,
                            help="TASKS alias of the jobs backend (default 'default').")
        parser.add_argument("--batch-size", type=bounded_int(1, MAX_BATCH_SIZE), default=500,
                            help=f"Rows per transaction (default 500, at most {MAX_BATCH_SIZE}).")
        parser.add_argument("--dry-run", action="store_true", help="Report what would be imported; write nothing.")
        parser.add_argument("--include-locked", action="store_true",
                            help="Also import rows locked by a django-background-tasks worker (only once every "
                                 "such worker is stopped: a live one would run them too).")

    def handle(self, *args, **options):
        alias, dry_run, batch_size = options["database"], options["dry_run"], options["batch_size"]
        self.verbosity = options["verbosity"]
        self.backend = task_backends[options["backend"]]
        source = connections[alias]
        tables = set(source.introspection.table_names())
        if TABLE not in tables:
            self.stdout.write(f"No django-background-tasks table {TABLE!r} in database {alias!r}: nothing to import.")
            return
        compat.autodiscover()
        self.include_locked = options["include_locked"]
        self.max_run_time = getattr(settings, "MAX_RUN_TIME", 3600)
        self.now = timezone.now()
        self.resolved: dict[str, Task | None] = {}
        self.content_types: dict[int, str | None] = {}
        report = Report()
        last_id = None
        while True:
            rows = self._fetch(source, last_id, batch_size)
            if not rows:
                break
            last_id = rows[-1]["id"]
            self._import_batch(source, rows, report, dry_run=dry_run)
        completed = self._completed_counts(source) if COMPLETED_TABLE in tables else None
        self._write_report(report, alias, dry_run, completed)

    # -- reading the source ------------------------------------------------------------

    def _fetch(self, source, after_id, limit) -> list[dict]:
        """The next ``limit`` rows after ``after_id``. When the driver cannot read one of them (text
        that is not UTF-8 on SQLite), each row is read alone: one that still fails is reported."""
        qn = source.ops.quote_name
        where, params = ("", []) if after_id is None else (f" WHERE {qn('id')} > %s", [after_id])
        # Times as text: the drivers raise inside the fetch on values a damaged table can hold
        # ('infinity', year 20000, '2026-13-45'), which would stop the whole import.
        text = "CHAR" if source.vendor == "mysql" else "TEXT"
        columns = ", ".join(f"CAST({qn(c)} AS {text})" if c in TIME_COLUMNS else qn(c) for c in COLUMNS)
        try:
            return self._select(source, f"SELECT {columns} FROM {qn(TABLE)}{where} ORDER BY {qn('id')} LIMIT %s",
                                [*params, limit])
        except (DatabaseError, UnicodeDecodeError):
            ids = self._select(source, f"SELECT {qn('id')} FROM {qn(TABLE)}{where} ORDER BY {qn('id')} LIMIT %s",
                               [*params, limit], names=("id",))
        rows = []
        for row_id in (row["id"] for row in ids):
            try:
                rows += self._select(source, f"SELECT {columns} FROM {qn(TABLE)} WHERE {qn('id')} = %s", [row_id])
            except (DatabaseError, UnicodeDecodeError) as exc:
                rows.append({"id": row_id, UNREADABLE: f"the database driver cannot read it ({type(exc).__name__}: "
                                                       f"{str(exc)[:200]})"})
        return rows

    @staticmethod
    def _select(source, sql: str, params: list, names=COLUMNS) -> list[dict]:
        with transaction.atomic(using=source.alias), source.cursor() as cursor:  # a failed read rolls back alone
            cursor.execute(sql, params)
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _completed_counts(self, source) -> tuple[int, int]:
        qn = source.ops.quote_name
        with source.cursor() as cursor:
            cursor.execute(f"SELECT {qn('failed_at')} IS NULL, COUNT(*) FROM {qn(COMPLETED_TABLE)} "
                           f"GROUP BY {qn('failed_at')} IS NULL")
            counts = {bool(ok): n for ok, n in cursor.fetchall()}
        return counts.get(True, 0), counts.get(False, 0)

    def _content_type(self, source, type_id) -> str | None:
        if type_id not in self.content_types:
            qn = source.ops.quote_name
            with source.cursor() as cursor:
                cursor.execute(f"SELECT {qn('app_label')}, {qn('model')} FROM {qn('django_content_type')} "
                               f"WHERE {qn('id')} = %s", [type_id])
                row = cursor.fetchone()
            self.content_types[type_id] = f"{row[0]}.{row[1]}" if row else None
        return self.content_types[type_id]

    def _resolve(self, name: str) -> Task | None:
        """The task a django-background-tasks name stands for: a registered name, else a dotted path."""
        if name not in self.resolved:
            task = compat.get_task(name)
            if task is None:
                try:
                    task = resolve_task(name)
                except JobError:
                    task = None
            self.resolved[name] = task
        return self.resolved[name]

    # -- one batch -----------------------------------------------------------------------

    def _job_for(self, source, row: dict, report: Report):
        """The Job a row becomes, or None (counted in the report under its reason).

        A row that cannot be read as django-background-tasks wrote it (a NULL where
        there is none, a time that is not one, numbers out of range, parameters
        nested past what the database stores) is reported as unreadable with what
        was wrong, and the import goes on with the other rows.
        """
        try:
            return self._read_row(source, row, report)
        except Unreadable as exc:
            report.unreadable.append((row["id"], str(exc)))
        except Exception as exc:  # noqa: BLE001 - one damaged row must not stop the import
            report.unreadable.append((row["id"], f"{type(exc).__name__}: {str(exc)[:200]}"))
        return None

    def _read_row(self, source, row: dict, report: Report):
        if UNREADABLE in row:
            raise Unreadable(row[UNREADABLE])
        for name in TEXT_COLUMNS:  # SQLite keeps what it is given: a BLOB is no text
            if row[name] is not None and not isinstance(row[name], str):
                raise Unreadable(f"{name} is {type(row[name]).__name__} {str(row[name])[:60]}, not text")
        if row["failed_at"] is not None:
            report.failed += 1
            return None
        locked_at = aware(row["locked_at"])
        if (row["locked_by"] and locked_at and locked_at > self.now - timedelta(seconds=self.max_run_time)
                and not self.include_locked):
            report.locked.append(row["id"])
            return None
        name = row["task_name"]
        if not isinstance(name, str) or not name:
            raise Unreadable(f"task_name is {name!r}, not a task name")
        task = self._resolve(name)
        if task is None:
            report.unregistered[name] += 1
            return None
        try:
            args, kwargs = json.loads(row["task_params"])
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise TypeError("expected [args, kwargs]")
            args, kwargs = serialise_arguments(task, args, kwargs)  # what enqueue would accept
        except (TypeError, ValueError, RecursionError) as exc:
            raise Unreadable(f"task_params do not parse ({type(exc).__name__}: {str(exc)[:200]})") from exc
        queue_name = row["queue"] or DEFAULT_TASK_QUEUE_NAME
        if self.backend.queues and queue_name not in self.backend.queues:
            report.bad_queue[queue_name] += 1
            return None
        try:
            run_at = aware(row["run_at"])
        except (TypeError, ValueError, OverflowError) as exc:
            raise Unreadable(f"run_at {row['run_at']!r} is not a time ({exc})") from exc
        if run_at is None:  # a time that does not parse must not quietly become "due now"
            raise Unreadable(f"run_at {row['run_at']!r} is not a time")
        priority, attempts = row["priority"], row["attempts"]
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise Unreadable(f"priority {priority!r} is not an integer")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 0 <= attempts <= MAX_ATTEMPTS:
            raise Unreadable(f"attempts {attempts!r} is not an integer from 0 to {MAX_ATTEMPTS}")
        info = {"name": name, "hash": row["task_hash"], "priority": row["priority"],
                "scheduled_at": run_at.isoformat(), "source_id": row["id"]}
        if row["repeat"]:
            if isinstance(task, compat.BackgroundTask):
                until = aware(row["repeat_until"])
                info.update(repeat=row["repeat"], repeat_until=until.isoformat() if until else None)
            else:
                report.repeat_dropped[name] += 1
        meta = {compat.META_KEY: info}
        if row["verbose_name"]:
            meta["verbose_name"] = row["verbose_name"]
        if row["creator_content_type_id"] is not None:
            meta["creator"] = {"content_type": self._content_type(source, row["creator_content_type_id"]),
                               "object_id": row["creator_object_id"]}
        errors = []
        if row["last_error"]:
            # Its backoff was attempts**4 + 5 seconds, so the failure happened then.
            failed_at = run_at - timedelta(seconds=min(attempts ** 4 + 5, 365 * 86400))
            errors.append(entry_from_traceback(row["last_error"], attempt=attempts, worker_id="django-background-tasks",
                                                when=failed_at))
        # What an enqueue of the task writes (its unique and limit keys, limits, max_attempts when the
        # task has its own), with the row's own queue, priority, time, attempts and last error.
        values = self.backend.row_values(task, self.now, args=args, kwargs=kwargs, meta=meta)
        values.update(queue_name=queue_name, priority=compat.map_priority(priority), run_after=run_at,
                      task_run_after=run_at, attempts=attempts, errors=errors)
        return values

    def _import_batch(self, source, rows: list[dict], report: Report, *, dry_run: bool) -> None:
        from jobs.models import Job

        report.pending += len(rows)
        jobs = [job for job in (self._job_for(source, row, report) for row in rows) if job is not None]
        if not jobs:
            return
        db = router.db_for_write(Job)
        with transaction.atomic(using=db):
            connection = connections[db]
            if connection.vendor == "postgresql" and not dry_run:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
            ids = [job["meta"][compat.META_KEY]["source_id"] for job in jobs]
            done = set(Job.objects.using(db).filter(**{f"meta__{compat.META_KEY}__source_id__in": ids})
                       .values_list(f"meta__{compat.META_KEY}__source_id", flat=True))
            new = [job for job in jobs if job["meta"][compat.META_KEY]["source_id"] not in done]
            made, refused = len(new), 0
            if new and not dry_run:
                made, refused = self._insert(db, new, report)
        report.imported += made
        report.merged += len(new) - made - refused
        report.already += len(jobs) - len(new)
        if self.verbosity >= 2:
            self.stdout.write(f"  batch up to id {rows[-1]['id']}: {made} imported, {len(jobs) - len(new)} "
                              f"already imported, {len(rows) - len(jobs)} left out")

    def _insert(self, db: str, jobs: list[dict], report: Report) -> tuple[int, int]:
        """(jobs inserted, rows the database refused). A unique task's row whose key a READY job
        holds writes nothing, as its enqueue would. Should the database refuse the batch, each
        row is inserted alone, and one it refuses is reported: the others are imported."""
        try:
            with transaction.atomic(using=db):
                return len(self.backend.insert_rows(jobs)), 0
        except (DatabaseError, TypeError, ValueError):
            pass
        made = refused = 0
        for job in jobs:
            try:
                with transaction.atomic(using=db):
                    made += len(self.backend.insert_rows([job]))
            except (DatabaseError, TypeError, ValueError) as exc:
                refused += 1
                report.unreadable.append((job["meta"][compat.META_KEY]["source_id"],
                                          f"the database refused it ({type(exc).__name__}: {str(exc)[:200]})"))
        return made, refused

    # -- the report --------------------------------------------------------------------

    def _write_report(self, report: Report, alias: str, dry_run: bool, completed) -> None:
        def out(label, value):
            self.stdout.write(f"  {label + ':':<30}{value}")

        heading = f"django-background-tasks, database {alias!r}"
        self.stdout.write(f"{heading} (dry run: nothing written):" if dry_run else f"{heading}:")
        out(f"rows in {TABLE}", report.pending)
        out("would import" if dry_run else "imported", report.imported)
        out("already imported (skipped)", report.already)
        if report.merged:
            out("unique, a READY job had it", report.merged)
        out("left out (see below)", report.left)
        if completed is not None:
            self.stdout.write(f"  completed history ({COMPLETED_TABLE}): {completed[0]} succeeded, "
                              f"{completed[1]} failed; not imported (it is history, not work).")
        warn = self.stderr.write
        for name, count in sorted(report.unregistered.items()):
            warn(f"  unregistered task {name!r}: {count} row(s) left out. Declare it with @background "
                 "(from jobs.compat) in an installed app's tasks module, then run this again.")
        for queue, count in sorted(report.bad_queue.items()):
            warn(f"  queue {queue!r} is not in TASKS['QUEUES']: {count} row(s) left out. Add it, then run this again.")
        for row_id, problem in report.unreadable:
            warn(f"  row id {row_id}: {problem}: left out.")
        if report.locked:
            warn(f"  {len(report.locked)} row(s) locked by a django-background-tasks worker that may still be "
                 "running them (ids " + ", ".join(map(str, report.locked[:20])) + "): left out. Stop its workers, "
                 "then run this again with --include-locked.")
        if report.failed:
            warn(f"  {report.failed} row(s) had already failed for good (failed_at set): left out.")
        for name, count in sorted(report.repeat_dropped.items()):
            warn(f"  {name!r} is a plain task, not @background: {count} repeating row(s) imported as one run each.")
