"""Benchmark driver, run by a peer's own interpreter (``<venv>/bin/python driver.py ...``).

The harness never imports queue code: it runs this script in the peer's
virtual environment, and this script talks to the peer only through the
peer's ``bench_hooks`` module (see ``bench/README.md`` for that contract).
Each invocation does one step and prints a single JSON object on its last
stdout line, so the harness can stay standard-library only.

Steps:
  setup              migrate the (fresh, empty) database named by BENCH_DB_URL
  enqueue N          enqueue N no-op jobs (the hooks do it in one transaction)
  drain N            start ONE worker, time until N jobs are finished, stop it
  latency SAMPLES    enqueue-to-start latency against an idle worker
  versions           interpreter and installed distribution versions
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import BinaryIO

# Polling the unfinished-job count: often enough for ~1 % timing error on a
# multi-second drain, rarely enough not to compete with the worker for the
# database (SQLite readers briefly hold a shared lock).
POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 15.0


def _django_setup():
    import django

    django.setup()
    return importlib.import_module("bench_hooks")


def _emit(payload: dict) -> None:
    print(json.dumps(payload), flush=True)


class Worker:
    """One worker process of the peer, in its own process group so it can be stopped whole.

    Several peers fork helpers (django-q2 runs a sentinel, pusher, monitor and
    worker processes), so stopping means: polite signal to the leader, wait,
    then SIGKILL to the whole group so nothing outlives the measurement.
    """

    def __init__(self, argv: list[str], log: BinaryIO | None, stop_signal: int):
        self.log = log
        self.log_offset = log.tell() if log else 0
        self.stop_signal = stop_signal
        cmd = [sys.executable, "-m", "django", *argv]
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd,
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tracebacks(self) -> int | None:
        """Tracebacks the worker logged during this run: errors a queue swallowed and carried on after."""
        if not self.log:
            return None
        with open(self.log.name, "rb") as log:
            log.seek(self.log_offset)
            return log.read().count(b"Traceback (most recent call last)")

    def stop(self) -> None:
        if self.alive():
            try:
                os.kill(self.proc.pid, self.stop_signal)
                self.proc.wait(timeout=STOP_GRACE_SECONDS)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the group, if any
        except ProcessLookupError:
            pass
        self.proc.wait()


def _open_log(path: str | None):
    """The worker's log file (appended to), or a stand-in when the output is discarded."""
    return open(path, "ab") if path else contextlib.nullcontext(None)


def cmd_setup(args, hooks) -> dict:
    from django.core.management import call_command

    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    return {"migrate_s": time.perf_counter() - started}


def cmd_enqueue(args, hooks) -> dict:
    if hooks.remaining() != 0:
        raise RuntimeError("the queue is not empty; the harness must give a fresh database")
    started = time.perf_counter()
    hooks.enqueue(args.n)
    elapsed = time.perf_counter() - started
    if hooks.remaining() != args.n:
        raise RuntimeError(f"expected {args.n} queued jobs, found {hooks.remaining()}")
    return {"enqueue_s": elapsed}


def cmd_drain(args, hooks) -> dict:
    """Wall time from spawning the worker until the database shows all N jobs finished.

    Includes the worker's start-up (interpreter, Django, the queue's own
    boot), as a deployment restarting a worker would see it. The time of the
    first observed completion is recorded too, so the steady-state rate
    (excluding start-up) can be reported separately.
    """
    n = args.n
    if hooks.remaining() != n:
        raise RuntimeError(f"expected {n} queued jobs, found {hooks.remaining()}")
    with _open_log(args.log) as log:
        return _drain(hooks, n, args, Worker(hooks.WORKER_ARGS, log, getattr(hooks, "STOP_SIGNAL", signal.SIGTERM)))


