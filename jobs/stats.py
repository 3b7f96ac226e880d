"""The state of the queue, read from the database in a handful of queries.

One snapshot serves every reader: the admin's overview (jobs/admin/queues.py), ``manage.py
jobs_status`` and the ``metrics`` view (jobs/views.py). Each reader runs in its own
process (a web worker, a cron job) while workers on other machines change the rows,
so nothing is kept in memory: every number is read when asked for.

Every query is bounded by an index, not by the size of the table: the queues come
from a loose index scan; counts per queue and status read at most ``EXACT_UP_TO``
entries each of ``jobs_job_queue_idx`` on PostgreSQL (bigger ones are the planner's
estimate, marked as such; other databases count exactly), and the same index gives
each queue's lag in one probe; the throughput, the failing tasks and the attempt
durations read only the rows finished in their window through
``jobs_job_finished_idx``; workers are their own small table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connections, router
from django.db.models import Count, F, FloatField, Func, Max, Min, Q, Sum, TextField
from django.db.models.functions import Cast, TruncMinute
from django.db.models.lookups import LessThanOrEqual

from .counts import EXACT_UP_TO, distinct_values, estimated_count
from .models import Job, JobLimit, JobStatus, QueueState, WorkerProcess

# Times that are aggregated (MIN, MAX) are read as text and parsed here: a damaged row
# ('infinity' on PostgreSQL, 'soon' on SQLite) then reads as an unknown time (None)
# instead of an error from the driver that would stop the overview, metrics and jobs_status.
THROUGHPUT_MINUTES = 60  # jobs finished per minute, over this many minutes
FAILING_HOURS = 24  # failures by task, over this many hours
# Upper bounds (seconds) of the attempt duration buckets; the last bucket is +Inf.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass
class QueueRow:
    name: str
    backend: str = ""  # the TASKS alias whose jobs are counted
    paused: bool = False
    changed_at: datetime | None = None
    changed_by: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    due: int = 0  # READY and due now
    oldest_due: datetime | None = None
    lag: timedelta | None = None
    estimated: set[str] = field(default_factory=set)  # statuses (and "due") whose count is an estimate

    @property
    def scheduled(self) -> int:
        """READY but waiting for a later run_after (a delay or a retry's backoff)."""
        return max(self.counts.get(JobStatus.READY, 0) - self.due, 0)

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)

    @property
    def lag_seconds(self) -> float:
        return self.lag.total_seconds() if self.lag is not None else 0.0

    @property
    def scheduled_estimated(self) -> bool:
        return bool({"due", JobStatus.READY} & self.estimated)

    @property
    def cells(self) -> list[tuple[str, str, int, bool]]:
        """(status filter value, css, count, is an estimate) for the overview's table, in column order."""
        return [(status, "bad" if status == JobStatus.FAILED and self.count(status) else "", self.count(status),
                 status in self.estimated)
                for status in (JobStatus.RUNNING, JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELLED)]


@dataclass
class Snapshot:
    now: datetime
    queues: list[QueueRow]
    minutes: list[tuple[datetime, int, int]]  # (minute, successful, failed), oldest first
    failing: list[dict]  # every task that failed in the last FAILING_HOURS, most failures first
    workers: list[dict]  # {"worker": WorkerProcess, "running": busy slots, "heartbeat_age": seconds}
    stale_after: float
    backends: list[str] = field(default_factory=list)  # the TASKS aliases that store jobs here
    limit_keys: list[dict] = field(default_factory=list)  # {"key", "running", "waiting", "damaged"}, most waiting first

    @property
    def several_backends(self) -> bool:
        """Rows then name their alias: each counts only the jobs of its alias."""
        return len(self.backends) > 1

    @property
    def failed_24h(self) -> int:
        return sum(row["failures"] for row in self.failing)

    @property
    def totals(self) -> dict[str, int]:
        totals = {status.lower(): sum(q.count(status) for q in self.queues) for status in JobStatus.values}
        totals["due"] = sum(q.due for q in self.queues)
        totals["scheduled"] = totals["ready"] - totals["due"]
        totals["successful_hour"] = sum(ok for _, ok, _ in self.minutes)
        totals["failed_hour"] = sum(bad for _, _, bad in self.minutes)
        totals["failed_24h"] = self.failed_24h
        return totals

    @property
    def estimated_totals(self) -> set[str]:
        """Which of the totals include an estimate."""
        names = {status.lower() for q in self.queues for status in q.estimated if status != "due"}
        for q in self.queues:
            if "due" in q.estimated:
                names.add("due")
            if q.scheduled_estimated:
                names.add("scheduled")
        return names

    @property
    def max_lag(self) -> timedelta | None:
        """The longest wait of a due job, over the queues that are not paused."""
        lags = [q.lag for q in self.queues if q.lag is not None and not q.paused]
        return max(lags) if lags else None

    @property
    def max_lag_seconds(self) -> float:
        return self.max_lag.total_seconds() if self.max_lag is not None else 0.0

    @property
    def paused(self) -> list[str]:
        return [q.name for q in self.queues if q.paused]


