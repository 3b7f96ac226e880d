"""SQLite: the same statements in-process, where a round trip costs no network.

Python's sqlite3 keeps each statement compiled (per SQL text), so the worker's are
written once and reused. A worker's batch is one IMMEDIATE transaction: the
successes by ``executemany`` of one UPDATE, then the claim.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from django.db import transaction

from ..models import JobStatus
from ..rows import STALE, ClaimedJob, columns_sql, read_rows
from .base import COMMON_FIELDS, INSERT_FIELDS, Statements, claim_sql

# SQLite allows 32,766 parameters per statement; 16 columns a row.
BULK_BATCH = 500


class SqliteStatements(Statements):
    vendor = "sqlite"

    def __init__(self, connection):
        super().__init__(connection)
        col, table = self.col, self.table
        self._names = ", ".join(col[name] for name in INSERT_FIELDS)
        self._row = "(" + ", ".join(["%s"] * len(INSERT_FIELDS)) + ")"
        self._insert = f"INSERT INTO {table} ({self._names}) VALUES {self._row} RETURNING {col['id']}"
        self._success = (
            f"UPDATE {table} SET {col['status']} = '{JobStatus.SUCCESSFUL.value}', {col['return_value']} = %s, "
            f"{col['finished_at']} = %s, {col['heartbeat_at']} = NULL, {col['worker_ids']} = %s "
            f"WHERE {col['id']} = %s AND {col['status']} = '{JobStatus.RUNNING.value}' AND {col['attempts']} = %s "
            f"AND {col['worker_id']} = %s")

    def _fetch(self, sql: str, params) -> list[tuple]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def insert_job(self, values: dict, *, notify: str | None) -> int:
        # Workers notice a commit through PRAGMA data_version (jobs.wakeup): nothing to send.
        return self._fetch(self._insert, self.insert_values(values))[0][0]

    def insert_jobs(self, rows: Sequence[dict], *, notify: str | None) -> list[int]:
        ids: list[int] = []
        for start in range(0, len(rows), BULK_BATCH):
            batch = rows[start:start + BULK_BATCH]
            params = [value for row in batch for value in self.insert_values(row)]
            sql = (f"INSERT INTO {self.table} ({self._names}) VALUES {', '.join([self._row] * len(batch))} "
                   f"RETURNING {self.col['id']}")
            ids.extend(row[0] for row in self._fetch(sql, params))
        return ids

    def insert_calls(self, common: dict, batches: Sequence[str], *, notify: str | None) -> list[int]:
        col = self.col
        constants = self.insert_values(common, COMMON_FIELDS)
        sql = (f"INSERT INTO {self.table} ({', '.join(col[name] for name in (*COMMON_FIELDS, 'args', 'kwargs'))}) "
               f"SELECT {', '.join(['%s'] * len(COMMON_FIELDS))}, json_extract(v.value, '$[0]'), "
               f"json_extract(v.value, '$[1]') FROM json_each(%s) AS v ORDER BY v.key RETURNING {col['id']}")
        ids: list[int] = []
        for text in batches:
            ids.extend(sorted(row[0] for row in self._fetch(sql, [*constants, text])))
        return ids

    def claim(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str) -> list[ClaimedJob]:
        sql, params = claim_sql(self.connection, worker_id=worker_id, limit=limit, now=now, queues=queues,
                                backend=backend)
        return self.claimed(self._fetch(sql, params))

    def finish_and_claim(self, successes, *, worker_id: str, now: datetime, limit: int, queues,
                         backend: str) -> tuple[set[int], list[ClaimedJob]]:
        with transaction.atomic(using=self.connection.alias):
            written = self._record(successes, worker_id=worker_id, now=now)
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

    def stale(self, *, cutoff: datetime, backend: str, limit: int) -> list[ClaimedJob]:
        col = self.col
        sql = (f"SELECT {columns_sql(self.connection, STALE)} FROM {self.table} "
               f"WHERE {col['status']} = '{JobStatus.RUNNING.value}' AND {col['backend']} = %s "
               f"AND {col['heartbeat_at']} < %s ORDER BY {col['heartbeat_at']} LIMIT %s")
        return read_rows(self.connection, STALE, self._fetch(sql, [backend, self.time(cutoff), limit]))
