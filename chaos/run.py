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
import time
from contextlib import contextmanager
from pathlib import Path

from . import hosts as hosts_module
from .database import (
    KINDS,
    MariadbUnavailable,
    PostgresUnavailable,
    pids_running_jobs,
    retrying,
    start_database,
    status_counts,
    stop_leftover,
)
from .faults import Injector
from .heartbeats import RECOVERY_TIMEOUT, Heartbeats
from .limits import LimitSamples

# chaos.check, chaos.report and chaos.tasks declare tasks, which needs settings: they are
# imported once DATABASE_URL is known and Django is set up.

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / ".chaos"
CONCURRENCY = 8  # job threads per worker process (most jobs sleep or wait on the database)
RATE = 25.0  # jobs per second the producer enqueues, on average
DRAIN_TIMEOUT = 120.0  # seconds for everything to finish once the faults stop
STOP_TIMEOUT = 20.0  # seconds past shutdown_grace for a worker to exit on SIGTERM


def say(message: str) -> None:
    print(f"chaos: {message}", file=sys.stderr, flush=True)


@contextmanager
def exclusive():
    """One run at a time on this machine: the next one would remove this one's namespaces."""
    hosts_module.STATE.mkdir(exist_ok=True)
    lock_path = hosts_module.STATE / "lock"
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"chaos: another run holds {lock_path}; wait for it to finish") from None
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description="The fault test (see chaos/__init__.py).")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long faults are injected (default 120)")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: a random one, printed)")
    parser.add_argument("--workers", type=int, default=6, help="hosts, one worker each (default 6; even: --processes 2)")
    parser.add_argument("--db", choices=KINDS, default="postgres", help="the database server (default postgres)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1, 1_000_000)
    if args.seconds < 10:
        parser.error("--seconds must be at least 10")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)  # also when started with SIGINT ignored (a background job)
    with exclusive():
        try:
            return run(seconds=args.seconds, seed=seed, workers=args.workers, db=args.db)
        except KeyboardInterrupt:
            say(f"interrupted (seed {seed}); everything it started is gone")
            return 130
        except (PostgresUnavailable, MariadbUnavailable, RuntimeError, ValueError) as exc:
            say(f"ERROR: {exc}")
            return 2


