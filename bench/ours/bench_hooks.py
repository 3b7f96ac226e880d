"""Benchmark hooks for our queue (contract: bench/README.md).

The worker is ``manage.py process_tasks --no-scheduler`` at the production
defaults (one slot; ``--concurrency 2`` as a variant). W1 has all three ways
to enqueue; W4 records which jobs ran; W5 fills the table with finished rows
and times the claim statement itself; W6 times the claim past held-back keys; W7
measures a worker's memory and its CPU, commits and round trips per job; W8 scales out
to several worker processes, started one by one or as ``process_tasks --processes``; W9 measures
what batches and dependencies cost (bulk enqueue in a batch, a member's end, the callback's
delay, a chain of ``enqueue_after``).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time

from bench_tasks import batch_stamp, keyed, noop, record, record_io, stamp
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

import jobs
from jobs.models import Job, JobStatus
from jobs.rows import CLAIMED, read_rows
from jobs.sql import claim_sql, statements

# One thread, as in every earlier run of W2 (the command's default is 4 since issue 19).
WORKER_ARGS = ["process_tasks", "--no-scheduler", "--concurrency", "1"]
WORKER_VARIANTS = {"c2": [*WORKER_ARGS, "--concurrency", "2"],
                   # A site that kept Django's defaults (bench_settings_defaults.py), with the default threads.
                   "defaults": ["process_tasks", "--no-scheduler", "--settings", "bench_settings_defaults"]}
IDLE_POLL_SECONDS = 1.0  # OPTIONS poll_interval default; LISTEN/NOTIFY or the SQLite probe wake it sooner


# -- W1 / W2 -------------------------------------------------------------------------------

def enqueue_each(n: int) -> None:
    for _ in range(n):
        noop.enqueue()


def enqueue_in_transaction(n: int) -> None:
    with transaction.atomic():
        for _ in range(n):
            noop.enqueue()


def enqueue_bulk(n: int) -> None:
    jobs.enqueue_many(noop, [((), {})] * n)


enqueue = enqueue_bulk  # W2 fills the queue the fastest way


def enqueue_stamp(token: str) -> None:
    stamp.enqueue(token)


def remaining() -> int:
    return Job.objects.filter(status__in=[JobStatus.READY, JobStatus.RUNNING]).count()


def failed() -> int:
    return Job.objects.filter(status=JobStatus.FAILED).count()


# -- W4: which jobs ran, and how often ------------------------------------------------------

def enqueue_recorded(n: int) -> list[int]:
    return [int(r.id) for r in jobs.enqueue_many(record, [((), {})] * n)]


def recorded_statuses() -> dict[str, int]:
    rows = Job.objects.filter(task_path=record.module_path).values("status").annotate(n=Count("id"))
    return {row["status"]: row["n"] for row in rows}


# -- W5: claim cost with many finished rows -------------------------------------------------

def fill_finished(n: int) -> dict:
    """Insert ``n`` SUCCESSFUL rows (finished over the last week) server-side: one statement on
    PostgreSQL and SQLite, statements of 100,000 rows each in their own transaction on MySQL/MariaDB."""
    meta = Job._meta
    qn = connection.ops.quote_name
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    if connection.vendor == "postgresql":
        ago = "(now() - (i %% 604800) * interval '1 second')"
    elif connection.vendor == "mysql":
        ago = "(UTC_TIMESTAMP(6) - INTERVAL (i %% 604800) SECOND)"
    else:
        ago = "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || (i %% 604800) || ' seconds')"
    varying = {"run_after": ago, "enqueued_at": ago, "started_at": ago, "last_attempted_at": ago, "finished_at": ago}
    values = {"task_path": noop.module_path, "status": JobStatus.SUCCESSFUL.value, "attempts": 1,
              "worker_id": "bench:filler", "worker_ids": ["bench:filler"], "heartbeat_at": None}
    exprs, params = [], []
    for field in fields:
        if field.name in varying:
            exprs.append(varying[field.name])
        else:
            exprs.append("%s")
            value = values[field.name] if field.name in values else field.get_default()
            params.append(field.get_db_prep_save(value, connection))
    insert = f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) SELECT {', '.join(exprs)}"
    if connection.vendor == "postgresql":
        statements_ = [(f"{insert} FROM generate_series(1, %s) AS s(i)", [*params, n])]
    elif connection.vendor == "mysql":
        # No generate_series, and MySQL stops recursive CTEs at 1,000 levels by default: the numbers
        # come from a cross join of digits, 100,000 per statement (InnoDB's undo log stays small).
        chunk = 100_000
        digits = "(SELECT 0 AS d UNION ALL " + " UNION ALL ".join(f"SELECT {d}" for d in range(1, 10)) + ")"
        places = [f"{digits} AS d{p}" for p in range(5)]
        number = " + ".join(f"d{p}.d * {10 ** p}" for p in range(5))
        statements_ = [(f"{insert} FROM (SELECT %s + {number} AS i FROM {', '.join(places)}) AS s "
                        f"WHERE i <= %s", [*params, start + 1, n]) for start in range(0, n, chunk)]
    else:
        statements_ = [(f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < %s) "
                        f"{insert} FROM s", [n, *params])]
    started = time.perf_counter()
    for sql, args in statements_:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, args)
    inserted = time.perf_counter() - started
    analyzed = time.perf_counter()
    with connection.cursor() as cursor:
        # What autovacuum (PostgreSQL) and InnoDB's background statistics do shortly after a bulk
        # load; the claim does not depend on it.
        if connection.vendor == "postgresql":
            cursor.execute(f"VACUUM ANALYZE {qn(meta.db_table)}")
        elif connection.vendor == "mysql":
            cursor.execute(f"ANALYZE TABLE {qn(meta.db_table)}")
            cursor.fetchall()
    return {"insert_s": inserted, "vacuum_s": time.perf_counter() - analyzed,
            "rows": Job.objects.filter(status=JobStatus.SUCCESSFUL).count()}


def claim_cost(samples: int) -> dict:
    """Enqueue ``samples`` jobs, claim them one per statement, timing only the claim statement.

    Each claim commits on its own, as the worker's would; the claimed jobs are then
    marked SUCCESSFUL so the table keeps only finished rows besides the ready ones.
    On MySQL/MariaDB (no UPDATE ... RETURNING) the claim is two statements, the locking
    read and the worker's UPDATE of the rows it took, by id: both are timed.
    """
    enqueue_bulk(samples)
    worker_id = "bench:claimer"
    mysql = connection.vendor == "mysql"
    times = []
    for _ in range(samples):
        sql, params = claim_sql(connection, worker_id=worker_id, limit=1, now=timezone.now(), queues=None)
        with transaction.atomic(), connection.cursor() as cursor:
            started = time.perf_counter()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            if mysql and rows:
                # The worker's own UPDATE (jobs/sql/mysql.py), of the job the read locked.
                taken = read_rows(connection, CLAIMED, rows)
                cursor.execute(*statements(connection)._claim_update(taken, worker_id=worker_id, now=timezone.now()))
            times.append(time.perf_counter() - started)
        if len(rows) != 1:
            raise RuntimeError(f"claim returned {len(rows)} rows, expected 1")
    Job.objects.filter(worker_id=worker_id, status=JobStatus.RUNNING).update(
        status=JobStatus.SUCCESSFUL, finished_at=timezone.now(), heartbeat_at=None)
    return {"median_s": statistics.median(times), "p95_s": sorted(times)[int(0.95 * (len(times) - 1))],
            "samples": len(times), "plan": claim_plan()}


def claim_plan() -> list[str]:
    """How the database runs the claim (EXPLAIN), for the report."""
    sql, params = claim_sql(connection, worker_id="bench:explain", limit=1, now=timezone.now(), queues=None)
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("EXPLAIN " + sql, params)
            lines = [row[0] for row in cursor.fetchall()]
        elif connection.vendor == "mysql":
            cursor.execute("EXPLAIN " + sql, params)
            names = [c[0] for c in cursor.description]
            lines = [", ".join(f"{k}={v}" for k, v in zip(names, row) if v is not None) for row in cursor.fetchall()]
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            lines = [row[-1] for row in cursor.fetchall()]
        transaction.set_rollback(True)
    return lines


# -- W6: claim cost when most READY jobs are held back by their concurrency key -----------------

def fill_held_back(jobs_total: int, keys: int, held_share: float) -> dict:
    """``jobs_total`` READY jobs, ``held_share`` of them keyed over ``keys`` keys (limit 1) whose one
    place is taken by a RUNNING job; the rest have no key. Keyed jobs are the older ones, so a
    claim whose key had room would take one first."""
    held = int(jobs_total * held_share)
    started = time.perf_counter()
    jobs.enqueue_many(keyed, [((f"account-{i % keys}",), {}) for i in range(held + keys)])
    holders = []
    while len(holders) < keys:  # one job per key (SQLite's claim names at most 400 keys at a time)
        taken = statements(connection).claim(worker_id="bench:holder", limit=keys - len(holders),
                                             now=timezone.now(), queues=None, backend="default")
        if not taken:
            break
        holders += taken
    if len({job.limit_key for job in holders}) != keys:
        raise RuntimeError(f"expected one running job on each of {keys} keys, got {len(holders)}")
    enqueue_bulk(jobs_total - held)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(Job._meta.db_table)}")
    ready = Job.objects.filter(status=JobStatus.READY)
    return {"insert_s": time.perf_counter() - started, "ready": ready.count(),
            "held_back": ready.exclude(limit_key=None).count(), "keys": keys}


def held_back_claim_cost(samples: int) -> dict:
    """Claim one job at a time the way the worker does (the limited claim: the keys' heads, their
    limit rows, the claim), each in its own transaction; time the whole claim.

    Every 10th sample first frees one key (its RUNNING job finishes), so that claim takes that
    key's next job; the other claims take free jobs past 99,000 held-back ones.
    """
    sql = statements(connection)
    worker_id = "bench:claimer"
    free, keyed_times, wrong = [], [], 0
    running = {job.limit_key: job for job in Job.objects.filter(status=JobStatus.RUNNING).exclude(limit_key=None)}
    for sample in range(samples):
        freeing = sample % 10 == 9 and running
        if freeing:
            key, holder = running.popitem()
            with transaction.atomic():
                Job.objects.filter(pk=holder.pk).update(status=JobStatus.SUCCESSFUL, finished_at=timezone.now())
                sql.release([holder])
        started = time.perf_counter()
        claimed = sql.claim(worker_id=worker_id, limit=1, now=timezone.now(), queues=None, backend="default")
        took = time.perf_counter() - started
        if len(claimed) != 1:
            raise RuntimeError(f"claim returned {len(claimed)} jobs, expected 1")
        (job,) = claimed
        if freeing:
            keyed_times.append(took)
            wrong += job.limit_key != key
            running[key] = job  # it holds the key's place now
        else:
            free.append(took)
            wrong += job.limit_key is not None
            Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCESSFUL, finished_at=timezone.now())
    if wrong:
        raise RuntimeError(f"{wrong} claims took a job other than expected (a held-back one, or not the freed key's)")
    every = sorted(free + keyed_times)
    return {"median_s": statistics.median(every), "p95_s": every[int(0.95 * (len(every) - 1))],
            "free_median_s": statistics.median(free), "keyed_median_s": statistics.median(keyed_times),
            "samples": len(every)}


# -- W7: what a worker costs: memory, and per job CPU, commits and round trips ---------------------

def _proc(pid: int) -> dict:
    """RSS now and at its peak (MB), and CPU seconds so far (all threads), from /proc."""
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "peak_mb": int(status["VmHWM"].split()[0]) / 1024,
            "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


def _counters() -> dict | None:
    """PostgreSQL: transactions committed in this database and statements run in it (each a round
    trip: one per query, prepared execute, BEGIN or COMMIT), once this session's own stats are
    flushed; None elsewhere. Needs the server to preload pg_stat_statements (the bench's does)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # this session's pending stats, flushed when idle
    with connection.cursor() as cursor:
        cursor.execute("SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), "
                       "(SELECT sum(calls) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                       "WHERE d.datname = current_database())")
        commits, calls = cursor.fetchone()
    return {"commits": int(commits), "statements": int(calls or 0)}


def _start_worker() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "django", *WORKER_ARGS], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def _stop(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)  # its sessions end with it, and their stats are flushed then


