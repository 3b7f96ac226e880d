"""SQLite: the same statements in-process, where a round trip costs no network.

Python's sqlite3 keeps each statement compiled (per SQL text), so the worker's are
written once and reused. A worker's batch is one IMMEDIATE transaction: the
successes by ``executemany`` of one UPDATE, then the claim. Every writer holds the
database's one write lock, so a claim needs no row locks to be exclusive.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from django.db import transaction

from ..models import JobStatus
from ..rows import STALE, ClaimedJob, columns_sql, read_rows
from .base import COMMON_FIELDS, INSERT_FIELDS, MAX_INT, Head, Statements, make_head

# SQLite allows 32,766 parameters per statement; 20 columns a row.
BULK_BATCH = 500


class SqliteStatements(Statements):
    vendor = "sqlite"
    max_keys = 400

    def __init__(self, connection):
        super().__init__(connection)
        col, table = self.col, self.table
        self._names = ", ".join(col[name] for name in INSERT_FIELDS)
        self._row = "(" + ", ".join(["%s"] * len(INSERT_FIELDS)) + ")"
        # A unique job's key taken by a READY job: nothing inserted, nothing returned.
        self.on_conflict = (f"ON CONFLICT ({col['backend']}, {col['unique_key']}) WHERE {col['status']} = "
                            f"'{JobStatus.READY.value}' AND {col['unique_key']} IS NOT NULL DO NOTHING")
        self._insert = (f"INSERT INTO {table} ({self._names}) VALUES {self._row} {self.on_conflict} "
                        f"RETURNING {col['id']}")
        self._success = (
            f"UPDATE {table} SET {col['status']} = '{JobStatus.SUCCESSFUL.value}', {col['return_value']} = %s, "
            f"{col['finished_at']} = %s, {col['heartbeat_at']} = NULL, {col['cancel_requested_at']} = NULL, "
            f"{col['worker_ids']} = %s "
            f"WHERE {col['id']} = %s AND {col['status']} = '{JobStatus.RUNNING.value}' AND {col['attempts']} = %s "
            f"AND {col['worker_id']} = %s AND {col['batch_id']} IS NULL AND NOT {col['has_dependents']}")

    def _fetch(self, sql: str, params) -> list[tuple]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    # -- enqueue ----------------------------------------------------------------------------

    def insert_job(self, values: dict, *, notify: str | None) -> int | None:
        # Workers notice a commit through PRAGMA data_version (jobs.wakeup): nothing to send.
        rows = self._fetch(self._insert, self.insert_values(values))
        return rows[0][0] if rows else None

    def insert_jobs(self, rows: Sequence[dict], *, notify: str | None) -> list[int]:
        ids: list[int] = []
        for start in range(0, len(rows), BULK_BATCH):
            batch = rows[start:start + BULK_BATCH]
            params = [value for row in batch for value in self.insert_values(row)]
            sql = (f"INSERT INTO {self.table} ({self._names}) VALUES {', '.join([self._row] * len(batch))} "
                   f"{self.on_conflict} RETURNING {self.col['id']}")
            ids.extend(sorted(row[0] for row in self._fetch(sql, params)))
        return ids

    def insert_calls(self, common: dict, batches: Sequence[str], *, notify: str | None) -> list[tuple[int, str]]:
        col = self.col
        constants = self.insert_values(common, COMMON_FIELDS)
        per_call = ", ".join(col[name] for name in ("args", "kwargs", "unique_key", "limit_key"))
        sql = (f"INSERT INTO {self.table} ({', '.join(col[name] for name in COMMON_FIELDS)}, {per_call}) "
               f"SELECT {', '.join(['%s'] * len(COMMON_FIELDS))}, json_extract(v.value, '$[0]'), "
               f"json_extract(v.value, '$[1]'), json_extract(v.value, '$[2]'), json_extract(v.value, '$[3]') "
               # WHERE true: SQLite's grammar needs it between a SELECT and ON CONFLICT.
               f"FROM json_each(%s) AS v WHERE true ORDER BY v.key {self.on_conflict} "
               f"RETURNING {col['id']}, {col['unique_key']}")
        inserted: list[tuple[int, str]] = []
        for text in batches:
            inserted.extend(sorted(tuple(row) for row in self._fetch(sql, [*constants, text])))
        return inserted

    def ensure_limits(self, keys: Sequence[str]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(f"INSERT OR IGNORE INTO {self.limit_table} ({self.qn('key')}, running, starts) "
                               f"VALUES (%s, 0, '[]')", [(key,) for key in dict.fromkeys(keys)])

    # -- the claim ------------------------------------------------------------------------------

    def claim_sql(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str,
                  rooms: dict[str, int]) -> tuple[str, list]:
        col, table = self.col, self.table
        order = f"{col['priority']} DESC, {col['run_after']}, {col['id']}"
        picked = f"{col['id']}, {col['priority']}, {col['run_after']}"
        now_db = self.time(now)
        due_params = [backend, now_db, *(queues or ())]
        parts = [f"SELECT * FROM (SELECT {picked} FROM {table} j{self.index_hint(False)} "
                 f"WHERE {self.where_due('j', queues=queues, limited=False)} ORDER BY {order} LIMIT %s)"]
        params = [*due_params, limit]
        for key, free in rooms.items():  # each key's first jobs, as many as it has room for
            parts.append(f"SELECT * FROM (SELECT {picked} FROM {table} j{self.index_hint(True)} "
                         f"WHERE {self.where_due('j', queues=queues, limited=True)} AND j.{col['limit_key']} = %s "
                         f"ORDER BY {order} LIMIT %s)")
            params += [*due_params, key, free]
        if rooms:  # the keys' first jobs and the others, merged in claim order (a sort of a few rows)
            chosen = f"SELECT {col['id']} FROM ({' UNION ALL '.join(parts)}) ORDER BY {order} LIMIT %s"
            params.append(limit)
        else:  # the claim index already yields them in claim order
            chosen = (f"SELECT {col['id']} FROM {table} j{self.index_hint(False)} "
                      f"WHERE {self.where_due('j', queues=queues, limited=False)} ORDER BY {order} LIMIT %s")
        sql = (
            f"UPDATE {table} SET {col['status']} = '{JobStatus.RUNNING.value}', {col['attempts']} = "
            # A damaged row at the integer column's maximum must not make every claim fail.
            f"CASE WHEN {col['attempts']} < {MAX_INT} THEN {col['attempts']} + 1 ELSE {col['attempts']} END, "
            f"{col['worker_id']} = %s, {col['heartbeat_at']} = %s, {col['last_attempted_at']} = %s, "
            f"{col['started_at']} = COALESCE({col['started_at']}, %s), {col['progress']} = NULL, "
            f"{col['cancel_requested_at']} = NULL WHERE {col['id']} IN ({chosen}) RETURNING {self.claimed_columns}"
        )
        return sql, [worker_id, now_db, now_db, now_db, *params]

    def claim_rows(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str,
                   rooms: dict[str, int]) -> list[ClaimedJob]:
        sql, params = self.claim_sql(worker_id=worker_id, limit=limit, now=now, queues=queues, backend=backend,
                                     rooms=rooms)
        jobs = self.claimed(self._fetch(sql, params))
        col = self.col
        self.limited_ready = bool(self._fetch(
            f"SELECT 1 FROM {self.table}{self.index_hint(True)} WHERE {col['status']} = '{JobStatus.READY.value}' "
            f"AND {col['limit_key']} IS NOT NULL AND {col['backend']} = %s LIMIT 1", [backend]))
        return jobs

    def limited_heads(self, *, now: datetime, queues, backend: str) -> list[Head]:
        col, table = self.col, self.table
        ready = (f"{col['status']} = '{JobStatus.READY.value}' AND {col['limit_key']} IS NOT NULL "
                 f"AND {col['backend']} = %s")
        # json_array refuses a BLOB: one stored in any of these columns reads as text that is no value.
        values = ", ".join(f"CASE typeof(j.{col[name]}) WHEN 'blob' THEN 'blob' ELSE j.{col[name]} END"
                           for name in ("concurrency_limit", "rate_limit", "priority", "run_after"))
        head = (f"SELECT json_array({values}, j.{col['id']}) FROM {table} j"
                f"{self.index_hint(True)} WHERE {self.where_due('j', queues=queues, limited=True)} "
                f"AND j.{col['limit_key']} = keys.k ORDER BY j.{col['priority']} DESC, j.{col['run_after']}, "
                f"j.{col['id']} LIMIT 1")
        sql = (
            # The keys with READY jobs, one index probe each (a loose scan of the limited index).
            f"WITH RECURSIVE keys(k) AS (SELECT MIN({col['limit_key']}) FROM {table}{self.index_hint(True)} "
            f"WHERE {ready} UNION ALL SELECT (SELECT MIN({col['limit_key']}) FROM {table}{self.index_hint(True)} "
            f"WHERE {ready} AND {col['limit_key']} > keys.k) FROM keys WHERE keys.k IS NOT NULL) "
            f"SELECT k, head, l.running, l.starts FROM (SELECT keys.k AS k, ({head}) AS head FROM keys "
            f"WHERE keys.k IS NOT NULL) LEFT JOIN {self.limit_table} l ON l.{self.qn('key')} = k "
            f"WHERE head IS NOT NULL"
        )
        rows = self._fetch(sql, [backend, backend, backend, self.time(now), *(queues or ())])
        heads = []
        for key, head, running, starts in rows:
            made = make_head(key, *json.loads(head), running=running, starts=starts)
            if (not made.damage and made.concurrency_limit is not None and made.rate_limit is None
                    and made.running >= made.concurrency_limit):
                continue  # at its limit: no room
            heads.append(made)
        return heads

    def lock_limits(self, keys: Sequence[str]) -> dict[str, tuple[object, object]]:
        # Inside the claim's IMMEDIATE transaction: nobody else writes until it commits.
        self.ensure_limits(keys)
        marks = ", ".join(["%s"] * len(keys))
        rows = self._fetch(f"SELECT {self.qn('key')}, running, starts FROM {self.limit_table} "
                           f"WHERE {self.qn('key')} IN ({marks})", list(keys))
        return {key: (running, starts) for key, running, starts in rows}

    def counted_sql(self, alias: str) -> str:
        # SQLite keeps 1.5 or '3' in an integer column: only a stored integer counts.
        return f"typeof({alias}.{self.col['concurrency_limit']}) = 'integer' AND {super().counted_sql(alias)}"

    def nonzero_sql(self) -> str:
        return "(running <> 0 OR typeof(running) <> 'integer')"

    def save_limits(self, updates: Sequence[tuple[str, int, list]]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(f"UPDATE {self.limit_table} SET running = running + %s, starts = %s "
                               f"WHERE {self.qn('key')} = %s",
                               [(added, json.dumps(log), key) for key, added, log in updates])

    # -- the worker's batch ----------------------------------------------------------------------

    def finish_and_claim(self, successes, *, worker_id: str, now: datetime, limit: int, queues,
                         backend: str) -> tuple[set[int], list[ClaimedJob]]:
        with transaction.atomic(using=self.connection.alias):
            written = self._record(successes, worker_id=worker_id, now=now)
            self.release([job for job, _ in successes if job.id in written])
            claimed = self.claim(worker_id=worker_id, limit=limit, now=now, queues=queues,
                                 backend=backend) if limit > 0 else []
        return written, claimed

    def _record(self, successes, *, worker_id: str, now: datetime) -> set[int]:
        if not successes:
            return set()
        finished = self.time(now)
        rows = [(None if value is None else json.dumps(value), finished, json.dumps([*job.worker_ids, worker_id]),
                 job.id, job.attempts, worker_id) for job, value in successes]
        with self.connection.cursor() as cursor:
            cursor.executemany(self._success, rows)
            count = cursor.rowcount
        ids = {job.id for job, _ in successes}
        if count == len(successes):
            return ids
        # Some attempt was taken over meanwhile (rare): find out which rows are ours.
        placeholders = ", ".join(["%s"] * len(ids))
        col = self.col
        held = {(job.id, job.attempts) for job, _ in successes}
        mine = self._fetch(f"SELECT {col['id']}, {col['attempts']} FROM {self.table} WHERE {col['id']} IN "
                           f"({placeholders}) AND {col['status']} = '{JobStatus.SUCCESSFUL.value}' AND "
                           f"{col['worker_id']} = %s", [*ids, worker_id])
        return {pk for pk, attempts in mine if (pk, attempts) in held}

    def stale(self, *, cutoff: datetime, backend: str, limit: int,
              worker_id: str | None = None) -> list[ClaimedJob]:
        col = self.col
        mine = [] if worker_id is None else [worker_id]
        worker_sql = f" AND {col['worker_id']} = %s" if mine else ""
        sql = (f"SELECT {columns_sql(self.connection, STALE)} FROM {self.table} "
               f"WHERE {col['status']} = '{JobStatus.RUNNING.value}' AND {col['backend']} = %s "
               f"AND {col['heartbeat_at']} < %s{worker_sql} ORDER BY {col['heartbeat_at']} LIMIT %s")
        return read_rows(self.connection, STALE, self._fetch(sql, [backend, self.time(cutoff), *mine, limit]))

