"""What the vendors' statements share: column names, parameters for inserts, and the claim.

The claim takes two kinds of READY jobs, in one order (priority, then run_after,
then enqueue order):

- jobs without limits, through the claim index, as many as asked;
- jobs with a limit key (a concurrency key or a rate limit), through the limited
  index, key by key: each key's first jobs, as many as the key has room for now.

A key's room comes from its ``JobLimit`` row (jobs running, recent starts), read
under a row lock (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: a key another worker is
claiming right now is skipped, not waited for; SQLite's write lock serialises every
claim anyway) and changed in the same transaction as the claim. A key's held-back
backlog is never read: what the claim reads grows with the number of keys that have
READY jobs, not with the jobs waiting behind them. When no job with a limit is
READY (each claim says whether one is), none of this runs. Of the keys with room,
only the ``limit`` whose first jobs come first in claim order take part: no claim
can take a job from more keys than it takes jobs.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from django.db import transaction

from .. import limits
from ..models import CLAIM_INDEX, LIMITED_INDEX, Job, JobLimit, JobStatus, QueueState
from ..rows import CLAIMED, ClaimedJob, claim_order, columns_sql, read_rows

logger = logging.getLogger("jobs.worker")

KEYS_FULL_FOR = timedelta(seconds=0.1)  # see Statements.keys_full()
MAX_INT = 2**31 - 1  # the largest value of an integer column on PostgreSQL (and MySQL)

# The columns an insert writes, in this order (every NOT NULL one, and the optional ones
# an insert may set: the importer brings attempts and errors).
INSERT_FIELDS = ("task_path", "backend", "queue_name", "priority", "args", "kwargs", "status", "run_after",
                 "task_run_after", "enqueued_at", "attempts", "max_attempts", "worker_id", "worker_ids", "errors",
                 "meta", "unique_key", "limit_key", "concurrency_limit", "rate_limit", "batch_id", "waiting_for")
JSON_FIELDS = frozenset({"args", "kwargs", "worker_ids", "errors", "meta", "return_value"})
TIME_FIELDS = frozenset({"run_after", "task_run_after", "enqueued_at"})
# A bulk enqueue's columns: the same for every job of the call but these, which come with each call.
PER_CALL = ("args", "kwargs", "unique_key", "limit_key")
COMMON_FIELDS = tuple(name for name in INSERT_FIELDS if name not in PER_CALL)
INSERT_DEFAULTS = {"status": JobStatus.READY.value, "task_run_after": None, "attempts": 0, "max_attempts": None,
                   "worker_id": "", "worker_ids": [], "errors": [], "meta": {}, "unique_key": None,
                   "limit_key": None, "concurrency_limit": None, "rate_limit": None, "batch_id": None,
                   "waiting_for": 0}


class Head(NamedTuple):
    """A limit key with due READY jobs, as its first one (in claim order) and its JobLimit row say."""

    key: str
    concurrency_limit: int | None
    rate_limit: str | None
    running: int
    starts: list
    order: tuple  # (-priority, run_after, id) of that first job: its place in claim order
    damage: str = ""  # what is wrong with that job's job-control columns: it is claimed only to fail alone


def make_head(key, concurrency, rate, priority, run_after, pk, *, running, starts) -> Head:
    """A Head from stored values, whatever they are: a first job whose job-control columns no
    declaration could give is marked damaged (it fails alone), and a damaged JobLimit row is
    read as "may have room" (the claim mends it under its lock)."""
    damage = ""
    if not isinstance(key, str):
        damage = f"limit_key stored as {type(key).__name__} {str(key)[:60]!r}"
    elif concurrency is not None and not limits.valid_limit(concurrency):
        damage = f"concurrency_limit {str(concurrency)[:60]!r} is not an integer from 1 to {limits.MAX_CONCURRENCY}"
    elif rate is not None and _rate(rate) is None:
        damage = f"rate_limit {str(rate)[:60]!r} is not a rate"
    return Head(key, concurrency if not damage else None, rate if not damage else None,
                running if limits.valid_running(running) else 0, read_starts(starts)[0],
                claim_position(priority, run_after, pk), damage)


class Statements:
    """The named statements of one connection; subclasses are the vendors."""

    vendor = ""
    max_keys = 10_000  # keys one claim statement may name (SQLite: its compound SELECT limit, 500)

    def __init__(self, connection):
        self.connection = connection
        qn = connection.ops.quote_name
        self.qn = qn
        self.table = qn(Job._meta.db_table)
        self.limit_table = qn(JobLimit._meta.db_table)
        self.col = {f.name: qn(f.column) for f in Job._meta.concrete_fields}
        self.claimed_columns = columns_sql(connection, CLAIMED)  # what a claim returns, built once
        # Whether the last claim saw READY jobs with a limit key (then the next one looks at keys).
        self.limited_ready = True
        self.keys_full_until: datetime | None = None  # see keys_full()

    # -- values as the database takes them --------------------------------------------

    def time(self, value: datetime | None):
        """A time as this database takes it (SQLite: text in UTC; PostgreSQL: the datetime)."""
        return self.connection.ops.adapt_datetimefield_value(value)

    def insert_values(self, values: dict, names: Sequence[str] = INSERT_FIELDS) -> list:
        """One row's parameters for ``names``: JSON as text, times as the database takes them."""
        row = []
        for name in names:
            value = values[name] if name in values else INSERT_DEFAULTS[name]
            if name in JSON_FIELDS:
                value = "[]" if value == [] else "{}" if value == {} else json.dumps(value)
            elif name in TIME_FIELDS:
                value = self.time(value)
            row.append(value)
        return row

    # -- enqueue (per vendor) -----------------------------------------------------------

    def insert_job(self, values: dict, *, notify: str | None) -> int | None:
        """Insert one job; its id, or None when a READY job has its unique key already."""
        raise NotImplementedError

    def insert_jobs(self, rows: Sequence[dict], *, notify: str | None) -> list[int]:
        """Insert jobs that differ in any column (the importer's); their ids, in order."""
        raise NotImplementedError

    def insert_calls(self, common: dict, batches: Sequence[str], *, notify: str | None) -> list[tuple[int, str]]:
        """Insert one job per call of each batch (the JSON text of ``[[args, kwargs, unique_key,
        limit_key], ...]``), every other column from ``common``; (id, unique key) of each job
        inserted, in order (a call whose unique key a READY job holds inserts nothing)."""
        raise NotImplementedError

    def ready_unique(self, backend: str, keys: Sequence[str]) -> dict[str, int]:
        """The READY job holding each of these unique keys, by key."""
        rows = Job.objects.using(self.connection.alias).filter(
            backend=backend, status=JobStatus.READY, unique_key__in=list(keys)).values_list("unique_key", "id")
        return dict(rows)

    def ensure_limits(self, keys: Sequence[str]) -> None:
        """A JobLimit row for each key (the claim locks it), made once, never locked here."""
        raise NotImplementedError

    # -- the claim --------------------------------------------------------------------

    def claim(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str) -> list[ClaimedJob]:
        """Take up to ``limit`` due jobs of ``backend`` for ``worker_id``, marking them RUNNING."""
        if limit <= 0:
            return []
        if not self.limited_ready or self.keys_full(now):
            jobs = self.claim_plain(worker_id=worker_id, limit=limit, now=now, queues=queues, backend=backend)
            if not self.limited_ready or len(jobs) == limit:
                return jobs
            # Jobs with limits just became READY, or too few others: look at the keys now, not a poll later.
            self.keys_full_until = None
            return jobs + self.claim(worker_id=worker_id, limit=limit - len(jobs), now=now, queues=queues,
                                     backend=backend)
        with transaction.atomic(using=self.connection.alias):
            return self._claim_limited(worker_id=worker_id, limit=limit, now=now, queues=queues, backend=backend)

    def keys_full(self, now: datetime) -> bool:
        """Whether the last look found every key at its limit, less than KEYS_FULL_FOR ago.

        Meanwhile a claim that jobs without limits fill takes only those: a busy worker does
        not read every key's head for each batch while the keys stay full. A claim that comes
        up short, and a release by this connection, look at the keys again at once; a key
        freed by another worker waits at most KEYS_FULL_FOR here (that worker looks at once).
        """
        until = self.keys_full_until
        return until is not None and until - KEYS_FULL_FOR <= now < until

    def claim_plain(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str) -> list[ClaimedJob]:
        """The claim of jobs without limits only (and whether jobs with limits are READY)."""
        return self.claim_rows(worker_id=worker_id, limit=limit, now=now, queues=queues, backend=backend, rooms={})

    def _claim_limited(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str) -> list[ClaimedJob]:
        epoch = now.timestamp()
        heads = self.limited_heads(now=now, queues=queues, backend=backend)  # a look without locks
        # A first job with damaged job-control columns is claimed by itself, uncounted, and fails
        # alone (jobs.rows reads the same damage); its key's next job is the head next time.
        damaged = sorted((head for head in heads if head.damage), key=lambda head: head.order)[:limit]
        taken: list[ClaimedJob] = []
        if damaged:
            for head in damaged:
                logger.warning("damaged job-control columns id=%s key=%r: %s; it fails alone", head.order[-1],
                               head.key, head.damage)
            taken = self.claim_ids([head.order[-1] for head in damaged], worker_id=worker_id, now=now)
            limit -= len(taken)
            if limit <= 0:
                return taken
        hopeful = sorted((head for head in heads if not head.damage and _room(head, head.running, head.starts,
                                                                              epoch) > 0),
                         key=lambda head: head.order)[:min(limit, self.max_keys)]
        self.keys_full_until = None if hopeful or damaged else now + KEYS_FULL_FOR
        if not hopeful:
            return taken + self.claim_plain(worker_id=worker_id, limit=limit, now=now, queues=queues,
                                            backend=backend)
        locked = self.locked_limits([head.key for head in hopeful], epoch)  # {key: (running, starts)}, fresh
        rooms, by_key = {}, {head.key: head for head in hopeful}
        for key, (running, starts) in locked.items():
            free = _room(by_key[key], running, starts, epoch)
            if free > 0:
                rooms[key] = min(free, limit)
        jobs = self.claim_rows(worker_id=worker_id, limit=limit, now=now, queues=queues, backend=backend,
                               rooms=rooms)
        updates = []
        for key, count in Counter(job.limit_key for job in jobs if job.limit_key in rooms).items():
            running, starts = locked[key]
            counted = sum(1 for job in jobs if job.limit_key == key and limits.counts_on_key(job))
            updates.append((key, counted, limits.recorded_starts(starts, count, now=epoch,
                                                                 rate=_rate(by_key[key].rate_limit))))
        self.save_limits(updates)
        return taken + jobs

    def claim_ids(self, ids: Sequence[int], *, worker_id: str, now: datetime) -> list[ClaimedJob]:
        """Claim these READY jobs by id, whatever their keys say (damaged rows, to fail them alone)."""
        if not ids:
            return []
        col, now_db = self.col, self.time(now)
        sql = (f"UPDATE {self.table} SET {col['status']} = '{JobStatus.RUNNING.value}', {col['attempts']} = "
               f"CASE WHEN {col['attempts']} < {MAX_INT} THEN {col['attempts']} + 1 ELSE {col['attempts']} END, "
               f"{col['worker_id']} = %s, {col['heartbeat_at']} = %s, {col['last_attempted_at']} = %s, "
               f"{col['started_at']} = COALESCE({col['started_at']}, %s), {col['progress']} = NULL "
               f"WHERE {col['id']} IN ({', '.join(['%s'] * len(ids))}) AND {col['status']} = "
               f"'{JobStatus.READY.value}' RETURNING {self.claimed_columns}")
        with self.connection.cursor() as cursor:
            cursor.execute(sql, [worker_id, now_db, now_db, now_db, *ids])
            return self.claimed(cursor.fetchall())

    # -- the counts, kept true ------------------------------------------------------------

    def counted_sql(self, alias: str) -> str:
        """Whether ``alias``'s row counts on its key (limits.counts_on_key, in SQL)."""
        return f"{alias}.{self.col['concurrency_limit']} BETWEEN 1 AND {limits.MAX_CONCURRENCY}"

    def actual_running(self, keys: Sequence) -> dict:
        """The RUNNING jobs that count on each of ``keys``, counted (call with their rows locked)."""
        if not keys:
            return {}
        col = self.col
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT j.{col['limit_key']}, COUNT(*) FROM {self.table} j WHERE j.{col['status']} = "
                           f"'{JobStatus.RUNNING.value}' AND j.{col['limit_key']} IN ({', '.join(['%s'] * len(keys))}) "
                           f"AND {self.counted_sql('j')} GROUP BY j.{col['limit_key']}", list(keys))
            return dict(cursor.fetchall())

    def locked_limits(self, keys: Sequence[str], epoch: float) -> dict[str, tuple[int, list]]:
        """``lock_limits``, with every damaged row mended while it is locked: a running count that
        is not a count gets the number of RUNNING jobs of the key, an unreadable start log an empty
        one (logged, naming the key). No stored value stops the claim."""
        rows = self.lock_limits(keys)
        fresh, broken = {}, []
        for key, (running, starts) in rows.items():
            log, unreadable = read_starts(starts, epoch)
            if not limits.valid_running(running) or unreadable:
                broken.append((key, running, starts))
            fresh[key] = (running, log)
        if broken:
            actual = self.actual_running([key for key, _, _ in broken])
            for key, running, starts in broken:
                count = actual.get(key, 0)
                logger.warning("damaged limit key mended key=%r running=%s starts=%s -> running=%d", key,
                               str(running)[:40], "unreadable" if read_starts(starts, epoch)[1] else "kept", count)
                fresh[key] = (count, fresh[key][1])
            self.write_counts([(key, fresh[key][0], fresh[key][1]) for key, _, _ in broken])
        return fresh

    def write_counts(self, rows: Sequence[tuple[str, int, list]]) -> None:
        """Set (key, running, starts) of locked JobLimit rows."""
        with self.connection.cursor() as cursor:
            cursor.executemany(f"UPDATE {self.limit_table} SET running = %s, starts = %s WHERE {self.qn('key')} = %s",
                               [(running, json.dumps(log), key) for key, running, log in rows])

    def mend_counts(self, *, limit: int = 1000) -> list[tuple[str, object, int]]:
        """The stale sweep's mend: every key whose running count no live attempt explains (a RUNNING
        job deleted, a tampered count, a deleted row) gets the count of its RUNNING jobs. Returns (key, was, now)
        of each key mended. Keys another transaction holds are left for the next sweep."""
        col = self.col
        with transaction.atomic(using=self.connection.alias):
            with self.connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT {self.qn('key')} FROM {self.limit_table} WHERE {self.nonzero_sql()} UNION "
                    f"SELECT DISTINCT j.{col['limit_key']} FROM {self.table} j WHERE j.{col['status']} = "
                    f"'{JobStatus.RUNNING.value}' AND j.{col['limit_key']} IS NOT NULL LIMIT %s", [limit])
                keys = [key for (key,) in cursor.fetchall() if isinstance(key, str)]
            if not keys:
                return []
            rows = self.lock_limits(keys)  # a key of RUNNING jobs whose row was deleted gets one, then mended
            actual = self.actual_running(list(rows))
            mended = [(key, running, actual.get(key, 0)) for key, (running, _) in rows.items()
                      if running != actual.get(key, 0) or not limits.valid_running(running)]
            if mended:
                self.keys_full_until = None
                with self.connection.cursor() as cursor:
                    cursor.executemany(f"UPDATE {self.limit_table} SET running = %s WHERE {self.qn('key')} = %s",
                                       [(count, key) for key, _, count in mended])
        return mended

    def nonzero_sql(self) -> str:
        """JobLimit rows whose running count is not 0 (or not a number at all)."""
        return "running <> 0"

    # -- the claim's parts (per vendor) ------------------------------------------------

    def claim_rows(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str,
                   rooms: dict[str, int]) -> list[ClaimedJob]:
        """One statement: jobs without limits, plus up to ``rooms[key]`` jobs of each key, at most
        ``limit`` in all, in claim order; sets ``self.limited_ready``."""
        raise NotImplementedError

    def limited_heads(self, *, now: datetime, queues, backend: str) -> list[Head]:
        """Each limit key with a due job that may have room (with the limits of its first due job),
        read without locks; a key at its concurrency limit may be left out."""
        raise NotImplementedError

    def lock_limits(self, keys: Sequence[str]) -> dict[str, tuple[object, object]]:
        """The JobLimit rows of ``keys`` that no other transaction holds, locked (made first where
        missing): {key: (running, starts)} as stored, unchecked."""
        raise NotImplementedError

    def save_limits(self, updates: Sequence[tuple[str, int, list]]) -> None:
        """(key, jobs to add to running, the new start log) for locked keys."""
        raise NotImplementedError

    def release(self, jobs: Sequence[ClaimedJob]) -> None:
        """These jobs leave RUNNING: they no longer count on their keys (in the caller's transaction)."""
        counts = Counter(job.limit_key for job in jobs if limits.counts_on_key(job))
        if counts:
            self.keys_full_until = None  # a key has room again
        for key, count in counts.items():
            JobLimit.objects.using(self.connection.alias).filter(key=key).update(
                running=_at_least_zero(count))

    # -- the worker's other verbs (per vendor) -------------------------------------------

    def finish_and_claim(self, successes, *, worker_id: str, now: datetime, limit: int, queues,
                         backend: str) -> tuple[set[int], list[ClaimedJob]]:
        """Record ``successes`` ((job, return value) pairs, fenced) and claim up to ``limit``
        jobs, in one transaction; returns the ids recorded and the jobs claimed."""
        raise NotImplementedError

    def stale(self, *, cutoff: datetime, backend: str, limit: int,
              worker_id: str | None = None) -> list[ClaimedJob]:
        """RUNNING rows whose heartbeat is older than ``cutoff``, the oldest first (only
        ``worker_id``'s, when given)."""
        raise NotImplementedError

    # -- helpers for the vendors ---------------------------------------------------------

    def claimed(self, rows) -> list[ClaimedJob]:
        jobs = read_rows(self.connection, CLAIMED, rows)
        jobs.sort(key=claim_order)
        return jobs

    def where_due(self, alias: str, *, queues, limited: bool) -> tuple[str, int]:
        """The claim's filter of ``alias``'s rows (parameters: backend, now, then the queues)."""
        col = self.col
        limit_test = "IS NOT NULL" if limited else "IS NULL"
        queue_sql = f" AND {alias}.{col['queue_name']} IN ({', '.join(['%s'] * len(queues))})" if queues else ""
        # 'READY' is written out, not a parameter: only a literal lets the planner prove that the
        # partial index applies (SQLite never uses one for a parameter).
        return (f"{alias}.{col['status']} = '{JobStatus.READY.value}' AND {alias}.{col['limit_key']} {limit_test} "
                f"AND {alias}.{col['backend']} = %s AND {alias}.{col['run_after']} <= %s{queue_sql}"
                f"{not_paused_sql(self.connection, alias)}")

    def index_hint(self, limited: bool) -> str:
        """SQLite's planner, without statistics, would rather sort every READY row found through
        another index on status; the partial indexes already hold them in claim order."""
        if self.vendor != "sqlite":
            return ""
        return f" INDEXED BY {self.qn(LIMITED_INDEX if limited else CLAIM_INDEX)}"


