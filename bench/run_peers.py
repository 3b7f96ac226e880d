"""W2 for the peer queues: drain N no-op jobs with ONE worker process, on SQLite and PostgreSQL.

Usage (from the repository root):
    python3 bench/run_peers.py                 # quick: N=2000, 3 repetitions
    python3 bench/run_peers.py --full          # N=10000
    python3 bench/run_peers.py -n 500 --peers django-q2,procrastinate --db postgres --latency 20

Each peer runs in its own virtual environment under .bench/venvs/ (built on
first use); PostgreSQL is a throwaway server at default durability; SQLite is
a temporary file. Every run gets an empty database, and the repetitions are
interleaved (rep 1 of every queue/db, then rep 2, ...) so that slow drift of
the machine affects all queues alike. Results: a table of medians on stdout
and .bench/results-peers.json. The harness itself needs only the standard
library.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make "bench" importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import report
from bench.harness.adapter import Adapter, AdapterError
from bench.harness.databases import PostgresDatabases, SqliteDatabases
from bench.harness.peers import PEERS, make_adapters

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / ".bench"
QUICK_N, FULL_N = 2000, 10000


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--jobs", type=int, help=f"jobs per drain (default {QUICK_N}; --full: {FULL_N})")
    parser.add_argument("--full", action="store_true", help=f"the full run: N={FULL_N}")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per queue and database (default 3)")
    parser.add_argument("--peers", help="comma-separated subset of: " + ", ".join(p.name for p in PEERS))
    parser.add_argument("--db", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument(
        "--no-cap",
        action="store_true",
        help="ignore per-peer job caps (django-background-tasks is capped at 1000 per drain)",
    )
    parser.add_argument(
        "--latency",
        type=int,
        metavar="SAMPLES",
        default=0,
        help="also measure enqueue-to-start latency with this many samples per queue/db",
    )
    parser.add_argument("--timeout", type=float, help="seconds allowed per drain (default 60 + N/5)")
    parser.add_argument(
        "--sqlite-dir",
        type=Path,
        default=BENCH_DIR / "tmp",
        help="where the SQLite files go (default .bench/tmp: the checkout's disk, not tmpfs)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results-peers.json")
    parser.add_argument("--venvs", type=Path, default=BENCH_DIR / "venvs")
    return parser.parse_args(argv)


def build_adapters(args: argparse.Namespace) -> list[Adapter]:
    """The queues to measure. Our own queue's adapter gets added here (see bench/README.md)."""
    names = [n.strip() for n in args.peers.split(",")] if args.peers else None
    log_dir = BENCH_DIR / "logs" / "peers"
    shutil.rmtree(log_dir, ignore_errors=True)
    return make_adapters(names, venv_root=args.venvs, log_dir=log_dir, log=log)


def open_databases(kinds: set[str], sqlite_dir: Path) -> dict:
    providers = {}
    if "sqlite" in kinds:
        providers["sqlite"] = SqliteDatabases(sqlite_dir)
    if "postgres" in kinds:
        try:
            log("starting a throwaway PostgreSQL server (default durability)")
            providers["postgres"] = PostgresDatabases()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            # No server binaries, or initdb failed: the SQLite runs are still worth having.
            log(f"PostgreSQL unavailable, skipping it: {exc}")
    return providers


def jobs_for(adapter: Adapter, n: int, no_cap: bool) -> int:
    cap = getattr(getattr(adapter, "spec", None), "max_jobs", None)
    return n if no_cap or cap is None else min(n, cap)


def run_once(adapter: Adapter, provider, n: int, timeout: float, label: str) -> dict:
    record = {"queue": adapter.name, "db": provider.kind, "n": n, "label": label}
    try:
        with provider.fresh(f"{adapter.name}_{label}") as url:
            started = time.perf_counter()
            adapter.setup(url)
            adapter.enqueue(n)
            record["setup_enqueue_s"] = round(time.perf_counter() - started, 3)
            result = adapter.drain(n, timeout=timeout)
    except AdapterError as exc:
        record["error"] = str(exc)
        return record
    record.update(
        seconds=result.seconds,
        jobs_per_s=result.jobs_per_s,
        steady_jobs_per_s=result.steady_jobs_per_s,
        first_done_s=result.first_done_s,
        failed=result.failed,
        worker_tracebacks=result.worker_tracebacks,
    )
    if result.failed:
        record["error"] = f"{result.failed} jobs failed"
    return record