def _wait_registered(worker: subprocess.Popen, timeout: float = 30.0) -> None:
    from jobs.models import WorkerProcess

    deadline = time.monotonic() + timeout
    while not WorkerProcess.objects.filter(pid=worker.pid).exists():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not register (exit code {worker.poll()})")
        time.sleep(0.05)


def worker_cost(n: int, idle_s: float = 1.0) -> dict:
    """One worker idle (started on an empty queue, ``idle_s`` after it registered), then another
    draining ``n`` no-op jobs: its peak RSS, and per job its CPU time (less the idle worker's
    start-up CPU), commits and statements (PostgreSQL; the harness's own polls taken out).
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    idle = _start_worker()
    try:
        _wait_registered(idle)
        time.sleep(idle_s)  # a measurement window: the idle worker as it sits between jobs
        at_idle = _proc(idle.pid)
    finally:
        _stop(idle)
    enqueue_bulk(n)
    before = _counters()
    worker, polls = _start_worker(), 0
    try:
        while remaining():
            polls += 1
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}")
            time.sleep(0.05)
        polls += 1
        loaded = _proc(worker.pid)
    finally:
        _stop(worker)
    after = _counters()
    result = {"n": n, "rss_idle_mb": at_idle["rss_mb"], "rss_load_peak_mb": loaded["peak_mb"],
              "rss_after_load_mb": loaded["rss_mb"], "startup_cpu_ms": at_idle["cpu_s"] * 1000,
              "cpu_ms_per_job": max(0.0, loaded["cpu_s"] - at_idle["cpu_s"]) * 1000 / n,
              "commits_per_job": None, "round_trips_per_job": None}
    if before and after:
        own = polls + 2  # the harness's: its polls, the first snapshot, the second flush
        result["commits_per_job"] = (after["commits"] - before["commits"] - own) / n
        if after["statements"]:
            result["round_trips_per_job"] = (after["statements"] - before["statements"] - own) / n
    return result


# -- W8: several worker processes --------------------------------------------------------------

def _connections() -> int | None:
    """Client connections to this database now (ours excluded), or None where unknown."""
    queries = {"postgresql": "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
               "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
                        "AND ID <> CONNECTION_ID()"}
    if connection.vendor not in queries:
        return None
    with connection.cursor() as cursor:
        cursor.execute(queries[connection.vendor])
        return int(cursor.fetchone()[0])


def scale_out(n: int, processes: int, mode: str, kind: str, concurrency: int = 1) -> dict:
    """``n`` jobs (``kind``: "noop", or "io" of 50 ms each) that record their id, drained by
    ``processes`` worker processes of ``concurrency`` threads: started one by one (``mode``
    "separate") or as one ``process_tasks --processes`` (``mode`` "supervised"). The workers
    start on an empty queue; once all have registered, the jobs come in one bulk enqueue and
    the clock runs until the last is finished: start-up is not in the figure. Also duplicates
    and misses, the most connections seen, and under a parent its own RSS and CPU."""
    from jobs.models import WorkerProcess

    if remaining() != 0:
        raise RuntimeError("the queue is not empty; the harness must give a fresh database")
    record_file = os.path.join(os.environ["BENCH_STAMP_DIR"], f"w8-{mode}-{processes}-{kind}.txt")
    os.environ["BENCH_RECORD_FILE"] = record_file
    task = record if kind == "noop" else record_io
    argv = [sys.executable, "-m", "django", *WORKER_ARGS, "--concurrency", str(concurrency)]
    if mode == "supervised":
        procs = [subprocess.Popen([*argv, "--processes", str(processes)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)]
    else:
        procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL) for _ in range(processes)]
    peak_connections, parent = 0, None
    try:
        deadline = time.monotonic() + 60
        while WorkerProcess.objects.count() < processes:
            if time.monotonic() > deadline or any(proc.poll() is not None for proc in procs):
                raise RuntimeError(f"the workers did not all start ({WorkerProcess.objects.count()} registered)")
            time.sleep(0.05)
        time.sleep(0.5)  # their listeners and job threads up too
        started = time.monotonic()
        ids = {str(r.id) for r in jobs.enqueue_many(task, [((), {})] * n)}
        while remaining():
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited with code {proc.returncode}")
            peak_connections = max(peak_connections, _connections() or 0)
            time.sleep(0.02)
        seconds = time.monotonic() - started
        peak_connections = max(peak_connections, _connections() or 0)
        if mode == "supervised":
            parent = _proc(procs[0].pid)
    finally:
        for proc in procs:
            _stop(proc)
    seen = open(record_file).read().split() if os.path.exists(record_file) else []
    counts: dict[str, int] = {}
    for job_id in seen:
        counts[job_id] = counts.get(job_id, 0) + 1
    return {"n": n, "processes": processes, "mode": mode, "kind": kind, "concurrency": concurrency,
            "seconds": seconds, "jobs_per_s": n / seconds,
            "duplicates": sum(c - 1 for c in counts.values() if c > 1), "misses": len(ids - counts.keys()),
            "peak_connections": peak_connections if connection.vendor != "sqlite" else None,
            "parent_rss_mb": parent["rss_mb"] if parent else None,
            "parent_cpu_ms": parent["cpu_s"] * 1000 if parent else None}


# -- W9: batches and dependencies ------------------------------------------------------------------

def _unfinished(**filters) -> int:
    return Job.objects.filter(status__in=[JobStatus.READY, JobStatus.RUNNING, JobStatus.WAITING], **filters).count()


def _run_worker_until(done, timeout: float, extra_args: tuple[str, ...] = ()) -> float:
    """Start one worker, poll ``done()`` every 20 ms, stop the worker; seconds from spawn to done."""
    worker = subprocess.Popen([sys.executable, "-m", "django", *WORKER_ARGS, *extra_args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        while not done():
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"not done after {timeout:.0f} s")
            time.sleep(0.02)
        return time.monotonic() - started
    finally:
        _stop(worker)


def _span(rows, start: str = "finished_at") -> float:
    """Seconds from the first ``start`` to the last ``finished_at`` of ``rows`` (a queryset)."""
    from django.db.models import Max, Min

    got = rows.aggregate(first=Min(start), last=Max("finished_at"))
    return (got["last"] - got["first"]).total_seconds()


def batch_enqueue_cost(n: int, batched: bool) -> dict:
    """W9a: ``n`` no-op jobs in one ``enqueue_many``, inside a ``batch()`` block (its row, each
    member's batch id, the count when the block ends) or not; the whole block is timed."""
    if _unfinished():
        raise RuntimeError("the queue is not empty; the harness must give a fresh database")
    calls = [((), {})] * n
    started = time.perf_counter()
    if batched:
        with jobs.batch(on_finish=batch_stamp) as made:
            jobs.enqueue_many(noop, calls)
    else:
        jobs.enqueue_many(noop, calls)
    seconds = time.perf_counter() - started
    members = Job.objects.filter(batch_id=made.id).count() if batched else 0
    if members != (n if batched else 0) or Job.objects.count() != n:
        raise RuntimeError(f"expected {n} jobs ({'all' if batched else 'none'} in the batch), got "
                           f"{Job.objects.count()} ({members} members)")
    if batched and jobs.get_batch(made.id).total != n:
        raise RuntimeError(f"the batch counts {jobs.get_batch(made.id).total} members, not {n}")
    return {"n": n, "batched": batched, "seconds": seconds, "jobs_per_s": n / seconds}


def _wait_for_purge(timeout: float = 60.0) -> float | None:
    """MySQL/MariaDB: after one UPDATE of many rows, wait until InnoDB has purged their old index
    entries (its history list is empty: the server is the bench's own), which slow every claim
    meanwhile (see the MariaDB section of docs/explanation/performance.md). Returns the seconds
    waited; None elsewhere."""
    if connection.vendor != "mysql":
        return None
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'")
            row = cursor.fetchone()
        if row is None or int(row[0]) == 0:
            break
        time.sleep(0.1)
    return time.monotonic() - started


def batch_drain(n: int, kind: str, size: int = 0) -> dict:
    """W9b: one worker (queue "default" only) drains ``n`` no-op jobs: ``plain`` (no batch), ``batch``
    (the ``n`` are the members of one batch, with a callback), or ``large`` (the last ``n`` members of
    a batch of ``size`` whose others have ended). Per job: the steady rate, from the first job's end
    to the last's (the worker's start-up out)."""
    from django.db.models import Max

    if _unfinished(queue_name="default"):
        raise RuntimeError("the queue is not empty; the harness must give a fresh database")
    before = Job.objects.aggregate(last=Max("pk"))["last"] or 0  # the jobs of earlier runs stay, finished
    calls = [((), {})] * n
    purge_wait_s = None
    started = time.perf_counter()
    if kind == "plain":
        jobs.enqueue_many(noop, calls)
    elif kind == "batch":
        with jobs.batch(on_finish=batch_stamp):
            jobs.enqueue_many(noop, calls)
    elif kind == "large":
        from django.db.models import F

        from jobs.models import JobBatch

        with jobs.batch(on_finish=batch_stamp) as made:
            jobs.enqueue_many(noop, [((), {})] * size)
        # All but the last n members end first, as if a worker had run them: SUCCESSFUL and
        # counted on the batch's row (what a member's end writes), so each of the n drained ends
        # in a batch of ``size`` and no other READY row is in the claim's way.
        ended = size - n
        with transaction.atomic():
            cut = Job.objects.filter(batch_id=made.id).order_by("pk").values_list("pk", flat=True)[ended - 1]
            now = timezone.now()
            Job.objects.filter(batch_id=made.id, pk__lte=cut).update(
                status=JobStatus.SUCCESSFUL, attempts=1, started_at=now, last_attempted_at=now, finished_at=now)
            JobBatch.objects.filter(pk=made.id).update(successful=F("successful") + ended)
        before = cut
        purge_wait_s = _wait_for_purge()
    elif kind == "parked":  # not a batch: n plain jobs, behind size - n READY ones on another queue
        jobs.enqueue_many(noop.using(queue_name="reports"), [((), {})] * (size - n))
        jobs.enqueue_many(noop, calls)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    enqueue_s = time.perf_counter() - started
    drained = Job.objects.filter(pk__gt=before, task_path=noop.module_path, queue_name="default")
    seconds = _run_worker_until(lambda: not _unfinished(queue_name="default"), timeout=120 + n / 20,
                                extra_args=("--queue", "default"))
    ok = drained.filter(status=JobStatus.SUCCESSFUL).count()
    if ok != n:
        raise RuntimeError(f"{ok} of {n} jobs SUCCESSFUL")
    steady = (n - 1) / _span(drained)
    return {"n": n, "kind": kind, "batch_size": {"batch": n, "large": size}.get(kind, 0),
            "enqueue_s": enqueue_s, "seconds": seconds, "jobs_per_s": n / seconds, "steady_jobs_per_s": steady,
            "us_per_job": 1e6 / steady, "purge_wait_s": purge_wait_s}


def callback_latency(batches: int, members: int) -> dict:
    """W9c: ``batches`` batches of ``members`` probe jobs each, one at a time, given to one idle
    worker; per batch, the callback's start minus the last member's start (a member runs nothing
    but its stamp, so that is its end). Before each batch the driver sleeps a random fraction of
    the poll interval, as in W3."""
    import random
    from pathlib import Path

    stamps = Path(os.environ["BENCH_STAMP_DIR"])
    worker = _start_worker()
    samples, totals = [], []
    try:
        _wait_registered(worker)
        time.sleep(0.5)
        for number in range(batches):
            time.sleep(random.uniform(0, IDLE_POLL_SECONDS) + 0.05)
            enqueued = time.time()
            with jobs.batch(on_finish=batch_stamp) as made:
                jobs.enqueue_many(stamp, [((f"member-{number}-{i}",), {}) for i in range(members)])
            done = stamps / f"callback-{made.id}"
            deadline = time.monotonic() + 60
            while not done.exists():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"batch {number}: no callback within 60 s (worker exit {worker.poll()})")
                time.sleep(0.005)
            callback = float(done.read_text())
            last = max(float((stamps / f"member-{number}-{i}").read_text()) for i in range(members))
            samples.append(callback - last)
            totals.append(callback - enqueued)
    finally:
        _stop(worker)
    return {"batches": batches, "members": members, "samples": samples, "enqueue_to_callback": totals}