def as_text(expression) -> Cast:
    """A time aggregate read as text (see ``stored_time``)."""
    return Cast(expression, TextField())


def stored_time(value) -> datetime | None:
    """A time read as text as the ORM would hand it back, or None when it is no time."""
    from .rows import stored_datetime

    try:
        return stored_datetime(value, connections[router.db_for_read(Job)].timezone)
    except (TypeError, ValueError, OverflowError):
        return None


def database_backends(alias: str | None = None) -> dict:
    """The ``TASKS`` aliases whose backend stores jobs in this database (or ``alias`` only), by alias."""
    from .backends import DatabaseBackend
    from .framework import task_backends

    return {backend.alias: backend for backend in task_backends.all()
            if isinstance(backend, DatabaseBackend) and alias in (None, backend.alias)}


def configured_queues(alias: str | None = None) -> list[str]:
    """The QUEUES of every backend in settings.TASKS that stores jobs here (or of ``alias`` only)."""
    names: list[str] = []
    for backend in database_backends(alias).values():
        names += sorted(name for name in backend.queues if name not in names)
    return names


def stale_after(alias: str | None = None) -> float:
    """Seconds of silence after which a worker counts as lost: the shortest of the backends (or ``alias``'s)."""
    values = [backend.jobs_options.stale_after for backend in database_backends(alias).values()]
    return min(values) if values else 30.0


def queue_rows(now: datetime, alias: str | None = None) -> list[QueueRow]:
    """A row per (backend alias, queue): what that alias's workers see of the queue.

    Only the aliases of ``TASKS`` count (a job of an alias no longer configured has no
    worker; the job list still shows it). A queue is listed for an alias when it is in
    that alias's QUEUES, has jobs of that alias, or has a pause state (pausing a queue
    name pauses it for every alias).
    """
    backends = database_backends(alias)
    names = set(configured_queues(alias)) | set(distinct_values("queue_name"))
    states = {state.name: state for state in QueueState.objects.all()}
    rows = {(name_of, queue): QueueRow(queue, backend=name_of) for name_of in backends for queue in names | set(states)}
    for (_, queue), row in rows.items():
        state = states.get(queue)
        if state is not None:
            row.paused, row.changed_at, row.changed_by = state.paused, state.changed_at, state.changed_by
    vendor = connections[router.db_for_read(Job)].vendor
    if vendor == "postgresql":
        _capped_counts(rows, now)
    elif vendor == "mysql":
        _capped_counts_by_group(rows, now)
    else:
        _exact_counts(rows, now)
    kept = [row for (name_of, queue), row in rows.items()
            if row.counts or queue in backends[name_of].queues or queue in states]
    for row in kept:
        row.lag = max(now - row.oldest_due, timedelta(0)) if row.oldest_due else None
    return sorted(kept, key=lambda r: (r.backend, r.name))


def _exact_counts(rows: dict[tuple[str, str], QueueRow], now: datetime) -> None:
    """One pass over jobs_job_queue_idx: counts per (queue, status, alias); for READY, due and oldest due."""
    due = Q(run_after__lte=now)
    for item in (Job.objects.order_by().values("queue_name", "status", "backend")
                 .annotate(n=Count("*"), due=Count("run_after", filter=due),
                           oldest_due=as_text(Min("run_after", filter=due)))):
        row = rows.get((item["backend"], item["queue_name"]))
        if row is None:  # an alias no longer in TASKS
            continue
        row.counts[item["status"]] = item["n"]
        if item["status"] == JobStatus.READY:
            row.due, row.oldest_due = item["due"], stored_time(item["oldest_due"])


