"""MySQL and MariaDB (InnoDB): the statements, without partial indexes or UPDATE ... RETURNING.

The migration ``0008_mariadb_indexes`` gives these servers what the model's partial
indexes give the others: ``jobs_job_my_claim`` (``status``, ``backend``, ``limit_key``,
``priority`` DESC, ``run_after``, ``id``), whose order is the claim's, and a stored
generated column holding ``unique_key`` only while the job is READY, under a plain unique
index. The claim is a locking read through that index (``FOR UPDATE SKIP LOCKED``, read
in index order: no filesort, so InnoDB locks the rows it hands back and no others), the
UPDATE of those rows by id, and the commit; the values the UPDATE wrote are set on the
claimed jobs here rather than read back.

Deadlocks (1213) and lock wait timeouts (1205) on the worker's hot path are conflicts
with another worker, not faults: the transaction is rolled back by InnoDB and run again.
Connections are expected at READ COMMITTED (Django's default for MySQL; ``jobs.W030``
says when they are not): REPEATABLE READ takes gap locks, and claims block each other.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime

from django.db import IntegrityError, OperationalError, transaction

from .. import limits
from ..jsontext import json_depth
from ..models import JobStatus
from ..rows import CLAIMED, STALE, ClaimedJob, claim_order, columns_sql, read_rows
from .base import COMMON_FIELDS, INSERT_FIELDS, MAX_INT, Head, Statements, make_head

logger = logging.getLogger(__name__)

CLAIM_INDEX = "jobs_job_my_claim"  # made by migration 0008 (MySQL and MariaDB only)
RUNNING_INDEX = "jobs_job_my_running"
UNIQUE_INDEX = "jobs_job_my_unique_ready"
BULK_BATCH = 5000
DEADLOCK, LOCK_WAIT_TIMEOUT, DUPLICATE_KEY = 1213, 1205, 1062
RETRIES = 5  # runs of a batch that met a deadlock, at most
# Deepest nesting of an argument the server stores inside the arguments' list: MariaDB's JSON_VALID
# (the JSONField's CHECK) refuses 32 levels and more; MySQL's JSON type refuses more than 100.
MARIADB_JSON_DEPTH = 30
MYSQL_JSON_DEPTH = 99


def conflict(exc: BaseException) -> bool:
    """A deadlock or a lock wait timeout: InnoDB rolled the statement (1213: the transaction) back."""
    cause = exc.__cause__ if isinstance(exc.__cause__, BaseException) else exc
    code = getattr(cause, "args", (None,))[0] if getattr(cause, "args", None) else None
    return code in (DEADLOCK, LOCK_WAIT_TIMEOUT)


class MysqlStatements(Statements):
    vendor = "mysql"
    max_keys = 500

    def __init__(self, connection):
        super().__init__(connection)
        col, table = self.col, self.table
        self.mariadb = bool(getattr(connection, "mysql_is_mariadb", False))
        self.max_json_depth = MARIADB_JSON_DEPTH if self.mariadb else MYSQL_JSON_DEPTH
        self._names = ", ".join(col[name] for name in INSERT_FIELDS)
        self._row = "(" + ", ".join(["%s"] * len(INSERT_FIELDS)) + ")"
        self._insert = f"INSERT INTO {table} ({self._names}) VALUES {self._row}"
        self._order = f"{col['priority']} DESC, {col['run_after']}, {col['id']}"
        self._limited_ready = (
            f"SELECT 1 FROM {table} FORCE INDEX ({CLAIM_INDEX}) WHERE {col['status']} = '{JobStatus.READY.value}' "
            f"AND {col['backend']} = %s AND {col['limit_key']} IS NOT NULL LIMIT 1")

    def _fetch(self, sql: str, params) -> list[tuple]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def _execute(self, sql: str, params) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount

    def _retried(self, run):
        """``run()`` in a transaction, again after a deadlock or lock wait timeout (unless an outer
        transaction holds it: InnoDB rolled that back whole, so its owner must decide)."""
        alias = self.connection.alias
        if self.connection.in_atomic_block:
            return run()
        for attempt in range(RETRIES):
            try:
                with transaction.atomic(using=alias):
                    return run()
            except OperationalError as exc:
                if not conflict(exc) or attempt == RETRIES - 1:
                    raise
                self.keys_full_until = None
                logger.debug("worker batch met a lock conflict, running it again: %s", exc)
                time.sleep(0.001 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- enqueue ----------------------------------------------------------------------------

    def insert_job(self, values: dict, *, notify: str | None) -> int | None:
        params = self.insert_values(values)
        if not values.get("unique_key"):
            with self.connection.cursor() as cursor:
                cursor.execute(self._insert, params)
                return cursor.lastrowid
        # A unique job: the unique index on the READY key refuses a second one.
        try:
            with transaction.atomic(using=self.connection.alias), self.connection.cursor() as cursor:
                cursor.execute(self._insert, params)
                return cursor.lastrowid
        except IntegrityError as exc:
            if _duplicate_ready_key(exc):
                return None
            raise

    def insert_jobs(self, rows: Sequence[dict], *, notify: str | None) -> list[int]:
        if not self.mariadb or any(row.get("unique_key") for row in rows):
            return [pk for pk in (self.insert_job(row, notify=notify) for row in rows) if pk is not None]
        ids: list[int] = []
        for start in range(0, len(rows), BULK_BATCH):
            batch = rows[start:start + BULK_BATCH]
            params = [value for row in batch for value in self.insert_values(row)]
            sql = f"INSERT INTO {self.table} ({self._names}) VALUES {', '.join([self._row] * len(batch))} " \
                  f"RETURNING {self.col['id']}"
            ids.extend(sorted(row[0] for row in self._fetch(sql, params)))
        return ids

    def insert_calls(self, common: dict, batches: Sequence[str], *, notify: str | None) -> list[tuple[int, str]]:
        inserted: list[tuple[int, str]] = []
        for text in batches:
            calls = json.loads(text)
            if any(len(call) > 2 and call[2] for call in calls):
                calls = self._new_unique(common["backend"], calls)
                if not calls:
                    continue
                text = json.dumps(calls)
            if not self.mariadb:  # MySQL has no INSERT ... RETURNING: one row at a time
                for call in calls:
                    args, kwargs, unique, limit = (call + [None, None])[:4]
                    job_id = self.insert_job(dict(common, args=args, kwargs=kwargs, unique_key=unique,
                                                  limit_key=limit), notify=notify)
                    if job_id is not None:
                        inserted.append((job_id, unique))
                continue
            inserted.extend(self._insert_batch(common, text))
        return inserted

    def _insert_batch(self, common: dict, text: str) -> list[tuple[int, str]]:
        col = self.col
        constants = self.insert_values(common, COMMON_FIELDS)
        per_call = ", ".join(col[name] for name in ("args", "kwargs", "unique_key", "limit_key"))
        # MariaDB's JSON_TABLE refuses a document nested 32 levels deep, which the batch (two levels)
        # makes of arguments nested 30 deep: a batch that deep sends each call's arguments as JSON
        # text (strings) instead, encoded once more here.
        deep = json_depth(text) >= MARIADB_JSON_DEPTH + 2
        kind = "LONGTEXT" if deep else "JSON"
        sql = (f"INSERT INTO {self.table} ({', '.join(col[name] for name in COMMON_FIELDS)}, {per_call}) "
               f"SELECT {', '.join(['%s'] * len(COMMON_FIELDS))}, v.a, v.k, v.u, v.l "
               f"FROM JSON_TABLE(%s, '$[*]' COLUMNS (n FOR ORDINALITY, a {kind} PATH '$[0]', "
               f"k {kind} PATH '$[1]', u VARCHAR(255) PATH '$[2]', l VARCHAR(255) PATH '$[3]')) AS v "
               f"ORDER BY v.n RETURNING {col['id']}, {col['unique_key']}")
        for attempt in range(3):
            try:
                with transaction.atomic(using=self.connection.alias):
                    batch = _as_texts(text) if deep else text
                    return sorted(tuple(row) for row in self._fetch(sql, [*constants, batch]))
            except IntegrityError as exc:
                # Another enqueue took one of these unique keys meanwhile: leave those calls out.
                if not _duplicate_ready_key(exc) or attempt == 2:
                    raise
                calls = self._new_unique(common["backend"], json.loads(text))
                if not calls:
                    return []
                text = json.dumps(calls)
        return []

    def _new_unique(self, backend: str, calls: list) -> list:
        """The calls whose unique key no READY job holds, the first of each key (calls without a key stay)."""
        held = set(self.ready_unique(backend, [call[2] for call in calls if len(call) > 2 and call[2]]))
        kept = []
        for call in calls:
            key = call[2] if len(call) > 2 else None
            if key:
                if key in held:
                    continue
                held.add(key)
            kept.append(call)
        return kept

    def ensure_limits(self, keys: Sequence[str]) -> None:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        key = self.qn("key")
        marks = ", ".join(["%s"] * len(keys))
        # A plain read first: an insert that meets an existing row would lock it until commit.
        have = {row[0] for row in self._fetch(f"SELECT {key} FROM {self.limit_table} WHERE {key} IN ({marks})",
                                              keys)}
        missing = [k for k in keys if k not in have]
        if missing:
            rows = ", ".join(["(%s, 0, '[]')"] * len(missing))
            self._execute(f"INSERT INTO {self.limit_table} ({key}, running, starts) VALUES {rows} "
                          f"ON DUPLICATE KEY UPDATE {key} = {key}", missing)

    # -- the claim ------------------------------------------------------------------------------

    def claim(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        return self._retried(lambda: Statements.claim(self, worker_id=worker_id, limit=limit, now=now,
                                                      queues=queues, backend=backend))

    def _select(self, *, limit: int, now: datetime, queues, backend: str, key: str | None) -> tuple[str, list]:
        """The locking read of due READY jobs without limits (``key`` None) or of one key, in claim order."""
        col = self.col
        where = self.where_due("j", queues=queues, limited=key is not None)
        params = [backend, self.time(now), *(queues or ())]
        if key is not None:
            where += f" AND j.{col['limit_key']} = %s"
            params.append(key)
        sql = (f"SELECT {columns_sql(self.connection, CLAIMED, 'j')} FROM {self.table} j FORCE INDEX ({CLAIM_INDEX}) "
               f"WHERE {where} ORDER BY j.{col['priority']} DESC, j.{col['run_after']}, j.{col['id']} LIMIT %s "
               f"FOR UPDATE SKIP LOCKED")
        return sql, [*params, limit]

    def claim_sql(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str,
                  rooms: dict[str, int]) -> tuple[str, list]:
        """The claim's locking read (of jobs without limits); the UPDATE by id follows it."""
        return self._select(limit=limit, now=now, queues=queues, backend=backend, key=None)

    def claim_rows(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str,
                   rooms: dict[str, int]) -> list[ClaimedJob]:
        run = lambda: self._claim_rows(worker_id=worker_id, limit=limit, now=now, queues=queues,  # noqa: E731
                                       backend=backend, rooms=rooms)
        if self.connection.in_atomic_block:
            return run()
        with transaction.atomic(using=self.connection.alias):
            return run()

    def _claim_rows(self, *, worker_id: str, limit: int, now: datetime, queues, backend: str,
                    rooms: dict[str, int]) -> list[ClaimedJob]:
        rows = self._fetch(*self._select(limit=limit, now=now, queues=queues, backend=backend, key=None))
        for key, room in rooms.items():  # each key's first jobs, as many as it has room for
            rows += self._fetch(*self._select(limit=room, now=now, queues=queues, backend=backend, key=key))
        jobs = read_rows(self.connection, CLAIMED, rows)
        jobs.sort(key=claim_order)
        # The ones past ``limit`` stay READY (their locks end with the transaction).
        jobs = jobs[:limit]
        self.limited_ready = bool(self._fetch(self._limited_ready, [backend]))
        if not jobs:
            return []
        self._execute(*self._claim_update(jobs, worker_id=worker_id, now=now))
        return self._as_claimed(jobs, worker_id=worker_id, now=now)

    def claim_ids(self, ids: Sequence[int], *, worker_id: str, now: datetime) -> list[ClaimedJob]:
        """Claim these READY jobs by id (damaged rows, to fail them alone): a locking read, then the
        claim's UPDATE, as ``claim_rows`` does (no UPDATE ... RETURNING here)."""
        if not ids:
            return []
        col = self.col
        rows = self._fetch(f"SELECT {self.claimed_columns} FROM {self.table} WHERE {col['id']} IN "
                           f"({', '.join(['%s'] * len(ids))}) AND {col['status']} = '{JobStatus.READY.value}' "
                           f"FOR UPDATE SKIP LOCKED", list(ids))
        jobs = read_rows(self.connection, CLAIMED, rows)
        if not jobs:
            return []
        self._execute(*self._claim_update(jobs, worker_id=worker_id, now=now))
        return self._as_claimed(jobs, worker_id=worker_id, now=now)

    def _claim_update(self, jobs, *, worker_id: str, now: datetime) -> tuple[str, list]:
        col, now_db = self.col, self.time(now)
        ids = [job.id for job in jobs]
        return (
            f"UPDATE {self.table} SET {col['status']} = '{JobStatus.RUNNING.value}', {col['attempts']} = "
            # A damaged row at the integer column's maximum must not make every claim fail.
            f"CASE WHEN {col['attempts']} < {MAX_INT} THEN {col['attempts']} + 1 ELSE {col['attempts']} END, "
            f"{col['worker_id']} = %s, {col['heartbeat_at']} = %s, {col['last_attempted_at']} = %s, "
            f"{col['started_at']} = COALESCE({col['started_at']}, %s), {col['progress']} = NULL, "
            f"{col['cancel_requested_at']} = NULL "
            f"WHERE {col['id']} IN ({', '.join(['%s'] * len(ids))})", [worker_id, now_db, now_db, now_db, *ids])

    @staticmethod
    def _as_claimed(jobs: list[ClaimedJob], *, worker_id: str, now: datetime) -> list[ClaimedJob]:
        """The claimed jobs with what the claim's UPDATE wrote, as a read would hand them back."""
        for job in jobs:
            if isinstance(job.attempts, int) and not isinstance(job.attempts, bool) and job.attempts < MAX_INT:
                job.attempts += 1
            job.status = JobStatus.RUNNING.value
            job.worker_id = worker_id
            job.heartbeat_at = job.last_attempted_at = now
            if job.started_at is None:
                job.started_at = now
        return jobs

    def limited_heads(self, *, now: datetime, queues, backend: str) -> list[Head]:
        col, table = self.col, self.table
        order = f"j.{col['priority']} DESC, j.{col['run_after']}, j.{col['id']}"
        head = (f"SELECT JSON_ARRAY(j.{col['concurrency_limit']}, j.{col['rate_limit']}, j.{col['priority']}, "
                f"j.{col['run_after']}, j.{col['id']}) FROM {table} j FORCE INDEX ({CLAIM_INDEX}) "
                f"WHERE {self.where_due('j', queues=queues, limited=True)} AND j.{col['limit_key']} = k.k "
                f"ORDER BY {order} LIMIT 1")
        sql = (
            # The keys with READY jobs: a loose scan of the claim index (its leading columns).
            f"SELECT k.k, ({head}), l.running, l.starts FROM (SELECT DISTINCT {col['limit_key']} AS k "
            f"FROM {table} FORCE INDEX ({CLAIM_INDEX}) WHERE {col['status']} = '{JobStatus.READY.value}' "
            f"AND {col['backend']} = %s AND {col['limit_key']} IS NOT NULL) k "
            f"LEFT JOIN {self.limit_table} l ON l.{self.qn('key')} = k.k"
        )
        rows = self._fetch(sql, [backend, self.time(now), *(queues or ()), backend])
        heads = []
        for key, head_json, running, starts in rows:
            if head_json is None:
                continue  # no job of the key is due
            concurrency, rate, priority, run_after, pk = json.loads(head_json)
            if (rate is None and limits.valid_limit(concurrency) and limits.valid_running(running)
                    and running >= concurrency):
                continue  # at its limit: no room (a damaged limit or count is sent on, to be mended or failed)
            heads.append(make_head(key, concurrency, rate, priority, run_after, pk, running=running, starts=starts))
        return heads

    def lock_limits(self, keys: Sequence[str]) -> dict[str, tuple[int, list]]:
        self.ensure_limits(keys)  # a key whose row went missing gets one (counting from 0)
        key = self.qn("key")
        rows = self._fetch(f"SELECT {key}, running, starts FROM {self.limit_table} "
                           f"WHERE {key} IN ({', '.join(['%s'] * len(keys))}) FOR UPDATE SKIP LOCKED", list(keys))
        return {k: (running, starts) for k, running, starts in rows}

    def save_limits(self, updates: Sequence[tuple[str, int, list]]) -> None:
        for key, added, log in updates:
            self._execute(f"UPDATE {self.limit_table} SET running = running + %s, starts = %s "
                          f"WHERE {self.qn('key')} = %s", [added, json.dumps(log), key])

    # -- the worker's batch ----------------------------------------------------------------------

    def finish_and_claim(self, successes, *, worker_id: str, now: datetime, limit: int, queues,
                         backend: str) -> tuple[set[int], list[ClaimedJob]]:
        limited_done = any(job.limit_key and job.concurrency_limit is not None for job, _ in successes)
        if not self.connection.in_atomic_block and not limited_done and not (
                self.limited_ready and limit > 0 and not self.keys_full(now)):
            # The common case: no job of a limit key in play, two round trips (see _batch).
            for attempt in range(RETRIES):
                try:
                    written, jobs = self._batch(successes, worker_id=worker_id, now=now, limit=limit,
                                                queues=queues, backend=backend)
                    break
                except OperationalError as exc:
                    if not conflict(exc) or attempt == RETRIES - 1:
                        raise
                    time.sleep(0.001 * (attempt + 1))
            if self.limited_ready and len(jobs) < limit:  # jobs with limits READY, and too few others
                self.keys_full_until = None
                jobs += self.claim(worker_id=worker_id, limit=limit - len(jobs), now=now, queues=queues,
                                   backend=backend)
            return written, jobs

        def run():
            written = self._record(successes, worker_id=worker_id, now=now)
            self.release([job for job, _ in successes if job.id in written])
            claimed = Statements.claim(self, worker_id=worker_id, limit=limit, now=now, queues=queues,
                                       backend=backend) if limit > 0 else []
            return written, claimed

        return self._retried(run)

    def _batch(self, successes, *, worker_id: str, now: datetime, limit: int, queues,
               backend: str) -> tuple[set[int], list[ClaimedJob]]:
        """Successes and the next claim in one transaction of two round trips: the transaction's start,
        the successes' UPDATE, whether jobs with limits are READY and the claim's locking read as one
        request of several statements; the claim's UPDATE and the commit as the second. Django's
        connection stays in autocommit: the transaction is begun and ended here, rolled back on any
        error."""
        statements, params = ["START TRANSACTION"], []
        if successes:
            sql, values = self._success_sql(successes, worker_id=worker_id, now=now)
            statements.append(sql)
            params += values
        statements.append(self._limited_ready)
        params.append(backend)
        if limit > 0:
            sql, values = self._select(limit=limit, now=now, queues=queues, backend=backend, key=None)
            statements.append(sql)
            params += values
        self.connection.ensure_connection()
        cursor = self.connection.connection.cursor()
        try:
            with self.connection.wrap_database_errors:
                cursor.execute("; ".join(statements), params)  # START TRANSACTION: no result
                count = 0
                if successes:
                    cursor.nextset()
                    count = cursor.rowcount
                cursor.nextset()
                self.limited_ready = bool(cursor.fetchall())
                rows = []
                if limit > 0:
                    cursor.nextset()
                    rows = list(cursor.fetchall())
                while cursor.nextset():
                    pass
                jobs = read_rows(self.connection, CLAIMED, rows)
                jobs.sort(key=claim_order)
                if jobs:
                    sql, values = self._claim_update(jobs, worker_id=worker_id, now=now)
                    cursor.execute(f"{sql}; COMMIT", values)
                    while cursor.nextset():
                        pass
                else:
                    cursor.execute("COMMIT")
        except BaseException:
            try:
                while cursor.nextset():
                    pass
            except Exception:  # noqa: BLE001
                pass
            try:
                self.connection.connection.rollback()
            except Exception:  # noqa: BLE001 - a lost connection: the server rolled back
                pass
            raise
        finally:
            cursor.close()
        written = self._recorded(successes, count, worker_id) if successes else set()
        return written, self._as_claimed(jobs, worker_id=worker_id, now=now)

    def _success_sql(self, successes, *, worker_id: str, now: datetime) -> tuple[str, list]:
        """One UPDATE for every success of a batch, fenced on each job's attempt and its worker."""
        col = self.col
        cases, values, workers, attempts, ids = [], [], [], [], []
        for job, value in successes:
            values += [job.id, None if value is None else json.dumps(value)]
            workers += [job.id, json.dumps([*job.worker_ids, worker_id])]
            attempts += [job.id, job.attempts]
            ids.append(job.id)
        cases = " ".join(["WHEN %s THEN %s"] * len(successes))
        sql = (f"UPDATE {self.table} SET {col['status']} = '{JobStatus.SUCCESSFUL.value}', "
               f"{col['return_value']} = CASE {col['id']} {cases} END, {col['finished_at']} = %s, "
               f"{col['heartbeat_at']} = NULL, {col['cancel_requested_at']} = NULL, "
               f"{col['worker_ids']} = CASE {col['id']} {cases} END "
               f"WHERE {col['id']} IN ({', '.join(['%s'] * len(ids))}) "
               f"AND {col['status']} = '{JobStatus.RUNNING.value}' AND {col['worker_id']} = %s "
               f"AND {col['batch_id']} IS NULL AND NOT {col['has_dependents']} "
               f"AND {col['attempts']} = CASE {col['id']} {cases} END")
        return sql, [*values, self.time(now), *workers, *ids, worker_id, *attempts]

    def _record(self, successes, *, worker_id: str, now: datetime) -> set[int]:
        if not successes:
            return set()
        count = self._execute(*self._success_sql(successes, worker_id=worker_id, now=now))
        return self._recorded(successes, count, worker_id)

    def _recorded(self, successes, count: int, worker_id: str) -> set[int]:
        """The ids written, given how many rows the success UPDATE matched (Django asks MySQL for
        rows matched, not changed)."""
        ids = {job.id for job, _ in successes}
        if count == len(successes):
            return ids
        # Some attempt was taken over meanwhile (rare): find out which rows are ours.
        col = self.col
        held = {(job.id, job.attempts) for job, _ in successes}
        mine = self._fetch(f"SELECT {col['id']}, {col['attempts']} FROM {self.table} WHERE {col['id']} IN "
                           f"({', '.join(['%s'] * len(ids))}) AND {col['status']} = '{JobStatus.SUCCESSFUL.value}' "
                           f"AND {col['worker_id']} = %s", [*ids, worker_id])
        return {pk for pk, attempts in mine if (pk, attempts) in held}

    def stale(self, *, cutoff: datetime, backend: str, limit: int,
              worker_id: str | None = None) -> list[ClaimedJob]:
        col = self.col
        mine = [] if worker_id is None else [worker_id]
        worker_sql = f" AND {col['worker_id']} = %s" if mine else ""
        sql = (f"SELECT {columns_sql(self.connection, STALE)} FROM {self.table} FORCE INDEX ({RUNNING_INDEX}) "
               f"WHERE {col['status']} = '{JobStatus.RUNNING.value}' AND {col['backend']} = %s "
               f"AND {col['heartbeat_at']} < %s{worker_sql} ORDER BY {col['heartbeat_at']} LIMIT %s")
        return read_rows(self.connection, STALE, self._fetch(sql, [backend, self.time(cutoff), *mine, limit]))


def _as_texts(text: str) -> str:
    """A batch's calls with their arguments as JSON text (strings), not nested JSON."""
    return json.dumps([[json.dumps(call[0], ensure_ascii=False), json.dumps(call[1], ensure_ascii=False), *call[2:]]
                       for call in json.loads(text)], ensure_ascii=False)


def _duplicate_ready_key(exc: IntegrityError) -> bool:
    cause = exc.__cause__ if isinstance(exc.__cause__, BaseException) else exc
    args = getattr(cause, "args", ())
    return bool(args) and args[0] == DUPLICATE_KEY and UNIQUE_INDEX in str(args[1:])
