"""What the vendors' statements share: column names, the claim's SQL, parameters for inserts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from ..models import CLAIM_INDEX, Job, JobStatus, QueueState
from ..rows import CLAIMED, ClaimedJob, claim_order, columns_sql, read_rows

MAX_INT = 2**31 - 1  # the largest value of an integer column on PostgreSQL (and MySQL)

# The columns an insert writes, in this order (every NOT NULL one, and the optional ones
# an insert may set: the importer brings attempts and errors).
INSERT_FIELDS = ("task_path", "backend", "queue_name", "priority", "args", "kwargs", "status", "run_after",
                 "task_run_after", "enqueued_at", "attempts", "max_attempts", "worker_id", "worker_ids", "errors",
                 "meta")
JSON_FIELDS = frozenset({"args", "kwargs", "worker_ids", "errors", "meta", "return_value"})
TIME_FIELDS = frozenset({"run_after", "task_run_after", "enqueued_at"})
# A bulk enqueue's columns: all but the arguments are the same for every job of the call.
COMMON_FIELDS = tuple(name for name in INSERT_FIELDS if name not in ("args", "kwargs"))
INSERT_DEFAULTS = {"status": JobStatus.READY.value, "task_run_after": None, "attempts": 0, "max_attempts": None,
                   "worker_id": "", "worker_ids": [], "errors": [], "meta": {}}


class Statements:
    """The named statements of one connection; subclasses are the vendors."""

    vendor = ""

    def __init__(self, connection):
        self.connection = connection
        qn = connection.ops.quote_name
        self.table = qn(Job._meta.db_table)
        self.col = {f.name: qn(f.column) for f in Job._meta.concrete_fields}

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

    # -- the verbs (overridden per vendor) ----------------------------------------------

    def insert_job(self, values: dict, *, notify: str | None) -> int:
        raise NotImplementedError

    def insert_jobs(self, rows: Sequence[dict], *, notify: str | None) -> list[int]:
        """Insert jobs that differ in any column (the importer's); their ids, in order."""
        raise NotImplementedError

    def insert_calls(self, common: dict, batches: Sequence[str], *, notify: str | None) -> list[int]:
        """Insert one job per call of each batch (the JSON text of ``[[args, kwargs], ...]``),
        every other column from ``common``; their ids, in order."""
        raise NotImplementedError

    def claim(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str) -> list[ClaimedJob]:
        raise NotImplementedError

    def finish_and_claim(self, successes, *, worker_id: str, now: datetime, limit: int, queues,
                         backend: str) -> tuple[set[int], list[ClaimedJob]]:
        """Record ``successes`` ((job, return value) pairs, fenced) and claim up to ``limit``
        jobs, in one transaction; returns the ids recorded and the jobs claimed."""
        raise NotImplementedError

    def stale(self, *, cutoff: datetime, backend: str, limit: int) -> list[ClaimedJob]:
        raise NotImplementedError

    # -- helpers for the vendors ---------------------------------------------------------

    def claimed(self, rows) -> list[ClaimedJob]:
        jobs = read_rows(self.connection, CLAIMED, rows)
        jobs.sort(key=claim_order)
        return jobs


def not_paused_sql(connection) -> str:
    """The claim's filter for paused queues: a hashed subplan over a table of a few rows."""
    qn = connection.ops.quote_name
    meta = QueueState._meta
    return (f" AND {qn(Job._meta.get_field('queue_name').column)} NOT IN "
            f"(SELECT {qn(meta.get_field('name').column)} FROM {qn(meta.db_table)} "
            f"WHERE {qn(meta.get_field('paused').column)})")


def claim_sql(connection, *, worker_id: str, limit: int, now: datetime, queues, backend: str = "default",
              returning: bool = True) -> tuple[str, list]:
    """The claim, for PostgreSQL and SQLite: UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING.

    One statement: the rows are chosen by priority, then ``run_after``, then enqueue
    order, locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so that concurrent
    workers take disjoint rows without waiting, and handed back by ``RETURNING``. On
    SQLite the single UPDATE runs under the database's write lock, which makes it just
    as exclusive across processes. Exposed so that tests can EXPLAIN what workers run.
    """
    qn = connection.ops.quote_name
    table = qn(Job._meta.db_table)
    col = {f.name: qn(f.column) for f in Job._meta.concrete_fields}
    now_db = Job._meta.get_field("run_after").get_db_prep_value(now, connection)
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
        f"UPDATE {table} SET {col['status']} = '{JobStatus.RUNNING.value}', {col['attempts']} = "
        f"CASE WHEN {col['attempts']} < {MAX_INT} THEN {col['attempts']} + 1 ELSE {col['attempts']} END, "
        f"{col['worker_id']} = %s, {col['heartbeat_at']} = %s, {col['last_attempted_at']} = %s, "
        f"{col['started_at']} = COALESCE({col['started_at']}, %s) "
        f"WHERE {col['id']} IN (SELECT {col['id']} FROM {table}{hint} "
        # 'READY' is written out, not a parameter: only a literal lets the planner prove
        # that the partial claim index applies (SQLite never uses it for a parameter).
        f"WHERE {col['status']} = '{JobStatus.READY.value}' AND {col['backend']} = %s "
        f"AND {col['run_after']} <= %s{queue_sql}"
        f"{not_paused_sql(connection)} "
        f"ORDER BY {col['priority']} DESC, {col['run_after']}, {col['id']} LIMIT %s{lock})"
    )
    if returning:
        sql += f" RETURNING {columns_sql(connection, CLAIMED)}"
    params = [worker_id, now_db, now_db, now_db, backend, now_db, *queue_params, limit]
    return sql, params