def _queue_index_names():
    """The read connection, the job table's name and its queue index's columns, quoted."""
    connection = connections[router.db_for_read(Job)]
    qn = connection.ops.quote_name
    columns = tuple(qn(Job._meta.get_field(f).column) for f in ("queue_name", "status", "backend", "run_after"))
    return connection, qn(Job._meta.db_table), columns


def _take_capped(rows: dict[tuple[str, str], QueueRow], found, cap: int, now: datetime) -> None:
    """Each (alias, queue, status, count, due, oldest due) read with counts capped at ``cap``:
    a count that reached the cap becomes the database's estimate, marked as such."""
    for name_of, name, state, number, due, oldest_due in found:
        row = rows[(name_of, name)]
        same = Job.objects.filter(queue_name=name, status=state, backend=name_of)
        if number >= cap:
            number = max(estimated_count(same), number)
            row.estimated.add(state)
        if number:
            row.counts[state] = number
        if state == JobStatus.READY:
            if due >= cap:
                due = max(estimated_count(same.filter(run_after__lte=now)), due)
                row.estimated.add("due")
            row.due, row.oldest_due = due, stored_time(oldest_due)


def _capped_counts_by_group(rows: dict[tuple[str, str], QueueRow], now: datetime) -> None:
    """MySQL and MariaDB: every (alias, queue, status) count read up to EXACT_UP_TO entries of the
    queue index, in one statement (a UNION ALL of capped counts; InnoDB has no per-group
    estimate to read instead); over the cap, the group's EXPLAIN estimate, marked as such. The
    exact count over the whole index took 290 ms at a million jobs."""
    if not rows:
        return
    connection, table, (queue, status, backend, run_after) = _queue_index_names()
    cap = EXACT_UP_TO + 1
    match = f"j.{queue} = %s AND j.{status} = %s AND j.{backend} = %s"
    parts, params = [], []
    for name_of, name in sorted(rows):
        for state in JobStatus.values:
            group = [name, state, name_of]
            if state == JobStatus.READY:
                parts.append(f"SELECT %s, %s, %s, (SELECT COUNT(*) FROM (SELECT 1 FROM {table} j WHERE {match} "
                             f"LIMIT {cap}) c), (SELECT COUNT(*) FROM (SELECT 1 FROM {table} j WHERE {match} "
                             f"AND j.{run_after} <= %s LIMIT {cap}) c), (SELECT CAST(MIN(j.{run_after}) AS CHAR) "
                             f"FROM {table} j WHERE {match} AND j.{run_after} <= %s)")
                params += [name_of, name, state, *group, *group, now, *group, now]
            else:
                parts.append(f"SELECT %s, %s, %s, (SELECT COUNT(*) FROM (SELECT 1 FROM {table} j WHERE {match} "
                             f"LIMIT {cap}) c), NULL, NULL")
                params += [name_of, name, state, *group]
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        found = cursor.fetchall()
    _take_capped(rows, found, cap, now)