def chain(n: int) -> dict:
    """W9d: ``n`` no-op jobs, each enqueued with ``enqueue_after([previous])`` (all before the worker
    starts), run by one worker. links/s from the first link's start to the last link's end."""
    if _unfinished():
        raise RuntimeError("the queue is not empty; the harness must give a fresh database")
    started = time.perf_counter()
    previous = noop.enqueue()
    for _ in range(n - 1):
        previous = jobs.enqueue_after([previous], noop)
    enqueue_s = time.perf_counter() - started
    links = Job.objects.filter(task_path=noop.module_path)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    before, polls = _counters(), [0]

    def done() -> bool:
        polls[0] += 1
        return not _unfinished()

    seconds = _run_worker_until(done, timeout=120 + n / 5)
    after = _counters()
    ok = links.filter(status=JobStatus.SUCCESSFUL).count()
    if ok != n:
        raise RuntimeError(f"{ok} of {n} links SUCCESSFUL")
    span = _span(links, start="started_at")
    times = list(links.order_by("pk").values_list("started_at", "finished_at"))
    gaps = sorted((times[i + 1][0] - times[i][1]).total_seconds() for i in range(len(times) - 1))
    runs = sorted((finished - started).total_seconds() for started, finished in times)
    return {"gap_p50_ms": gaps[len(gaps) // 2] * 1000, "gap_p90_ms": gaps[int(len(gaps) * 0.9)] * 1000,
            "run_p50_ms": runs[len(runs) // 2] * 1000,
            # PostgreSQL: the worker's statements and commits per link (the harness's polls taken out)
            "round_trips_per_link": (after["statements"] - before["statements"] - polls[0] - 2) / n if after else None,
            "commits_per_link": (after["commits"] - before["commits"] - polls[0] - 2) / n if after else None,
            "n": n, "enqueue_s": enqueue_s, "enqueue_per_s": n / enqueue_s, "seconds": seconds,
            "links_per_s": n / span, "wall_links_per_s": n / seconds}
