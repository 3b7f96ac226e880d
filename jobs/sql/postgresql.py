"""PostgreSQL: server-side prepared statements, one round trip per worker batch.

Django binds parameters on the client, so PostgreSQL plans every statement afresh;
the claim costs more to plan (0.6-1.2 ms, against 0.45 ms to run) than to execute.
These statements go through psycopg's own cursor with server-side binding and
``prepare=True``: parsed and planned once per connection. (A project behind a
transaction-pooling PgBouncer older than 1.21 sets ``"prepare_threshold": None`` in
its DATABASES OPTIONS, as psycopg asks; then nothing is prepared here either: see
``jobs.pooler``.)

A worker's batch, recording the successes it has and claiming the next jobs, is one
statement of data-modifying CTEs: one round trip and one commit (with jobs of limit
keys in play, a short transaction of a few statements: see ``jobs.sql.base``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import psycopg
from django.db import transaction

from .. import limits
from ..models import JobStatus
from ..pooler import transaction_pooled
from ..rows import STALE, ClaimedJob, columns_sql, read_rows
from ..wakeup import CHANNEL
from .base import COMMON_FIELDS, INSERT_FIELDS, JSON_FIELDS, MAX_INT, Head, Statements, make_head

BULK_BATCH = 5000
ONLY_WHEN_ASKED = 2**31 - 1  # psycopg's prepare_threshold: automatic preparing never, prepare=True always
# The type of each inserted column's parameter.
TYPES = {name: "jsonb" for name in JSON_FIELDS} | {
    "task_path": "text", "backend": "text", "queue_name": "text", "status": "text", "worker_id": "text",
    "unique_key": "text", "limit_key": "text", "rate_limit": "text", "batch_id": "text", "waiting_for": "integer",
    "priority": "integer", "attempts": "integer", "max_attempts": "integer", "concurrency_limit": "integer",
    "run_after": "timestamptz", "task_run_after": "timestamptz", "enqueued_at": "timestamptz",
}


class PostgresStatements(Statements):
    vendor = "postgresql"

    def __init__(self, connection):
        super().__init__(connection)
        # An explicit None in OPTIONS is how a PgBouncer user says "no prepared statements".
        self.prepare = None if transaction_pooled(connection.settings_dict) else True
        col, table = self.col, self.table
        names = ", ".join(col[name] for name in INSERT_FIELDS)
        # A unique job's key taken by a READY job: nothing inserted, nothing returned.
        self.on_conflict = (f"ON CONFLICT ({col['backend']}, {col['unique_key']}) WHERE {col['status']} = "
                            f"'{JobStatus.READY.value}' AND {col['unique_key']} IS NOT NULL DO NOTHING")
        values = ", ".join(f"%s::{TYPES[name]}" for name in INSERT_FIELDS)
        self._insert = f"INSERT INTO {table} ({names}) VALUES ({values}) {self.on_conflict} RETURNING {col['id']}"
        # pg_notify in the same statement: delivered on commit, dropped on rollback, no extra round trip.
        self._insert_notify = f"WITH job AS ({self._insert}) SELECT job.id, pg_notify('{CHANNEL}', %s) FROM job"
        # The importer's rows: each column one array (JSON as text), turned back into rows in order.
        arrays = ", ".join(f"%s::{'text' if name in JSON_FIELDS else TYPES[name]}[]" for name in INSERT_FIELDS)
        selected = ", ".join(f"v.{col[name]}::jsonb" if name in JSON_FIELDS else f"v.{col[name]}"
                             for name in INSERT_FIELDS)
        self._bulk = (f"INSERT INTO {table} ({names}) SELECT {selected} FROM unnest({arrays}) WITH ORDINALITY "
                      f"AS v({names}, ord) ORDER BY v.ord {self.on_conflict} RETURNING {col['id']}")
        # A bulk enqueue: the calls as one jsonb array, every other column one parameter.
        common = ", ".join(f"%s::{TYPES[name]}" for name in COMMON_FIELDS)
        per_call = ", ".join(col[name] for name in ("args", "kwargs", "unique_key", "limit_key"))
        self._calls = (f"INSERT INTO {table} ({', '.join(col[name] for name in COMMON_FIELDS)}, {per_call}) "
                       f"SELECT {common}, v.call -> 0, v.call -> 1, v.call ->> 2, v.call ->> 3 "
                       f"FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS v(call, ord) ORDER BY v.ord "
                       f"{self.on_conflict} RETURNING {col['id']}, {col['unique_key']}")

    def _run(self, sql: str, params, *, fetch: bool = True):
        """Execute with server-side binding, prepared once per connection."""
        connection = self.connection
        connection.ensure_connection()
        raw = connection.connection
        if self.prepare and raw.prepare_threshold is None:
            # Django's default (no OPTIONS key) is psycopg's None, under which psycopg prepares
            # nothing, ``prepare=True`` included. A threshold no query reaches prepares exactly
            # the statements asked to be: these, never the ORM's.
            raw.prepare_threshold = ONLY_WHEN_ASKED
        with connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
            cursor.execute(sql, params, prepare=self.prepare)
            return cursor.fetchall() if fetch else cursor.rowcount

    def time(self, value):
        return value  # psycopg sends an aware datetime as timestamptz

    # -- enqueue ----------------------------------------------------------------------------

    def insert_job(self, values: dict, *, notify: str | None) -> int | None:
        params = self.insert_values(values)
        rows = self._run(self._insert, params) if notify is None else \
            self._run(self._insert_notify, [*params, notify])
        return rows[0][0] if rows else None

    def insert_jobs(self, rows: Sequence[dict], *, notify: str | None) -> list[int]:
        ids: list[int] = []
        for start in range(0, len(rows), BULK_BATCH):
            batch = [self.insert_values(row) for row in rows[start:start + BULK_BATCH]]
            columns = [list(column) for column in zip(*batch)]
            ids.extend(sorted(row[0] for row in self._run(self._bulk, columns)))
        self._notify(ids, notify)
        return ids

    def insert_calls(self, common: dict, batches: Sequence[str], *, notify: str | None) -> list[tuple[int, str]]:
        constants = self.insert_values(common, COMMON_FIELDS)
        inserted: list[tuple[int, str]] = []
        for text in batches:
            # Ids come from one sequence in insertion order, which ORDER BY v.ord made the calls' order.
            inserted.extend(sorted(tuple(row) for row in self._run(self._calls, [*constants, text])))
        self._notify(inserted, notify)
        return inserted

    def _notify(self, inserted, queue: str | None) -> None:
        if inserted and queue is not None:
            self._run(f"SELECT pg_notify('{CHANNEL}', %s)", [queue])

    def ensure_limits(self, keys: Sequence[str]) -> None:
        self._run(f"INSERT INTO {self.limit_table} ({self.qn('key')}, running, starts) SELECT DISTINCT k, 0, '[]'::jsonb "
                  f"FROM unnest(%s::text[]) AS k ON CONFLICT (key) DO NOTHING", [list(keys)], fetch=False)

    # -- the claim ------------------------------------------------------------------------------

    def _claim_ctes(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str,
                    rooms: dict[str, int]) -> tuple[str, list]:
        """``claimed AS (UPDATE ... RETURNING ...)`` and the CTEs before it, and their parameters.

        Without ``rooms`` (no key has room, or none has READY jobs: nearly every claim) the
        keyed part is left out, not passed empty arrays: the statement costs half as much to plan.
        """
        col, table = self.col, self.table
        order = f"{col['priority']} DESC, {col['run_after']}, {col['id']}"
        picked = f"{col['id']}, {col['priority']}, {col['run_after']}"
        plain = self.where_due("j", queues=queues, limited=False)
        due_params = [backend, now, *(queues or ())]
        sql = (f"free AS (SELECT {picked} FROM {table} j WHERE {plain} ORDER BY {order} LIMIT %s "
               f"FOR UPDATE SKIP LOCKED), ")
        params = [*due_params, limit]
        if rooms:
            limited = self.where_due("j", queues=queues, limited=True)
            sql += (
                f"keyed AS (SELECT k.* FROM unnest(%s::text[], %s::integer[]) AS b(key, room) CROSS JOIN LATERAL "
                f"(SELECT {picked} FROM {table} j WHERE {limited} AND j.{col['limit_key']} = b.key "
                f"ORDER BY {order} LIMIT b.room FOR UPDATE SKIP LOCKED) k), "
                f"chosen AS (SELECT c.{col['id']} FROM (SELECT * FROM free UNION ALL SELECT * FROM keyed) c "
                f"ORDER BY c.{col['priority']} DESC, c.{col['run_after']}, c.{col['id']} LIMIT %s), ")
            params += [list(rooms), list(rooms.values()), *due_params, limit]
        else:
            sql += f"chosen AS (SELECT {col['id']} FROM free), "
        sql += (
            f"claimed AS (UPDATE {table} SET {col['status']} = '{JobStatus.RUNNING.value}', {col['attempts']} = "
            # A damaged row at the integer column's maximum must not make every claim fail.
            f"CASE WHEN {col['attempts']} < {MAX_INT} THEN {col['attempts']} + 1 ELSE {col['attempts']} END, "
            f"{col['worker_id']} = %s, {col['heartbeat_at']} = %s, {col['last_attempted_at']} = %s, "
            f"{col['started_at']} = COALESCE({col['started_at']}, %s), {col['progress']} = NULL, "
            f"{col['cancel_requested_at']} = NULL WHERE {col['id']} IN (SELECT {col['id']} FROM chosen) "
            f"RETURNING {self.claimed_columns})"
        )
        return sql, [*params, worker_id, now, now, now]

    def _limited_ready_sql(self) -> str:
        col = self.col
        return (f"EXISTS (SELECT 1 FROM {self.table} x WHERE x.{col['status']} = '{JobStatus.READY.value}' "
                f"AND x.{col['limit_key']} IS NOT NULL AND x.{col['backend']} = %s)")

    def claim_sql(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str,
                  rooms: dict[str, int]) -> tuple[str, list]:
        ctes, params = self._claim_ctes(worker_id=worker_id, limit=limit, now=now, queues=queues, backend=backend,
                                        rooms=rooms)
        sql = (f"WITH {ctes} SELECT f.limited, claimed.* FROM (SELECT {self._limited_ready_sql()} AS limited) f "
               f"LEFT JOIN claimed ON true")
        return sql, [*params, backend]

    def claim_rows(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str,
                   rooms: dict[str, int]) -> list[ClaimedJob]:
        sql, params = self.claim_sql(worker_id=worker_id, limit=limit, now=now, queues=queues, backend=backend,
                                     rooms=rooms)
        rows = self._run(sql, params)
        self.limited_ready = bool(rows and rows[0][0])
        return self.claimed([row[1:] for row in rows])

    def limited_heads(self, *, now: datetime, queues, backend: str) -> list[Head]:
        col, table = self.col, self.table
        order_x, order_j = (f"{t}.{col['priority']} DESC, {t}.{col['run_after']}, {t}.{col['id']}" for t in "xj")

        def first_job(after: str) -> str:
            """The first READY job in claim order of the next key: its limits, and whether it is due."""
            return (f"SELECT x.{col['limit_key']}, x.{col['concurrency_limit']}, x.{col['rate_limit']}, "
                    f"x.{col['priority']}, x.{col['run_after']}, x.{col['id']}, "
                    f"({self.where_due('x', queues=queues, limited=True)}) FROM {table} x "
                    f"WHERE x.{col['status']} = '{JobStatus.READY.value}' AND x.{col['limit_key']} IS NOT NULL "
                    f"AND x.{col['backend']} = %s{after} ORDER BY x.{col['limit_key']}, {order_x} LIMIT 1")

        next_key = f" AND x.{col['limit_key']} > keys.k"
        sql = (
            # The keys with READY jobs and each one's first job, one probe of the limited index per
            # key (a loose index scan); a key whose first job is not due (run later, another queue,
            # a paused one) looks further for its first due job.
            f"WITH RECURSIVE keys(k, conc, rate, priority, run_after, id, due) AS (({first_job('')}) "
            f"UNION ALL SELECT n.* FROM keys CROSS JOIN LATERAL ({first_job(next_key)}) n) "
            f"SELECT keys.k, head.conc, head.rate, l.running, l.starts::text, head.priority, head.run_after, head.id "
            f"FROM keys CROSS JOIN LATERAL (SELECT keys.conc, keys.rate, keys.priority, keys.run_after, keys.id "
            f"WHERE keys.due IS TRUE UNION ALL (SELECT j.{col['concurrency_limit']}, j.{col['rate_limit']}, "
            f"j.{col['priority']}, j.{col['run_after']}, j.{col['id']} FROM {table} j WHERE keys.due IS NOT TRUE "
            f"AND {self.where_due('j', queues=queues, limited=True)} AND j.{col['limit_key']} = keys.k "
            f"ORDER BY {order_j} LIMIT 1)) head(conc, rate, priority, run_after, id) "
            f"LEFT JOIN {self.limit_table} l ON l.key = keys.k "
            # A key at its concurrency limit (and without a rate limit) has no room: not sent back. A
            # limit no declaration gives is the first job's damage: sent back, to fail it alone.
            f"WHERE head.rate IS NOT NULL OR head.conc IS NULL OR head.conc NOT BETWEEN 1 AND "
            f"{limits.MAX_CONCURRENCY} OR COALESCE(l.running, 0) < head.conc"
        )
        due = [backend, now, *(queues or ())]
        rows = self._run(sql, [*due, backend, *due, backend, *due])
        # starts as text: psycopg would parse jsonb inside the fetch, where a value nested 10,000 deep
        # raised RecursionError out of every claim.
        return [make_head(key, conc, rate, priority, run_after, pk, running=running, starts=starts)
                for key, conc, rate, running, starts, priority, run_after, pk in rows]

    def lock_limits(self, keys: Sequence[str]) -> dict[str, tuple[object, object]]:
        self.ensure_limits(keys)  # a key whose row went missing gets one (counting from 0)
        rows = self._run(f"SELECT key, running, starts::text FROM {self.limit_table} WHERE key = ANY(%s::text[]) "
                         f"FOR UPDATE SKIP LOCKED", [list(keys)])
        return {key: (running, starts) for key, running, starts in rows}

    def save_limits(self, updates: Sequence[tuple[str, int, list]]) -> None:
        if not updates:
            return
        keys, added, logs = zip(*updates)
        self._run(f"UPDATE {self.limit_table} l SET running = l.running + u.added, starts = u.starts::jsonb "
                  f"FROM unnest(%s::text[], %s::integer[], %s::text[]) AS u(key, added, starts) WHERE l.key = u.key",
                  [list(keys), list(added), [json.dumps(log) for log in logs]], fetch=False)

    # -- the worker's batch ----------------------------------------------------------------------

    def finish_and_claim(self, successes, *, worker_id: str, now: datetime, limit: int, queues,
                         backend: str) -> tuple[set[int], list[ClaimedJob]]:
        limited_done = [job for job, _ in successes if limits.counts_on_key(job)]
        if limited_done or (self.limited_ready and limit > 0 and not self.keys_full(now)):
            # Jobs of limit keys: a short transaction of a few statements (see jobs.sql.base).
            with transaction.atomic(using=self.connection.alias):
                written = self._record(successes, worker_id=worker_id, now=now)
                self.release([job for job in limited_done if job.id in written])
                return written, self.claim(worker_id=worker_id, limit=limit, now=now, queues=queues,
                                           backend=backend)
        if not successes:
            return set(), self.claim(worker_id=worker_id, limit=limit, now=now, queues=queues, backend=backend)
        # The common case: the successes and the next claim in one statement.
        ctes, claim_params = self._claim_ctes(worker_id=worker_id, limit=max(limit, 0), now=now, queues=queues,
                                              backend=backend, rooms={})
        sql = (f"WITH {self._done_cte()}, {ctes} SELECT (SELECT array_agg({self.col['id']}) FROM done), "
               f"{self._limited_ready_sql()}, claimed.* FROM (SELECT 1) AS one LEFT JOIN claimed ON true")
        rows = self._run(sql, [*self._done_params(successes, worker_id, now), *claim_params, backend])
        self.limited_ready = bool(rows and rows[0][1])
        written = set(rows[0][0] or ()) if rows else set()
        jobs = self.claimed([row[2:] for row in rows])
        if self.limited_ready and len(jobs) < limit:  # jobs with limits READY, and too few others: their keys
            self.keys_full_until = None
            jobs += self.claim(worker_id=worker_id, limit=limit - len(jobs), now=now, queues=queues,
                               backend=backend)
        return written, jobs

    def _done_cte(self) -> str:
        col, table = self.col, self.table
        return (f"done AS (UPDATE {table} j SET {col['status']} = '{JobStatus.SUCCESSFUL.value}', "
                f"{col['return_value']} = v.value::jsonb, {col['finished_at']} = %s, {col['heartbeat_at']} = NULL, "
                f"{col['cancel_requested_at']} = NULL, "
                f"{col['worker_ids']} = j.{col['worker_ids']} || to_jsonb(j.{col['worker_id']}) "
                f"FROM unnest(%s::bigint[], %s::integer[], %s::text[]) AS v(id, attempts, value) "
                f"WHERE j.{col['id']} = v.id AND j.{col['status']} = '{JobStatus.RUNNING.value}' "
                f"AND j.{col['attempts']} = v.attempts AND j.{col['worker_id']} = %s "
                # A row that became a parent after its claim is left for jobs.settle (jobs.store).
                f"AND j.{col['batch_id']} IS NULL AND NOT j.{col['has_dependents']} RETURNING j.{col['id']})")

    @staticmethod
    def _done_params(successes, worker_id: str, now: datetime) -> list:
        return [now, [job.id for job, _ in successes], [job.attempts for job, _ in successes],
                [None if value is None else json.dumps(value) for _, value in successes], worker_id]

    def _record(self, successes, *, worker_id: str, now: datetime) -> set[int]:
        if not successes:
            return set()
        rows = self._run(f"WITH {self._done_cte()} SELECT {self.col['id']} FROM done",
                         self._done_params(successes, worker_id, now))
        return {row[0] for row in rows}

    def stale(self, *, cutoff: datetime, backend: str, limit: int,
              worker_id: str | None = None) -> list[ClaimedJob]:
        col = self.col
        mine = [] if worker_id is None else [worker_id]
        worker_sql = f" AND {col['worker_id']} = %s" if mine else ""
        sql = (f"SELECT {columns_sql(self.connection, STALE)} FROM {self.table} "
               f"WHERE {col['status']} = '{JobStatus.RUNNING.value}' AND {col['backend']} = %s "
               f"AND {col['heartbeat_at']} < %s{worker_sql} ORDER BY {col['heartbeat_at']} LIMIT %s")
        return read_rows(self.connection, STALE, self._run(sql, [backend, cutoff, *mine, limit]))