def _capped_counts(rows: dict[tuple[str, str], QueueRow], now: datetime) -> None:
    """PostgreSQL: every (alias, queue, status) count read up to EXACT_UP_TO index entries, in one statement.

    Each count is ``COUNT(*)`` over ``LIMIT cap + 1`` rows of jobs_job_queue_idx (queue,
    status, alias, run_after), so the statement reads at most rows x statuses x cap index
    entries however big the table is; the lag is one index probe per row. Counts over
    the cap become the planner's estimate (an EXPLAIN each), marked as such.
    """
    if not rows:
        return
    connection, table, (queue, status, backend, run_after) = _queue_index_names()
    cap = EXACT_UP_TO + 1
    match = f"j.{queue} = q.name AND j.{status} = s.status AND j.{backend} = q.backend"
    # In the index's order: with a LIMIT alone, the planner takes a sequential scan whenever
    # it believes index-only scans would visit the heap (pages not yet all-visible after bulk
    # writes), and that scan reads the whole table for a rare status (3.5 s at 1M rows).
    in_index_order = f"ORDER BY j.{queue}, j.{status}, j.{backend}, j.{run_after}"
    sql = (
        f"SELECT q.backend, q.name, s.status, "
        f"(SELECT COUNT(*) FROM (SELECT 1 FROM {table} j WHERE {match} {in_index_order} LIMIT %(cap)s) c), "
        f"CASE WHEN s.status = %(ready)s THEN (SELECT COUNT(*) FROM (SELECT 1 FROM {table} j "
        f"WHERE {match} AND j.{run_after} <= %(now)s {in_index_order} LIMIT %(cap)s) c) END, "
        f"CASE WHEN s.status = %(ready)s THEN (SELECT MIN(j.{run_after})::text FROM {table} j "
        f"WHERE {match} AND j.{run_after} <= %(now)s) END "
        f"FROM unnest(%(backends)s::text[], %(queues)s::text[]) AS q(backend, name) "
        f"CROSS JOIN unnest(%(statuses)s::text[]) AS s(status)"
    )
    pairs = sorted(rows)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"cap": cap, "ready": JobStatus.READY.value, "now": now,
                             "backends": [name_of for name_of, _ in pairs], "queues": [name for _, name in pairs],
                             "statuses": list(JobStatus.values)})
        found = cursor.fetchall()
    _take_capped(rows, found, cap, now)


def throughput(now: datetime, minutes: int = THROUGHPUT_MINUTES) -> list[tuple[datetime, int, int]]:
    """Jobs that ended SUCCESSFUL and FAILED in each of the last ``minutes`` minutes."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    buckets = {start + timedelta(minutes=i): [0, 0] for i in range(minutes)}
    counts = (Job.objects.order_by()
              .filter(finished_at__gte=start, finished_at__lt=end,
                      status__in=[JobStatus.SUCCESSFUL, JobStatus.FAILED])
              .annotate(minute=TruncMinute("finished_at")).values("minute", "status").annotate(n=Count("*")))
    for item in counts:
        if not isinstance(item["minute"], datetime):  # a damaged time: in no minute
            continue
        bucket = buckets.get(item["minute"].replace(second=0, microsecond=0))
        if bucket is not None:
            bucket[0 if item["status"] == JobStatus.SUCCESSFUL else 1] += item["n"]
    return [(minute, ok, bad) for minute, (ok, bad) in sorted(buckets.items())]


def failing_tasks(now: datetime, hours: int = FAILING_HOURS) -> list[dict]:
    """Tasks by number of jobs that ended FAILED in the last ``hours`` hours, most first.
    ``last_failure`` is None when the latest stored time of a task's failures is no time."""
    rows = list(Job.objects.order_by()
                .filter(status=JobStatus.FAILED, finished_at__gte=now - timedelta(hours=hours))
                .values("task_path").annotate(failures=Count("*"), last_failure=as_text(Max("finished_at")))
                .order_by("-failures", "task_path"))
    for row in rows:
        row["last_failure"] = stored_time(row["last_failure"])
    return rows


def workers_alive(now: datetime, stale: float) -> list[dict]:
    alive = list(WorkerProcess.objects.filter(heartbeat_at__gte=now - timedelta(seconds=stale))
                 .order_by("started_at"))
    running = dict(Job.objects.running().order_by().values_list("worker_id").annotate(n=Count("*")))
    return [{"worker": w, "running": running.get(w.worker_id, 0),
             "heartbeat_age": max((now - w.heartbeat_at).total_seconds(), 0.0)} for w in alive]


