"""What the admin's queue overview shows, read in a handful of queries, and its SVG chart.

Every query here is bounded by an index, not by the size of the table: the queues
come from a loose index scan; counts per queue and status read at most
``EXACT_UP_TO`` entries each of ``jobs_job_queue_idx`` on PostgreSQL (bigger ones are
the planner's estimate, marked as such; other databases count exactly), and the
same index gives each queue's lag in one probe; the chart and the failing tasks read
only the rows finished in their window through ``jobs_job_finished_idx``; workers
are their own small table. Nothing is cached: the page shows the database as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connections, router
from django.db.models import Count, Max, Min, Q
from django.db.models.functions import TruncMinute
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from .counts import EXACT_UP_TO, distinct_values, estimated_count
from .models import Job, JobStatus, QueueState, WorkerProcess

CHART_MINUTES = 60
TOP_FAILING = 10


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
class Overview:
    now: datetime
    queues: list[QueueRow]
    minutes: list[tuple[datetime, int, int]]  # (minute, successful, failed), oldest first
    failing: list[dict]  # the tasks failing most in the last 24 hours
    failed_24h: int
    workers: list[dict]
    stale_after: float
    backends: list[str] = field(default_factory=list)  # the TASKS aliases that store jobs here

    @property
    def several_backends(self) -> bool:
        """Rows then name their alias: each counts only the jobs of its alias."""
        return len(self.backends) > 1

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
        names = set()
        for q in self.queues:
            if "due" in q.estimated:
                names.add("due")
            if q.scheduled_estimated:
                names.add("scheduled")
            if JobStatus.RUNNING in q.estimated:
                names.add("running")
        return names

    @property
    def max_lag(self) -> timedelta | None:
        lags = [q.lag for q in self.queues if q.lag is not None and not q.paused]
        return max(lags) if lags else None

    @property
    def max_lag_seconds(self) -> float:
        return self.max_lag.total_seconds() if self.max_lag is not None else 0.0

    @property
    def paused(self) -> list[str]:
        return [q.name for q in self.queues if q.paused]

    @property
    def chart(self) -> SafeString:
        return throughput_svg(self.minutes)


def database_backends() -> dict:
    """The ``TASKS`` aliases whose backend stores jobs in this database, by alias."""
    from .backends import DatabaseBackend
    from .framework import task_backends

    return {backend.alias: backend for backend in task_backends.all() if isinstance(backend, DatabaseBackend)}


def configured_queues() -> list[str]:
    """The QUEUES of every backend in settings.TASKS that stores jobs here."""
    names: list[str] = []
    for backend in database_backends().values():
        names += sorted(name for name in backend.queues if name not in names)
    return names


def stale_after() -> float:
    values = [backend.jobs_options.stale_after for backend in database_backends().values()]
    return min(values) if values else 30.0


def queue_rows(now: datetime) -> list[QueueRow]:
    """A row per (backend alias, queue): what that alias's workers see of the queue.

    Only the aliases of ``TASKS`` count (a job of an alias no longer configured has no
    worker; the job list still shows it). A queue is listed for an alias when it is in
    that alias's QUEUES, has jobs of that alias, or has a pause state (pausing a queue
    name pauses it for every alias).
    """
    backends = database_backends()
    names = set(configured_queues()) | set(distinct_values("queue_name"))
    states = {state.name: state for state in QueueState.objects.all()}
    rows = {(alias, name): QueueRow(name, backend=alias) for alias in backends for name in names | set(states)}
    for (_, name), row in rows.items():
        state = states.get(name)
        if state is not None:
            row.paused, row.changed_at, row.changed_by = state.paused, state.changed_at, state.changed_by
    if connections[router.db_for_read(Job)].vendor == "postgresql":
        _capped_counts(rows, now)
    else:
        _exact_counts(rows, now)
    kept = [row for (alias, name), row in rows.items()
            if row.counts or name in backends[alias].queues or name in states]
    for row in kept:
        row.lag = max(now - row.oldest_due, timedelta(0)) if row.oldest_due else None
    return sorted(kept, key=lambda r: (r.backend, r.name))


def _exact_counts(rows: dict[tuple[str, str], QueueRow], now: datetime) -> None:
    """One pass over jobs_job_queue_idx: counts per (queue, status, alias); for READY, due and oldest due."""
    due = Q(run_after__lte=now)
    for item in (Job.objects.order_by().values("queue_name", "status", "backend")
                 .annotate(n=Count("*"), due=Count("run_after", filter=due), oldest_due=Min("run_after", filter=due))):
        row = rows.get((item["backend"], item["queue_name"]))
        if row is None:  # an alias no longer in TASKS
            continue
        row.counts[item["status"]] = item["n"]
        if item["status"] == JobStatus.READY:
            row.due, row.oldest_due = item["due"], item["oldest_due"]


def _capped_counts(rows: dict[tuple[str, str], QueueRow], now: datetime) -> None:
    """PostgreSQL: every (alias, queue, status) count read up to EXACT_UP_TO index entries, in one statement.

    Each count is ``COUNT(*)`` over ``LIMIT cap + 1`` rows of jobs_job_queue_idx (queue,
    status, alias, run_after), so the statement reads at most rows x statuses x cap index
    entries however big the table is; the lag is one index probe per row. Counts over
    the cap become the planner's estimate (an EXPLAIN each), marked as such.
    """
    if not rows:
        return
    connection = connections[router.db_for_read(Job)]
    qn = connection.ops.quote_name
    meta = Job._meta
    table = qn(meta.db_table)
    queue, status, backend, run_after = (qn(meta.get_field(f).column)
                                         for f in ("queue_name", "status", "backend", "run_after"))
    cap = EXACT_UP_TO + 1
    match = f"j.{queue} = q.name AND j.{status} = s.status AND j.{backend} = q.backend"
    sql = (
        f"SELECT q.backend, q.name, s.status, "
        f"(SELECT COUNT(*) FROM (SELECT 1 FROM {table} j WHERE {match} LIMIT %(cap)s) c), "
        f"CASE WHEN s.status = %(ready)s THEN (SELECT COUNT(*) FROM (SELECT 1 FROM {table} j "
        f"WHERE {match} AND j.{run_after} <= %(now)s LIMIT %(cap)s) c) END, "
        f"CASE WHEN s.status = %(ready)s THEN (SELECT MIN(j.{run_after}) FROM {table} j "
        f"WHERE {match} AND j.{run_after} <= %(now)s) END "
        f"FROM unnest(%(backends)s::text[], %(queues)s::text[]) AS q(backend, name) "
        f"CROSS JOIN unnest(%(statuses)s::text[]) AS s(status)"
    )
    pairs = sorted(rows)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"cap": cap, "ready": JobStatus.READY.value, "now": now,
                             "backends": [alias for alias, _ in pairs], "queues": [name for _, name in pairs],
                             "statuses": list(JobStatus.values)})
        found = cursor.fetchall()
    for alias, name, state, number, due, oldest_due in found:
        row = rows[(alias, name)]
        same = Job.objects.filter(queue_name=name, status=state, backend=alias)
        if number >= cap:
            number = max(estimated_count(same), number)
            row.estimated.add(state)
        if number:
            row.counts[state] = number
        if state == JobStatus.READY:
            if due >= cap:
                due = max(estimated_count(same.filter(run_after__lte=now)), due)
                row.estimated.add("due")
            row.due, row.oldest_due = due, oldest_due


def throughput(now: datetime, minutes: int = CHART_MINUTES) -> list[tuple[datetime, int, int]]:
    """Jobs that ended SUCCESSFUL and FAILED in each of the last ``minutes`` minutes."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    buckets = {start + timedelta(minutes=i): [0, 0] for i in range(minutes)}
    counts = (Job.objects.order_by()
              .filter(finished_at__gte=start, finished_at__lt=end,
                      status__in=[JobStatus.SUCCESSFUL, JobStatus.FAILED])
              .annotate(minute=TruncMinute("finished_at")).values("minute", "status").annotate(n=Count("*")))
    for item in counts:
        bucket = buckets.get(item["minute"].replace(second=0, microsecond=0))
        if bucket is not None:
            bucket[0 if item["status"] == JobStatus.SUCCESSFUL else 1] += item["n"]
    return [(minute, ok, bad) for minute, (ok, bad) in sorted(buckets.items())]