def read_starts(value, now: float | None = None) -> tuple[list, bool]:
    """A key's start log as the database hands it back (JSON text of a list of epoch seconds):
    (its numbers, whether it was unreadable). Never raises: nested 10,000 deep is damage too, and
    so is a start that is not finite or lies over an hour after ``now`` (it would fill the window
    for ever)."""
    if isinstance(value, (str, bytes, bytearray)):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return [], True
    if not isinstance(value, list):
        return [], True
    latest = math.inf if now is None else now + 3600
    numbers = [start for start in value if isinstance(start, (int, float)) and not isinstance(start, bool)
               and start <= latest and (isinstance(start, int) or math.isfinite(start))]
    return numbers, len(numbers) != len(value)


def claim_position(priority, run_after, pk) -> tuple:
    """A job's place in claim order, as a sort key. A damaged priority sorts as 0 and a damaged
    run_after last, not as an error: heads are sorted together, and one bad row must not stop
    every claim. (A valid run_after is a datetime on PostgreSQL, ISO text on SQLite.)"""
    valid = isinstance(run_after, (datetime, str))
    return (-priority if isinstance(priority, int) else 0, not valid, run_after if valid else "", pk)


def _rate(text: str | None):
    try:
        return limits.parse_rate(text) if text else None
    except ValueError:  # a damaged row: no rate limit rather than no claims
        return None


def _room(head: Head, running, starts, epoch: float) -> int:
    # A start far ahead (or not finite) is damage, mended under the key's lock: it must not look
    # like a full window here, or the key would never get there.
    return limits.room(running=running or 0, concurrency_limit=head.concurrency_limit,
                       starts=read_starts(starts, epoch)[0], rate=_rate(head.rate_limit), now=epoch)


def _at_least_zero(count: int):
    from django.db.models import F
    from django.db.models.functions import Greatest

    return Greatest(F("running") - count, 0)


def not_paused_sql(connection, alias: str = "") -> str:
    """The claim's filter for paused queues: a hashed subplan over a table of a few rows."""
    qn = connection.ops.quote_name
    meta = QueueState._meta
    column = qn(Job._meta.get_field("queue_name").column)
    return (f" AND {alias + '.' if alias else ''}{column} NOT IN "
            f"(SELECT {qn(meta.get_field('name').column)} FROM {qn(meta.db_table)} "
            f"WHERE {qn(meta.get_field('paused').column)})")