def _drain(hooks, n: int, args, worker: Worker) -> dict:
    started = worker.spawned_at
    first_at = first_count = None
    done = 0
    try:
        while True:
            done = n - hooks.remaining()
            now = time.perf_counter()
            if done and first_at is None:
                first_at, first_count = now - started, done
            if done >= n:
                elapsed = now - started
                break
            if not worker.alive():
                raise RuntimeError(f"worker exited with code {worker.proc.returncode} after {done}/{n} jobs")
            if now - started > args.timeout:
                raise RuntimeError(f"timed out after {args.timeout}s with {done}/{n} jobs finished")
            time.sleep(args.poll)
    finally:
        worker.stop()
    failed = hooks.failed() if hasattr(hooks, "failed") else 0
    return {
        "seconds": elapsed,
        "finished": done,
        "failed": failed,
        "first_done_s": first_at,
        "first_done_count": first_count,
        "worker_tracebacks": worker.tracebacks(),
    }


def cmd_latency(args, hooks) -> dict:
    """Enqueue one probe at a time against an idle worker; latency = task start - enqueue call.

    Before each probe we sleep a random fraction of the peer's idle poll
    interval, so the probes land at a random phase of the worker's polling
    loop instead of always right after (or before) a poll.
    """
    with _open_log(args.log) as log:
        return _latency(hooks, args, Worker(hooks.WORKER_ARGS, log, getattr(hooks, "STOP_SIGNAL", signal.SIGTERM)))


def _latency(hooks, args, worker: Worker) -> dict:
    stamp_dir = Path(os.environ["BENCH_STAMP_DIR"])
    period = float(getattr(hooks, "IDLE_POLL_SECONDS", 1.0))
    samples: list[float] = []

    def probe() -> float:
        token = uuid.uuid4().hex
        enqueued = time.time()
        hooks.enqueue_stamp(token)  # commits: the job is visible to the worker from here on
        deadline = time.perf_counter() + args.timeout
        path = stamp_dir / token
        while not path.exists():
            if not worker.alive():
                raise RuntimeError(f"worker exited with code {worker.proc.returncode}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"latency probe not run within {args.timeout}s")
            time.sleep(0.002)
        return float(path.read_text()) - enqueued

    try:
        probe()  # warm-up: the worker is booted and idle afterwards
        for _ in range(args.samples):
            time.sleep(random.uniform(0, period) + 0.05)
            samples.append(probe())
    finally:
        worker.stop()
    return {"samples": samples}


def cmd_versions(args, hooks) -> dict:
    from importlib import metadata

    dists = sorted(
        {(d.metadata["Name"], d.version) for d in metadata.distributions()}, key=lambda item: item[0].lower()
    )
    import sqlite3

    return {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version, "packages": dict(dists)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-dir", required=True, help="directory holding bench_settings.py and bench_hooks.py")
    parser.add_argument("--settings", default="bench_settings")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup")
    sub.add_parser("versions")
    p = sub.add_parser("enqueue")
    p.add_argument("n", type=int)
    p = sub.add_parser("drain")
    p.add_argument("n", type=int)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--log", help="append the worker's output here")
    p.add_argument("--poll", type=float, default=POLL_SECONDS, help="seconds between counts of unfinished jobs")
    p = sub.add_parser("latency")
    p.add_argument("samples", type=int)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--log")
    args = parser.parse_args(argv)

    # The worker subprocess inherits this environment, so it sees the same
    # project and settings as the driver does.
    common_dir = str(Path(__file__).resolve().parent)
    path = [str(Path(args.peer_dir).resolve()), common_dir]
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(path + inherited)
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    sys.path[:0] = path

    if args.cmd == "versions":
        _emit(cmd_versions(args, None))
        return 0
    hooks = _django_setup()
    handler = {"setup": cmd_setup, "enqueue": cmd_enqueue, "drain": cmd_drain, "latency": cmd_latency}[args.cmd]
    with tempfile.TemporaryDirectory(prefix="bench-stamps-") as stamp_dir:
        os.environ.setdefault("BENCH_STAMP_DIR", stamp_dir)  # the worker inherits it
        _emit(handler(args, hooks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