def failing_tasks(now: datetime, hours: int = 24) -> list[dict]:
    """Tasks by number of jobs that ended FAILED in the last ``hours`` hours, most first."""
    rows = (Job.objects.order_by()
            .filter(status=JobStatus.FAILED, finished_at__gte=now - timedelta(hours=hours))
            .values("task_path").annotate(failures=Count("*"), last_failure=Max("finished_at"))
            .order_by("-failures", "task_path"))
    return list(rows)


def workers_alive(now: datetime, stale: float) -> list[dict]:
    alive = list(WorkerProcess.objects.filter(heartbeat_at__gte=now - timedelta(seconds=stale))
                 .order_by("started_at"))
    running = dict(Job.objects.running().order_by().values_list("worker_id").annotate(n=Count("*")))
    return [{"worker": w, "running": running.get(w.worker_id, 0),
             "heartbeat_age": max((now - w.heartbeat_at).total_seconds(), 0.0)} for w in alive]


def build(now: datetime) -> Overview:
    stale = stale_after()
    failing = failing_tasks(now)
    return Overview(now=now, queues=queue_rows(now), minutes=throughput(now), failing=failing[:TOP_FAILING],
                    failed_24h=sum(row["failures"] for row in failing), workers=workers_alive(now, stale),
                    stale_after=stale, backends=sorted(database_backends()))