def run(*, seconds: float, seed: int, workers: int, db: str = "postgres") -> int:
    phases = {"started": time.time()}
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "logs").mkdir(parents=True)
    leftovers = hosts_module.kill_leftover_processes() + hosts_module.remove_hosts()
    if old := stop_leftover():
        leftovers.append(old)
    if leftovers:
        say(f"removed what a killed run left: {', '.join(leftovers)}")
    say(f"seed {seed}, {seconds:g}s of faults, {workers} workers, {db} (replay: make chaos CHAOS_SEED={seed} "
        f"CHAOS_SECONDS={seconds:g} CHAOS_WORKERS={workers}{' CHAOS_DB=' + db if db != 'postgres' else ''})")
    hosts, no_namespaces = hosts_module.make_hosts(workers)
    supervised = [h.name for h in hosts if hosts_module.supervised(h)]
    say(f"--processes {hosts_module.PROCESSES} on {', '.join(supervised) or 'no host'} (they alone serve the "
        "hard queue)")
    if no_namespaces:
        say(f"WARNING: no network namespaces ({no_namespaces}): workers run on loopback and NO PARTITIONS are tested")
    database = cluster = producer = None
    try:
        database = start_database(db, hosts)
        os.environ.update(DJANGO_SETTINGS_MODULE="chaos.settings", DATABASE_URL=database.url(), PYTHONUNBUFFERED="1")
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        from django.conf import settings

        stale_after = settings.TASKS["default"]["OPTIONS"]["stale_after"]
        cluster = hosts_module.Cluster(
            hosts, log_dir=OUT / "logs", worker_args=lambda host: hosts_module.worker_args(host, CONCURRENCY),
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
        hosts_module.remember_process(producer.pid)
        heartbeats = Heartbeats()
        heartbeats.start()
        limit_samples = LimitSamples()
        limit_samples.start()
        injector = Injector(cluster, database, seed=seed, stale_after=stale_after, partitions=not no_namespaces,
                            running_jobs=lambda: retrying(pids_running_jobs, attempts=1, default=set()),
                            holds_locks=lambda label: retrying(lambda: database.holds_locks(label), attempts=1,
                                                              default=False),
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
        limit_samples.done.set()
        limit_samples.join()
        bad = heartbeats.late(cluster, injector.faults, database.restarts)
        bad += heartbeats.silent(cluster, injector.faults, database.restarts, limit=2 * stale_after)
        _dump_stacks(cluster, bad)
        grace = settings.TASKS["default"]["OPTIONS"]["shutdown_grace"]
        hung = cluster.stop_all(timeout=grace + STOP_TIMEOUT)
        phases["stopped"] = time.time()
        bad += [f"{r.label} did not exit within {grace + STOP_TIMEOUT:g}s of SIGTERM" for r in hung]
        bad += [f"{f['target']} exited by itself (exit code {f['returncode']})"
                for f in injector.faults if f["kind"] == "crash"]
        evidence = retrying(lambda: _gather(cluster, injector, database, bad, limit_samples))
        network = {"mode": "loopback" if no_namespaces else "namespaces", "why_not_namespaces": no_namespaces,
                   "hosts": [{"name": h.name, "namespace": h.namespace, "address": h.address} for h in hosts]}
        return _conclude(evidence, injector.faults, phases, run={
            "seed": seed, "seconds": seconds, "workers": workers, "database": db, "concurrency": CONCURRENCY,
            "rate": RATE, "stale_after": stale_after, "network": network, "supervised": {
                "hosts": supervised, "processes": hosts_module.PROCESSES,
                "concurrency": hosts_module.PROCESS_CONCURRENCY}, "python": sys.version.split()[0],
            "django": django.__version__})
    finally:
        if producer and producer.poll() is None:
            producer.kill()
        if cluster:
            cluster.kill_all()
        if database:
            if database.log.exists():
                shutil.copy(database.log, OUT / "logs" / database.log_name)
            database.destroy()
        hosts_module.remove_hosts()
        hosts_module.PIDS.unlink(missing_ok=True)


def _conclude(evidence, faults: list[dict], phases: dict, *, run: dict) -> int:
    """Check, write the report, say what broke; the closing line goes last, on stdout."""
    from .check import check
    from .report import build, closing_line, machine, write

    verdict = check(evidence)
    line = closing_line(len(verdict.enqueued), faults, verdict)
    write(build(ev=evidence, verdict=verdict, line=line, phases=phases, run={**run, "machine": machine()}),
          OUT / "report.json")
    write(evidence.jobs, OUT / "jobs.json")  # every job row as checked, to read a failure after the run
    for name, failures in verdict.failures.items():
        for message in list(failures.values())[:10]:
            say(message)
        if len(failures) > 10:
            say(f"... {len(failures) - 10} more {name} in .chaos/report.json")
    say(f"report: {OUT / 'report.json'}; worker logs: {OUT / 'logs'}")
    print(line, flush=True)
    return 0 if all(verdict.count(name) == 0 for name in verdict.failures) else 1


def _dump_stacks(cluster, bad: list[str]) -> None:
    """Ask each live worker that something is wrong with for its threads' stacks (in its log)."""
    blamed = [r for r in cluster.runs if r.alive and any(r.label in message.split() for message in bad)]
    for r in blamed:
        r.signal(signal.SIGUSR1)  # a --processes parent's children too (they write in its log)
    if blamed:
        time.sleep(1.0)  # faulthandler writes at once; give the logs a moment
        say(f"stacks of {', '.join(r.label for r in blamed)} are in their logs")


def _wait_for_workers(cluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(r.log.read_text().count("worker started") >= max(r.processes, 1) for r in cluster.runs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not start within {timeout:g}s; see {cluster.log_dir}")
        if any(not r.alive for r in cluster.runs):
            raise RuntimeError(f"a worker exited at start; see {cluster.log_dir}")
        time.sleep(0.1)


def _progress(seconds: float, injector):
    started = time.monotonic()
    last = [started]

    def report() -> None:
        if time.monotonic() - last[0] < 10:
            return
        last[0] = time.monotonic()
        counts = retrying(status_counts, attempts=1, default="(database down)")
        say(f"{time.monotonic() - started:.0f}/{seconds:g}s, {len(injector.faults)} faults, jobs {counts}, "
            f"load {os.getloadavg()[0]:.1f}")

    return report


def _drain(timeout: float) -> bool:
    from jobs.models import Job, JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not retrying(lambda: Job.objects.filter(status__in=[JobStatus.READY, JobStatus.RUNNING,
                                                                JobStatus.WAITING]).exists()):
            return True
        time.sleep(0.5)
    return False


def _gather(cluster, injector, database, bad_workers, limit_samples):
    from chaos.check import Evidence, read_cancels, read_record, read_worker_log
    from chaos.models import Begun, Effect
    from jobs.execution import attempt_limit
    from jobs.framework import task_backends
    from jobs.models import Job, JobBatch, JobDependency, JobLimit

    jobs = {row["id"]: row for row in Job.objects.values(
        "id", "task_path", "status", "attempts", "max_attempts", "worker_id", "worker_ids", "errors", "kwargs",
        "finished_at", "backend", "meta", "limit_key", "unique_key", "batch_id")}
    for row in jobs.values():
        # A row keeps no limit of its own unless its task sets one: the one in force applies.
        row["max_attempts"] = attempt_limit(Job(**row), task_backends[row.pop("backend")])
    effects: dict[int, list[dict]] = {}
    for effect in Effect.objects.values("job_id", "attempt", "worker_id", "raised", "started_at", "ended_at"):
        effects.setdefault(effect["job_id"], []).append(effect)
    logs = [read_worker_log(r.log, r.label, r.process.pid) for r in cluster.runs]
    begun: dict[int, list[dict]] = {}
    for row in Begun.objects.values("job_id", "attempt", "worker_id", "started_at"):
        begun.setdefault(row["job_id"], []).append(row)
    batches = {row["id"]: row for row in JobBatch.objects.values(
        "id", "total", "successful", "failed", "cancelled", "sealed_at", "finished_at", "callbacks")}
    parents: dict[int, list[int]] = {}
    for child, parent in JobDependency.objects.order_by("child_id", "position").values_list("child_id", "parent_id"):
        parents.setdefault(child, []).append(parent)
    return Evidence(calls=read_record(OUT / "enqueued.jsonl"), jobs=jobs, effects=effects, logs=logs,
                    faults=injector.faults, restarts=database.restarts, bad_workers=bad_workers,
                    cancels=read_cancels(OUT / "enqueued.jsonl"), limit_peaks=limit_samples.peaks,
                    unique_doubled=limit_samples.doubled, limit_samples=limit_samples.samples,
                    keys_left_running=dict(JobLimit.objects.filter(running__gt=0).values_list("key", "running")),
                    batches=batches, parents=parents, begun=begun)