def limit_keys(limit: int = 20) -> list[dict]:
    """The concurrency and rate keys with the most jobs waiting (READY) or running, at most ``limit``.

    Waiting counts read the limited index's READY entries (jobs of limit keys only); running
    counts are the keys' own rows.
    """
    waiting = dict(Job.objects.order_by().filter(status=JobStatus.READY, limit_key__isnull=False)
                   .values_list("limit_key").annotate(n=Count("*")).order_by("-n", "limit_key")[:limit])
    stored = (JobLimit.objects.filter(Q(running__gt=0) | Q(key__in=list(waiting)))
              .order_by("-running").values_list("key", "running")[:limit * 2])
    running, damaged = {}, {}
    for key, count in stored:  # SQLite keeps text or a float in the column; neither counts
        key = str(key)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            damaged[key] = f"running is {str(count)[:60]!r}"
            count = 0
        running[key] = count
    keys = sorted(set(waiting) | {key for key, n in running.items() if n > 0} | set(damaged),
                  key=lambda key: (-waiting.get(key, 0), -running.get(key, 0), key))[:limit]
    return [{"key": key, "running": running.get(key, 0), "waiting": waiting.get(key, 0),
             "damaged": damaged.get(key, "")} for key in keys]


def snapshot(now: datetime, *, backend: str | None = None, keys: bool = False) -> Snapshot:
    """Everything above in one object. ``backend``: a TASKS alias whose queues and stale_after
    to use (default: every database backend, and the shortest stale_after); ``keys``: the
    limit keys too (two more queries: the admin's overview shows them)."""
    stale = stale_after(backend)
    return Snapshot(now=now, queues=queue_rows(now, backend), minutes=throughput(now), failing=failing_tasks(now),
                    workers=workers_alive(now, stale), stale_after=stale, backends=sorted(database_backends(backend)),
                    limit_keys=limit_keys() if keys else [])


# -- for the health and metrics views: one query each -------------------------------------

def liveness(now: datetime, stale: float) -> tuple[int, datetime | None]:
    """(workers that heartbeated within ``stale`` seconds, the latest heartbeat of any worker)."""
    row = WorkerProcess.objects.aggregate(
        alive=Count("pk", filter=Q(heartbeat_at__gte=now - timedelta(seconds=stale))), last=Max("heartbeat_at"))
    return row["alive"], row["last"]


class SecondsBetween(Func):
    """``end - start`` in seconds, in each database's own arithmetic (no Python function per row)."""

    output_field = FloatField()
    templates = {
        # Infinite times (damage) have no difference: NULL, which the aggregates skip.
        "postgresql": "CASE WHEN isfinite({end}) AND isfinite({start}) THEN EXTRACT(EPOCH FROM ({end} - {start})) END",
        "sqlite": "((julianday({end}) - julianday({start})) * 86400.0)",
        "mysql": "(UNIX_TIMESTAMP({end}) - UNIX_TIMESTAMP({start}))",
    }

    def __init__(self, end: str, start: str):
        super().__init__(F(end), F(start))

    def as_sql(self, compiler, connection, **extra):
        from django.db import NotSupportedError

        if connection.vendor not in self.templates:
            raise NotSupportedError(f"SecondsBetween has no SQL for {connection.vendor}")
        (end, end_params), (start, start_params) = (compiler.compile(e) for e in self.get_source_expressions())
        template = self.templates[connection.vendor]
        times = template.count("{end}")  # each operand as often as the template names it, in that order
        return template.format(end=end, start=start), (*end_params, *start_params) * times


def attempt_durations(now: datetime, minutes: int = THROUGHPUT_MINUTES) -> dict:
    """How long the last attempt took, for jobs that ended SUCCESSFUL or FAILED in the last ``minutes``.

    ``{"buckets": [(upper bound, jobs at or under it), ..., (inf, all)], "count": n, "sum": seconds}``,
    cumulative like a Prometheus histogram, from one aggregate over the window's rows.
    """
    seconds = SecondsBetween("finished_at", "last_attempted_at")
    recent = Job.objects.order_by().filter(finished_at__gte=now - timedelta(minutes=minutes),
                                           last_attempted_at__isnull=False,
                                           status__in=[JobStatus.SUCCESSFUL, JobStatus.FAILED])
    row = recent.aggregate(count=Count("pk"), sum=Sum(seconds),
                           **{f"le{i}": Count("pk", filter=LessThanOrEqual(seconds, bound))
                              for i, bound in enumerate(DURATION_BUCKETS)})
    buckets = [(bound, row[f"le{i}"]) for i, bound in enumerate(DURATION_BUCKETS)]
    return {"buckets": [*buckets, (float("inf"), row["count"])], "count": row["count"],
            "sum": max(float(row["sum"] or 0.0), 0.0)}