# -- the chart ---------------------------------------------------------------------------

def _axis(peak: int) -> tuple[int, int]:
    """(tick step, top) for a y axis: 1, 2 or 5 times a power of ten, at most 5 ticks, some headroom."""
    target = max(peak * 1.1, 4)
    magnitude = 1
    while True:
        for step in (magnitude, 2 * magnitude, 5 * magnitude):
            ticks = math.ceil(target / step)
            if ticks <= 5:
                return step, ticks * step
        magnitude *= 10


def throughput_svg(minutes: list[tuple[datetime, int, int]], *, width: int = 720, height: int = 180) -> SafeString:
    """Stacked bars per minute (successful below, failed on top), with axes and native tooltips.

    Plain SVG with classes that the admin stylesheet colours (light and dark themes),
    so it needs no JavaScript and no chart library. Only numbers and escaped text go in.
    """
    left, right, top, bottom = 44, 8, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    step, ceiling = _axis(max((ok + bad for _, ok, bad in minutes), default=0))
    n = max(len(minutes), 1)
    slot = plot_w / n
    bar_w = max(slot - 2, 1)

    def y(value: float) -> float:
        return top + plot_h - value / ceiling * plot_h

    parts = [f'<svg class="jobs-chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Jobs finished per minute over the last hour">']
    for value in range(0, ceiling + 1, step):  # horizontal grid lines and the y axis labels
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>'
                     f'<text class="axis" x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value}</text>')
    for index, (minute, ok, bad) in enumerate(minutes):
        x = left + index * slot + 1
        label = escape(f"{minute:%H:%M}  {ok} successful, {bad} failed")
        parts.append(f'<g><title>{label}</title>'
                     f'<rect class="hover" x="{x - 1:.1f}" y="{top}" width="{slot:.1f}" height="{plot_h}"/>')
        if ok:
            parts.append(f'<rect class="ok" x="{x:.1f}" y="{y(ok):.1f}" width="{bar_w:.1f}" '
                         f'height="{y(0) - y(ok):.1f}"/>')
        if bad:
            parts.append(f'<rect class="bad" x="{x:.1f}" y="{y(ok + bad):.1f}" width="{bar_w:.1f}" '
                         f'height="{y(ok) - y(ok + bad):.1f}"/>')
        parts.append("</g>")
        back = n - 1 - index
        if back % 10 == 0:
            text = "now" if back == 0 else f"&#8722;{back} min"
            parts.append(f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{height - 6}" '
                         f'text-anchor="middle">{text}</text>')
    parts.append(f'<line class="base" x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}"/></svg>')
    return mark_safe("".join(parts))
