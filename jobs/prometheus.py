"""The queue as Prometheus metrics, read from the database at scrape time.

Needs ``prometheus_client`` (the view answers 501 without it). Every number is a gauge
computed from the rows when Prometheus scrapes: the web server runs several processes
and the workers run on other machines, so counters kept in one process's memory would
count only what that process saw, and a count of rows (say, of FAILED jobs) is no
counter either, since ``prune_jobs`` deletes old rows. Recent activity is therefore a
gauge over a fixed window (jobs finished in the last hour, failures in the last 24
hours by task), and attempt durations a gauge histogram over the last hour, which
``histogram_quantile()`` reads like any histogram.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from . import stats
from .counts import EXACT_UP_TO
from .models import JobStatus


class JobsCollector:
    """A custom collector: ``collect()`` reads one snapshot and the attempt durations."""

    def __init__(self, now: datetime):
        self.now = now

    def describe(self):
        return []  # registering must not read the database

    def collect(self):
        return families(stats.snapshot(self.now), stats.attempt_durations(self.now))


def families(snap: stats.Snapshot, durations: dict) -> list:
    """The metric families of one snapshot (pure: no query here)."""
    # Each queue row is one TASKS alias's view of a queue: the alias is a label too.
    jobs = GaugeMetricFamily("jobs_queue_jobs", f"Jobs by queue and status. On PostgreSQL a count over {EXACT_UP_TO} "
                             "is the planner's estimate.", labels=["queue", "status", "backend"])
    due = GaugeMetricFamily("jobs_queue_due_jobs", "READY jobs due now (the rest wait for a later run_after).",
                            labels=["queue", "backend"])
    lag = GaugeMetricFamily("jobs_queue_lag_seconds", "How long the oldest due READY job has waited; 0 when "
                            "none is due.", labels=["queue", "backend"])
    paused = GaugeMetricFamily("jobs_queue_paused", "1 when the queue is paused in the admin.",
                               labels=["queue", "backend"])
    for queue in snap.queues:
        for status in JobStatus.values:
            jobs.add_metric([queue.name, status, queue.backend], queue.count(status))
        due.add_metric([queue.name, queue.backend], queue.due)
        lag.add_metric([queue.name, queue.backend], queue.lag_seconds)
        paused.add_metric([queue.name, queue.backend], 1 if queue.paused else 0)
    totals = snap.totals
    finished = GaugeMetricFamily("jobs_finished_last_hour", "Jobs that ended in the last hour, by outcome.",
                                 labels=["status"])
    finished.add_metric([JobStatus.SUCCESSFUL.value], totals["successful_hour"])
    finished.add_metric([JobStatus.FAILED.value], totals["failed_hour"])
    failed = GaugeMetricFamily("jobs_failed_last_24h", "Jobs that failed for good in the last 24 hours, by task.",
                               labels=["task"])
    for row in snap.failing:
        failed.add_metric([row["task_path"]], row["failures"])
    duration = GaugeHistogramMetricFamily(
        "jobs_attempt_duration_seconds", "Duration of the last attempt of the jobs that ended SUCCESSFUL or FAILED "
        "in the last hour.", unit="seconds",
        buckets=[(_bound(bound), count) for bound, count in durations["buckets"]], gsum_value=durations["sum"])
    return [
        jobs, due, lag, paused,
        GaugeMetricFamily("jobs_workers_alive", f"Workers whose heartbeat is under stale_after "
                          f"({snap.stale_after:g} s) old.", value=len(snap.workers)),
        GaugeMetricFamily("jobs_worker_slots", "Job slots (--concurrency) of the live workers.",
                          value=sum(w["worker"].concurrency for w in snap.workers)),
        GaugeMetricFamily("jobs_worker_busy_slots", "RUNNING jobs held by the live workers.",
                          value=sum(w["running"] for w in snap.workers)),
        finished, failed, duration,
    ]


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


def render(now: datetime, accept: str = "") -> tuple[bytes, str]:
    """(body, content type): the Prometheus text format, or OpenMetrics when ``accept`` asks for it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(now))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
