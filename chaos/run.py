"""One run of the fault test, start to finish (``python -m chaos``, ``make chaos``).

1. Remove what a killed run left (namespaces, links, its server), make the hosts,
   start PostgreSQL on their addresses, migrate.
2. Start a worker on every host and the producer, then inject faults for
   ``--seconds``.
3. End the faults (heal, continue, restart the dead), let everything drain (bounded),
   stop the workers with SIGTERM.
4. Check, write ``.chaos/report.json``, print the closing line last; exit 0 only when
   no invariant broke. Namespaces, links, processes and the server go in any case,
   Ctrl-C included.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from . import hosts as hosts_module
from .database import Database, PostgresUnavailable, stop_leftover
from .faults import Injector

# chaos.check, chaos.report and chaos.tasks declare tasks, which needs settings: they are
# imported once DATABASE_URL is known and Django is set up.

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / ".chaos"
LOCK = Path("/tmp/jobs-chaos.lock")
CONCURRENCY = 8  # job threads per worker process (most jobs sleep or wait on the database)
RATE = 25.0  # jobs per second the producer enqueues, on average
DRAIN_TIMEOUT = 120.0  # seconds for everything to finish once the faults stop
# Seconds for every live worker to heartbeat again once the faults stop. A worker cut off
# needs its dead connections noticed (TCP keepalive and user timeouts), then reconnects
# (connect_timeout, and its backoff of at most 10 s).
RECOVERY_TIMEOUT = 60.0
AFTER_RESTART_S = 15.0  # seconds after a database restart when a worker may still be reconnecting
STOP_TIMEOUT = 20.0  # seconds past shutdown_grace for a worker to exit on SIGTERM


def say(message: str) -> None:
    print(f"chaos: {message}", file=sys.stderr, flush=True)


@contextmanager
def exclusive():
    """One run at a time on this machine: the next one would remove this one's namespaces."""
    with open(LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("chaos: another run holds /tmp/jobs-chaos.lock; wait for it to finish") from None
        yield


def retrying(fn, attempts: int = 60, default=None):
    """Run a query of the harness's own across a database restart; after ``attempts``
    failures, raise (or return ``default`` when one is given)."""
    from django.db import DatabaseError, connection

    for attempt in range(attempts):
        try:
            return fn()
        except DatabaseError:
            connection.close()
            if attempt == attempts - 1:
                if default is not None:
                    return default
                raise
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description="The fault test (see chaos/__init__.py).")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long faults are injected (default 120)")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: a random one, printed)")
    parser.add_argument("--workers", type=int, default=6, help="hosts, one worker process each (default 6)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1, 1_000_000)
    if args.seconds < 10:
        parser.error("--seconds must be at least 10")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    with exclusive():
        try:
            return run(seconds=args.seconds, seed=seed, workers=args.workers)
        except KeyboardInterrupt:
            say(f"interrupted (seed {seed}); everything it started is gone")
            return 130
        except (PostgresUnavailable, RuntimeError, ValueError) as exc:
            say(f"ERROR: {exc}")
            return 2


def run(*, seconds: float, seed: int, workers: int) -> int:
    phases = {"started": time.time()}
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "logs").mkdir(parents=True)
    leftovers = hosts_module.remove_hosts()
    if old := stop_leftover():
        leftovers.append(old)
    if leftovers:
        say(f"removed what a killed run left: {', '.join(leftovers)}")
    say(f"seed {seed}, {seconds:g}s of faults, {workers} workers (replay: make chaos CHAOS_SEED={seed} "
        f"CHAOS_SECONDS={seconds:g} CHAOS_WORKERS={workers})")
    hosts, no_namespaces = hosts_module.make_hosts(workers)
    if no_namespaces:
        say(f"WARNING: no network namespaces ({no_namespaces}): workers run on loopback and NO PARTITIONS are tested")
    database = cluster = producer = None
    try:
        database = Database(hosts)
        os.environ.update(DJANGO_SETTINGS_MODULE="chaos.settings", DATABASE_URL=database.url(), PYTHONUNBUFFERED="1")
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        from django.conf import settings

        from .check import check
        from .report import build, closing_line, machine, write

        stale_after = settings.TASKS["default"]["OPTIONS"]["stale_after"]
        cluster = hosts_module.Cluster(
            hosts, log_dir=OUT / "logs", worker_args=["--no-scheduler", "--concurrency", str(CONCURRENCY)],
            env_for=lambda host, label: {**os.environ, "DATABASE_URL": database.url(host.server_address, label)})
        for host in hosts:
            cluster.start(host)
        _wait_for_workers(cluster)
        phases["faults_started"] = time.time()
        producer = subprocess.Popen(
            [sys.executable, "-m", "chaos.load", "--seconds", str(seconds), "--seed", str(seed), "--rate", str(RATE),
             "--record", str(OUT / "enqueued.jsonl")],
            cwd=REPO, stdout=open(OUT / "logs" / "producer.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        heartbeats = Heartbeats()
        heartbeats.start()
        injector = Injector(cluster, database, seed=seed, stale_after=stale_after, partitions=not no_namespaces,
                            running_jobs=lambda: retrying(_pids_running_jobs, attempts=1, default=set()),
                            holds_locks=lambda label: retrying(lambda: _holds_locks(label), attempts=1, default=False),
                            beat_since=lambda pid, moment: heartbeats.first_after(pid, moment) is not None)
        injector.run(seconds, tick=_progress(seconds, injector))
        phases["faults_ended"] = time.time()
        injector.settle()
        phases["settled"] = time.time()
        heartbeats.wait_for_all(cluster, since=phases["settled"], timeout=RECOVERY_TIMEOUT)
        producer.wait(timeout=60)
        drained = _drain(DRAIN_TIMEOUT)
        phases["drained"] = time.time()
        say(f"drained in {phases['drained'] - phases['faults_ended']:.0f}s" if drained else
            f"NOT drained after {DRAIN_TIMEOUT:g}s")
        heartbeats.done.set()
        heartbeats.join()
        bad = heartbeats.late(cluster, injector.faults, database.restarts)
        bad += heartbeats.silent(cluster, injector.faults, database.restarts, limit=2 * stale_after)
        grace = settings.TASKS["default"]["OPTIONS"]["shutdown_grace"]
        hung = cluster.stop_all(timeout=grace + STOP_TIMEOUT)
        phases["stopped"] = time.time()
        bad += [f"{r.label} did not exit within {grace + STOP_TIMEOUT:g}s of SIGTERM" for r in hung]
        bad += [f"{f['target']} exited by itself (exit code {f['returncode']})"
                for f in injector.faults if f["kind"] == "crash"]
        evidence = retrying(lambda: _gather(cluster, injector, database, bad))
        verdict = check(evidence)
        line = closing_line(len(verdict.enqueued), injector.faults, verdict)
        network = {"mode": "loopback" if no_namespaces else "namespaces", "why_not_namespaces": no_namespaces,
                   "hosts": [{"name": h.name, "namespace": h.namespace, "address": h.address} for h in hosts]}
        report = build(ev=evidence, verdict=verdict, line=line, phases=phases, run={
            "seed": seed, "seconds": seconds, "workers": workers, "concurrency": CONCURRENCY, "rate": RATE,
            "stale_after": stale_after, "network": network, "machine": machine(), "python": sys.version.split()[0],
            "django": django.__version__})
        write(report, OUT / "report.json")
        for name, failures in verdict.failures.items():
            for message in list(failures.values())[:10]:
                say(message)
            if len(failures) > 10:
                say(f"... {len(failures) - 10} more {name} in .chaos/report.json")
        say(f"report: {OUT / 'report.json'}; worker logs: {OUT / 'logs'}")
        print(line, flush=True)
        return 0 if all(verdict.count(name) == 0 for name in verdict.failures) else 1
    finally:
        if producer and producer.poll() is None:
            producer.kill()
        if cluster:
            cluster.kill_all()
        if database:
            if database.log.exists():
                shutil.copy(database.log, OUT / "logs" / "postgresql.log")
            database.destroy()
        hosts_module.remove_hosts()


def _wait_for_workers(cluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all("worker started" in r.log.read_text() for r in cluster.runs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not start within {timeout:g}s; see {cluster.log_dir}")
        if any(not r.alive for r in cluster.runs):
            raise RuntimeError(f"a worker exited at start; see {cluster.log_dir}")
        time.sleep(0.1)


def _pids_running_jobs() -> set[int]:
    from jobs.models import Job

    return {int(w.split(":")[1]) for w in Job.objects.running().values_list("worker_id", flat=True).distinct()}


def _status_counts() -> dict[str, int]:
    from django.db.models import Count

    from jobs.models import Job

    return dict(Job.objects.order_by().values_list("status").annotate(n=Count("id")))


def _progress(seconds: float, injector):
    started = time.monotonic()
    last = [started]

    def report() -> None:
        if time.monotonic() - last[0] < 10:
            return
        last[0] = time.monotonic()
        counts = retrying(_status_counts, attempts=1, default="(database down)")
        say(f"{time.monotonic() - started:.0f}/{seconds:g}s, {len(injector.faults)} faults, jobs {counts}, "
            f"load {os.getloadavg()[0]:.1f}")

    return report


def _drain(timeout: float) -> bool:
    from jobs.models import Job, JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not retrying(lambda: Job.objects.filter(status__in=[JobStatus.READY, JobStatus.RUNNING]).exists()):
            return True
        time.sleep(0.5)
    return False


def _holds_locks(label: str) -> bool:
    """Whether the worker named ``label`` is inside a transaction that wrote (so locked) job rows."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                       "AND backend_xid IS NOT NULL AND query LIKE %s)", [label, "%jobs_job%"])
        return cursor.fetchone()[0]


class Heartbeats(threading.Thread):
    """Each worker's heartbeats as the harness saw them, sampled every second all run long."""

    def __init__(self):
        super().__init__(name="chaos-heartbeats", daemon=True)
        self.by_pid: dict[int, list[float]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        from django.db import connection

        from jobs.models import WorkerProcess

        while not self.done.wait(1.0):
            for pid, beat in retrying(lambda: list(WorkerProcess.objects.values_list("pid", "heartbeat_at")),
                                      attempts=1, default=[]):
                beats = self.by_pid.setdefault(pid, [])
                if not beats or beat.timestamp() > beats[-1]:
                    beats.append(beat.timestamp())
        connection.close()

    def first_after(self, pid: int, moment: float) -> float | None:
        return next((t for t in self.by_pid.get(pid, []) if t > moment), None)

    def wait_for_all(self, cluster, *, since: float, timeout: float) -> None:
        """Wait (bounded) until every live worker heartbeated after ``since``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
                r.alive and self.first_after(r.process.pid, since) is None for r in cluster.runs):
            time.sleep(0.5)

    def late(self, cluster, faults: list[dict], restarts: list[dict]) -> list[str]:
        """Workers that did not heartbeat within RECOVERY_TIMEOUT of an outage of theirs ending
        (a partition healed, a SIGCONT, the database back), though alive all that time.
        Sets each stop's and partition's ``back_after_s``."""
        own = [f for f in faults if f["kind"] in ("stop", "partition") and f["end"]]
        outages = [(f["end"], [cluster.by_pid(f["pid"])], f) for f in own]
        outages += [(r["up"], [w for w in cluster.runs if w.started < r["began"]], None) for r in restarts]
        late = []
        for end, runs, fault in outages:
            for run in runs:
                if any(f["pid"] == run.process.pid and f["start"] <= end < f["end"] for f in own):
                    continue  # still cut off or stopped at that moment: judged when that ends
                back = self.first_after(run.process.pid, end)
                if fault is not None:
                    fault["back_after_s"] = round(back - end, 1) if back else None
                alive_long_enough = run.ended is None or run.ended > end + RECOVERY_TIMEOUT
                if alive_long_enough and (back is None or back - end > RECOVERY_TIMEOUT):
                    what = fault["kind"] if fault else "database restart"
                    late.append(f"{run.label} did not heartbeat within {RECOVERY_TIMEOUT:g}s of the end of a "
                                f"{what} (back after {f'{back - end:.0f}s' if back else 'never'})")
        return late

    def silent(self, cluster, faults: list[dict], restarts: list[dict], *, limit: float) -> list[str]:
        """Workers that went more than ``limit`` seconds without a heartbeat while nothing
        excused it: no fault of their own under way (or not yet recovered from), not
        shutting down, the database up. Such a worker could lose its jobs while alive."""
        excused: dict[int, list[tuple[float, float]]] = {}
        for fault in faults:
            if fault["pid"] is None:
                continue
            start, end = fault["start"], fault["end"]
            if fault["kind"] in ("kill", "term", "crash") or end is None:
                end = float("inf")
            else:
                end = self.first_after(fault["pid"], end) or float("inf")
            excused.setdefault(fault["pid"], []).append((start, end))
        outages = [(r["began"], r["up"] + AFTER_RESTART_S) for r in restarts]
        silent = []
        for run in cluster.runs:
            beats = self.by_pid.get(run.process.pid, [])
            windows = excused.get(run.process.pid, []) + outages
            for before, after in zip(beats, beats[1:]):
                if after - before > limit and not any(s < after and before < e for s, e in windows):
                    silent.append(f"{run.label} went {after - before:.0f}s without a heartbeat (from "
                                  f"{time.strftime('%H:%M:%S', time.localtime(before))}), alive and reachable")
        return silent


def _gather(cluster, injector, database, bad_workers):
    from chaos.check import Evidence, read_record, read_worker_log
    from chaos.models import Effect
    from jobs.models import Job

    jobs = {row["id"]: row for row in Job.objects.values(
        "id", "task_path", "status", "attempts", "max_attempts", "worker_id", "worker_ids", "errors", "kwargs",
        "finished_at")}
    effects: dict[int, list[dict]] = {}
    for effect in Effect.objects.values("job_id", "attempt", "worker_id", "raised"):
        effects.setdefault(effect["job_id"], []).append(effect)
    logs = [read_worker_log(r.log, r.label, r.process.pid) for r in cluster.runs]
    return Evidence(calls=read_record(OUT / "enqueued.jsonl"), jobs=jobs, effects=effects, logs=logs,
                    faults=injector.faults, restarts=database.restarts, bad_workers=bad_workers)