def measure_latency(adapter: Adapter, provider, samples: int) -> dict:
    item = {"queue": adapter.name, "db": provider.kind}
    try:
        with provider.fresh(f"{adapter.name}_latency") as url:
            adapter.setup(url)
            item["samples"] = adapter.latency(samples)
    except AdapterError as exc:
        item["error"] = str(exc)
    return item


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.jobs or (FULL_N if args.full else QUICK_N)
    timeout = args.timeout or 60 + n / 5
    wanted_dbs = {d.strip() for d in args.db.split(",") if d.strip()}
    started_at = datetime.datetime.now(datetime.UTC)

    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        log(
            f"warning: load average {load_before[0]:.2f} before starting: other work on this machine "
            "will skew the figures"
        )
    adapters = build_adapters(args)
    queues: dict[str, dict] = {}
    ready: list[Adapter] = []
    # Building venvs is mostly waiting on pip downloads: do them side by side.
    with ThreadPoolExecutor(max_workers=max(1, len(adapters))) as pool:
        futures = [(adapter, pool.submit(adapter.prepare)) for adapter in adapters]
    for adapter, future in futures:
        try:
            queues[adapter.name] = future.result()
            ready.append(adapter)
        except (RuntimeError, OSError) as exc:  # a broken venv must not stop the other peers
            log(f"{adapter.name}: preparation failed, skipped: {exc}")
            queues[adapter.name] = {"error": str(exc)}

    providers = open_databases({db for a in ready for db in a.databases} & wanted_dbs, args.sqlite_dir)
    runs: list[dict] = []
    latencies: list[dict] = []
    try:
        plan = [(a, providers[db]) for a in ready for db in a.databases if db in providers]
        for rep in range(1, args.reps + 1):
            for adapter, provider in plan:
                jobs = jobs_for(adapter, n, args.no_cap)
                record = run_once(adapter, provider, jobs, timeout, f"rep{rep}")
                record["rep"] = rep
                runs.append(record)
                outcome = (
                    f"ERROR {record['error'].splitlines()[0]}"
                    if record.get("error")
                    else f"{record['jobs_per_s']:.1f} jobs/s ({record['seconds']:.2f}s)"
                )
                log(f"rep {rep}/{args.reps}  {adapter.name:<24} {provider.kind:<8} N={jobs:<6} {outcome}")
        if args.latency:
            for adapter, provider in plan:
                item = measure_latency(adapter, provider, args.latency)
                latencies.append(item)
                log(
                    f"latency {adapter.name:<24} {provider.kind:<8} "
                    + (f"ERROR {item['error'].splitlines()[0]}" if item.get("error") else "done")
                )
        databases = {kind: provider.describe() for kind, provider in providers.items()}
    finally:
        for provider in providers.values():
            provider.close()

    summary = report.summarize(runs)
    latency_summary = report.summarize_latency(latencies)
    log("")
    log(report.format_table(summary))
    if latency_summary:
        log("")
        log(report.format_latency_table(latency_summary))
    report.write_json(
        args.out,
        {
            "workload": "W2: drain N no-op jobs with one worker process",
            "started_at": started_at.isoformat(timespec="seconds"),
            "n": n,
            "reps": args.reps,
            "drain_timeout_s": timeout,
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "harness_python": sys.version.split()[0],
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            },
            "databases": databases,
            "queues": queues,
            "summary": summary,
            "latency": latency_summary,
            "runs": runs,
            "latency_samples": latencies,
        },
    )
    log(f"\nwrote {args.out}")
    return 1 if any(r.get("error") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
