"""Benchmark driver, run by a peer's own interpreter (``<venv>/bin/python driver.py ...``).

The harness never imports queue code: it runs this script in the peer's
virtual environment, and this script talks to the peer only through the
peer's ``bench_hooks`` module (see ``bench/README.md`` for that contract).
Each invocation does one step and prints a single JSON object on its last
stdout line, so the harness can stay standard-library only.

Steps:
  setup              migrate the (fresh, empty) database named by BENCH_DB_URL
  enqueue N          enqueue N no-op jobs (the hooks do it in one transaction)
  enqueue-modes      W1: time each way of enqueueing the hooks offer (--each/--tx/--bulk N)
  drain N            start ONE worker (--processes K: K of them), time until N jobs are finished
  dupcheck N         W4: N jobs that record their id, K worker processes: duplicates and misses
  latency SAMPLES    enqueue-to-start latency against an idle worker
  call HOOK [JSON]   call bench_hooks.HOOK(*args) and print what it returns (queue-specific extras)
  versions           interpreter and installed distribution versions

Long steps report progress on stderr as ``@progress DONE TOTAL`` lines, which
the harness turns into its progress bar.
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
PROGRESS_EVERY = 0.5  # seconds between @progress lines


def _django_setup():
    import django

    django.setup()
    return importlib.import_module("bench_hooks")


def _emit(payload: dict) -> None:
    print(json.dumps(payload), flush=True)


class _Progress:
    """``@progress DONE TOTAL`` on stderr, at most every PROGRESS_EVERY seconds."""

    def __init__(self, total: int):
        self.total = total
        self.last = 0.0

    def __call__(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY:
            self.last = now
            print(f"@progress {done} {self.total}", file=sys.stderr, flush=True)


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


def _start_workers(hooks, argv: list[str], log, processes: int) -> list[Worker]:
    stop_signal = getattr(hooks, "STOP_SIGNAL", signal.SIGTERM)
    workers = []
    try:
        for _ in range(processes):
            workers.append(Worker(argv, log, stop_signal))
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return workers


def _worker_argv(hooks, variant: str | None) -> list[str]:
    if not variant:
        return hooks.WORKER_ARGS
    variants = getattr(hooks, "WORKER_VARIANTS", {})
    if variant not in variants:
        raise RuntimeError(f"no worker variant {variant!r} (known: {sorted(variants)})")
    return variants[variant]


def cmd_enqueue(args, hooks) -> dict:
    if hooks.remaining() != 0:
        raise RuntimeError("the queue is not empty; the harness must give a fresh database")
    started = time.perf_counter()
    hooks.enqueue(args.n)
    elapsed = time.perf_counter() - started
    if hooks.remaining() != args.n:
        raise RuntimeError(f"expected {args.n} queued jobs, found {hooks.remaining()}")
    return {"enqueue_s": elapsed}


def cmd_enqueue_modes(args, hooks) -> dict:
    """W1: enqueue ``--each`` jobs one by one (autocommit), ``--tx`` in one transaction, ``--bulk`` in bulk.

    A mode the queue has no hook for is reported as null; its jobs are then
    queued (untimed) by ``hooks.enqueue`` so that the total stays what was asked.
    """
    if hooks.remaining() != 0:
        raise RuntimeError("the queue is not empty; the harness must give a fresh database")
    modes = {"each": ("enqueue_each", args.each), "tx": ("enqueue_in_transaction", args.tx),
             "bulk": ("enqueue_bulk", args.bulk)}
    out: dict = {}
    untimed = 0
    for mode, (hook, n) in modes.items():
        if not n:
            out[mode] = None
            continue
        fn = getattr(hooks, hook, None)
        if fn is None:
            out[mode] = None
            untimed += n
            continue
        started = time.perf_counter()
        fn(n)
        seconds = time.perf_counter() - started
        out[mode] = {"n": n, "seconds": seconds, "jobs_per_s": n / seconds}
    if untimed:
        hooks.enqueue(untimed)
    total = args.each + args.tx + args.bulk
    if hooks.remaining() != total:
        raise RuntimeError(f"expected {total} queued jobs, found {hooks.remaining()}")
    out["total"] = total
    return out


def cmd_drain(args, hooks) -> dict:
    """Wall time from spawning the worker(s) until the database shows all N jobs finished.

    Includes the worker's start-up (interpreter, Django, the queue's own
    boot), as a deployment restarting a worker would see it. The time of the
    first observed completion is recorded too, so the steady-state rate
    (excluding start-up) can be reported separately.
    """
    n = args.n
    if hooks.remaining() != n:
        raise RuntimeError(f"expected {n} queued jobs, found {hooks.remaining()}")
    argv = _worker_argv(hooks, args.variant)
    with _open_log(args.log) as log:
        return _drain(hooks, n, args, _start_workers(hooks, argv, log, args.processes))


def _drain(hooks, n: int, args, workers: list[Worker]) -> dict:
    started = workers[0].spawned_at
    first_at = first_count = None
    done = 0
    progress = _Progress(n)
    try:
        while True:
            done = n - hooks.remaining()
            now = time.perf_counter()
            progress(done)
            if done and first_at is None:
                first_at, first_count = now - started, done
            if done >= n:
                elapsed = now - started
                break
            for worker in workers:
                if not worker.alive():
                    raise RuntimeError(f"worker exited with code {worker.proc.returncode} after {done}/{n} jobs")
            if now - started > args.timeout:
                raise RuntimeError(f"timed out after {args.timeout}s with {done}/{n} jobs finished")
            time.sleep(args.poll)
    finally:
        for worker in workers:
            worker.stop()
    progress(done, force=True)
    failed = hooks.failed() if hasattr(hooks, "failed") else 0
    return {
        "seconds": elapsed,
        "finished": done,
        "failed": failed,
        "first_done_s": first_at,
        "first_done_count": first_count,
        "worker_tracebacks": workers[0].tracebacks(),  # they share one log, read from the first one's start
        "processes": len(workers),
    }


def cmd_dupcheck(args, hooks) -> dict:
    """W4: N jobs that each append their own id to a file, drained by K worker processes at once.

    Afterwards every id must be in the file exactly once: a line too many is a
    job that ran twice (duplicate), an id missing is a job that never ran (miss).
    """
    if hooks.remaining() != 0:
        raise RuntimeError("the queue is not empty; the harness must give a fresh database")
    record_file = Path(os.environ["BENCH_STAMP_DIR"]) / "recorded.txt"
    os.environ["BENCH_RECORD_FILE"] = str(record_file)  # the workers inherit it
    ids = hooks.enqueue_recorded(args.n)
    argv = _worker_argv(hooks, args.variant)
    with _open_log(args.log) as log:
        result = _drain(hooks, args.n, args, _start_workers(hooks, argv, log, args.processes))
    seen = record_file.read_text().split() if record_file.exists() else []
    counts: dict[str, int] = {}
    for job_id in seen:
        counts[job_id] = counts.get(job_id, 0) + 1
    expected = {str(i) for i in ids}
    result.update(
        duplicates=sum(c - 1 for c in counts.values() if c > 1),
        misses=len(expected - counts.keys()),
        unexpected=len(counts.keys() - expected),
        recorded_lines=len(seen),
        statuses=hooks.recorded_statuses() if hasattr(hooks, "recorded_statuses") else None,
    )
    return result


def cmd_call(args, hooks) -> dict:
    """A queue-specific extra: ``bench_hooks.<hook>(*json.loads(args))``; its result must be JSON."""
    fn = getattr(hooks, args.hook, None)
    if fn is None:
        raise RuntimeError(f"bench_hooks has no {args.hook!r}")
    started = time.perf_counter()
    value = fn(*json.loads(args.json_args))
    return {"result": value, "seconds": time.perf_counter() - started}


def cmd_latency(args, hooks) -> dict:
    """Enqueue one probe at a time against an idle worker; latency = task start - enqueue call.

    Before each probe we sleep a random fraction of the peer's idle poll
    interval, so the probes land at a random phase of the worker's polling
    loop instead of always right after (or before) a poll.
    """
    with _open_log(args.log) as log:
        return _latency(hooks, args, _start_workers(hooks, hooks.WORKER_ARGS, log, 1)[0])


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

    progress = _Progress(args.samples)
    try:
        probe()  # warm-up: the worker is booted and idle afterwards
        for _ in range(args.samples):
            time.sleep(random.uniform(0, period) + 0.05)
            samples.append(probe())
            progress(len(samples))
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
    p = sub.add_parser("enqueue-modes")
    for mode in ("each", "tx", "bulk"):
        p.add_argument(f"--{mode}", type=int, default=0)
    for name in ("drain", "dupcheck"):
        p = sub.add_parser(name)
        p.add_argument("n", type=int)
        p.add_argument("--timeout", type=float, default=600.0)
        p.add_argument("--log", help="append the worker's output here")
        p.add_argument("--poll", type=float, default=POLL_SECONDS, help="seconds between counts of unfinished jobs")
        p.add_argument("--processes", type=int, default=1, help="worker processes started together")
        p.add_argument("--variant", help="a key of bench_hooks.WORKER_VARIANTS instead of WORKER_ARGS")
    p = sub.add_parser("call")
    p.add_argument("hook")
    p.add_argument("json_args", nargs="?", default="[]")
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
    # The harness stops an overrunning step with SIGTERM: unwind, so that the
    # ``finally`` blocks stop the workers (they live in sessions of their own).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    hooks = _django_setup()
    handler = {"setup": cmd_setup, "enqueue": cmd_enqueue, "enqueue-modes": cmd_enqueue_modes, "drain": cmd_drain,
               "dupcheck": cmd_dupcheck, "latency": cmd_latency, "call": cmd_call}[args.cmd]
    with tempfile.TemporaryDirectory(prefix="bench-stamps-") as stamp_dir:
        os.environ.setdefault("BENCH_STAMP_DIR", stamp_dir)  # the worker inherits it
        _emit(handler(args, hooks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
