"""``make bench``: our queue against the peers, side by side, on SQLite, PostgreSQL and MariaDB.

Usage (from the repository root; ``make bench BENCH_ARGS=...`` passes the options):
    python -m bench                 # the default run (~13 min on 2 cores, venvs included; ~5 more with MariaDB)
    python -m bench --quick         # a smoke run: small N, one repetition (~4 min)
    python -m bench --full          # N=10000 for every peer too (about an hour)
    python -m bench --workloads w2,w3 --peers procrastinate --db postgres
    python -m bench --workloads w9 --db sqlite,postgres,mariadb

Workloads (bench/README.md says how each is measured):
    W1  enqueue throughput: one by one (autocommit), N in one transaction, bulk
    W2  drain N no-op jobs with one worker process (ours also with --concurrency 2)
    W3  enqueue-to-start latency p50/p95 against an idle worker
    W4  two worker processes of ours draining together: duplicates and misses
    W5  our claim cost with 0 and with 1,000,000 finished rows in the table
    W6  our claim cost with 100,000 READY jobs of which 99% are held back by their
        concurrency key (10, 100 and 1,000 keys at their limit)
    W7  what one of our workers costs: RSS idle and under load; per job CPU ms, commits
        and round trips (statements, counted by pg_stat_statements on PostgreSQL)
    W8  1-8 of our worker processes, separate or under one --processes parent, on the
        server databases: no-op and 50 ms jobs; throughput, duplicates, connections
    W9  what batches and dependencies cost (ours): (a) 100,000 jobs in one bulk enqueue inside
        a batch() block vs without; (b) one worker draining N plain jobs, N members of one
        batch, and the last N members of a batch 10x larger; (c) the last member's end to the
        callback's start, idle worker; (d) a chain of 1,000 enqueue_after links, one worker

MariaDB: a throwaway server (tests/mariadbserver.py, default durability) for ours and every
peer but procrastinate (PostgreSQL only). The default run (no --db) takes it for W1-W5, ours
and django-tasks-db, when its server binaries are on the machine, and says so when they are
not; --db ...,mariadb runs every workload and peer asked for there.

Every queue runs in its own interpreter (ours: the project's venv; the peers:
venvs under .bench/venvs built on first use). PostgreSQL is a throwaway server
at default durability; SQLite files live on the checkout's disk. Every run
gets an empty database; repetitions are interleaved (rep 1 of everything,
then rep 2 in reverse order, ...) so that drift of the machine hits all alike.
Results: tables of medians with our ratio to each peer on stdout (also
.bench/results.md), .bench/results.json, and the chart docs/bench.png.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make "bench" importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import report
from bench.harness.adapter import AdapterError, DriverAdapter
from bench.harness.databases import MariadbDatabases, PostgresDatabases, SqliteDatabases, mariadb_binaries
from bench.harness.ours import make_ours
from bench.harness.peers import PEERS, make_adapters
from bench.harness.progress import Progress
from bench.harness.venvs import ensure_venv

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / ".bench"
CHART_DIR = Path(__file__).resolve().parent / "chart"
WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9")
# What the default run (no --db) measures on MariaDB: issue 20's figures, beside django-tasks-db.
# W6-W9 there, and django-q2 and django-background-tasks there, take `--db ...,mariadb`.
DEFAULT_MARIADB_WORKLOADS = ("w1", "w2", "w3", "w4", "w5")
DEFAULT_MARIADB_PEERS = ("django-tasks-db",)

# Rough rates (jobs/s) on a 2-core machine; only for the progress bar's estimate.
RATE_HINTS = {
    "ours": {"sqlite": 2500, "postgres": 1100, "mariadb": 1000},
    "django-background-tasks": {"sqlite": 14, "postgres": 14, "mariadb": 11},
    "django-tasks-db": {"sqlite": 150, "postgres": 55, "mariadb": 55},
    "django-q2": {"sqlite": 50, "postgres": 22, "mariadb": 45},
    "procrastinate": {"postgres": 110},
}


@dataclass(frozen=True)
class Profile:
    """How big each workload is. The peers' drains are capped per database so the run fits its budget:
    their rates do not depend on N (they are set by per-job commits, sleeps and polls)."""

    name: str
    ours_n: int
    peer_n: dict[str, dict[str, int]]
    reps: int
    latency_ours: int
    latency_peers: dict[str, int]
    w4_n: int
    w5_rows: int
    w5_claims: int
    w5_drain_n: int
    w6_jobs: int = 100_000
    w6_keys: tuple[int, ...] = (10, 100, 1000)
    w6_claims: int = 300
    w8_processes: tuple[int, ...] = (1, 2, 4, 8)
    w8_noop_n: int = 4000  # no-op jobs per W8 run
    w8_io_n: int = 400  # 50 ms jobs per W8 run (20 s for one process of one thread)
    w9_enqueue_n: int = 100_000  # (a) jobs in the bulk enqueue, with and without a batch
    w9_drain_n: int = 5000  # (b) jobs drained per run (--full: 10,000)
    w9_large_batch: int = 100_000  # (b) members of the large batch (w9_drain_n of them drained)
    w9_callbacks: int = 10  # (c) batches timed (--full: 20)
    w9_members: int = 10  # (c) members per batch
    w9_chain: int = 1000  # (d) links


PROFILES = {
    "quick": Profile(
        "quick", ours_n=2000, reps=1, latency_ours=10, w4_n=2000, w5_rows=100_000, w5_claims=200, w5_drain_n=1000,
        w6_keys=(100,), w6_claims=100, w8_processes=(1, 4), w8_noop_n=1000, w8_io_n=100,
        w9_enqueue_n=20_000, w9_drain_n=2000, w9_large_batch=20_000, w9_callbacks=5, w9_chain=200,
        peer_n={"django-background-tasks": {"sqlite": 60, "postgres": 60, "mariadb": 60},
                "django-tasks-db": {"sqlite": 400, "postgres": 200, "mariadb": 200},
                "django-q2": {"sqlite": 200, "postgres": 100, "mariadb": 100},
                "procrastinate": {"postgres": 400}},
        latency_peers={"django-background-tasks": 3, "django-tasks-db": 5, "django-q2": 5, "procrastinate": 5},
    ),
    "default": Profile(
        "default", ours_n=10000, reps=3, latency_ours=50, w4_n=10000, w5_rows=1_000_000, w5_claims=1000,
        w5_drain_n=5000,
        peer_n={"django-background-tasks": {"sqlite": 250, "postgres": 250, "mariadb": 250},
                "django-tasks-db": {"sqlite": 2000, "postgres": 1000, "mariadb": 1000},
                "django-q2": {"sqlite": 800, "postgres": 400, "mariadb": 400},
                "procrastinate": {"postgres": 2000}},
        latency_peers={"django-background-tasks": 10, "django-tasks-db": 20, "django-q2": 30, "procrastinate": 30},
    ),
    "full": Profile(
        "full", ours_n=10000, reps=3, latency_ours=50, w4_n=10000, w5_rows=1_000_000, w5_claims=2000,
        w5_drain_n=10000, w9_drain_n=10_000, w9_callbacks=20,
        peer_n={"django-background-tasks": {"sqlite": 1000, "postgres": 1000, "mariadb": 1000},
                "django-tasks-db": {"sqlite": 10000, "postgres": 10000, "mariadb": 10000},
                "django-q2": {"sqlite": 10000, "postgres": 10000, "mariadb": 10000},
                "procrastinate": {"postgres": 10000}},
        latency_peers={"django-background-tasks": 30, "django-tasks-db": 50, "django-q2": 50, "procrastinate": 50},
    ),
}


def log(message: str = "") -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small N, one repetition, 100k rows for W5 (smoke test)")
    size.add_argument("--full", action="store_true", help="N=10000 for the peers too (only django-background-tasks "
                      "stays capped, at 1000); about an hour")
    parser.add_argument("-n", "--jobs", type=int, help="jobs per drain for ours (peers: at most this many)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; --quick: 1)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of w1..w8")
    parser.add_argument("--peers", help="comma-separated subset of: " + ", ".join(p.name for p in PEERS)
                        + " ('none' for ours alone)")
    parser.add_argument("--db", help="comma-separated: sqlite, postgres, mariadb (each a throwaway server but "
                        "SQLite). Default: sqlite,postgres, and mariadb for W1-W5 when its server binaries are on "
                        "this machine")
    parser.add_argument("--no-cap", action="store_true", help="give the peers the same N as ours (slow)")
    parser.add_argument("--sqlite-dir", type=Path, default=BENCH_DIR / "tmp",
                        help="where the SQLite files go (default .bench/tmp: the checkout's disk, not tmpfs)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.json")
    parser.add_argument("--chart", type=Path, default=REPO_ROOT / "docs" / "bench.png",
                        help="where the PNG goes (default docs/bench.png)")
    parser.add_argument("--no-chart", action="store_true", help="skip the chart (and its venv)")
    parser.add_argument("--venvs", type=Path, default=BENCH_DIR / "venvs")
    parser.add_argument("--from-json", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: print the tables and draw the chart of an earlier run")
    parser.add_argument("--ours-python", help="interpreter with our requirements (default: this one, else .venv)")
    args = parser.parse_args(argv)
    args.workloads = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    return args


# -- the plan: steps with a guessed cost, run in order ----------------------------------------------

@dataclass
class Step:
    label: str
    cost: float  # guessed seconds, for the progress bar
    run: Callable[[], None]


@dataclass
class Results:
    w1: list[dict] = field(default_factory=list)
    w2: list[dict] = field(default_factory=list)
    w3: list[dict] = field(default_factory=list)
    w4: list[dict] = field(default_factory=list)
    w5: list[dict] = field(default_factory=list)
    w5_fill: list[dict] = field(default_factory=list)
    w6: list[dict] = field(default_factory=list)
    w7: list[dict] = field(default_factory=list)
    w8: list[dict] = field(default_factory=list)
    w9: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, profile: Profile, providers: dict, ours: DriverAdapter | None,
                 peers: list[DriverAdapter], only: dict[str, tuple[str, ...]] | None = None,
                 only_peers: dict[str, tuple[str, ...]] | None = None):
        self.args = args
        # database -> the only workloads run on it, and the only peers (MariaDB in the default run)
        self.only = only or {}
        self.only_peers = only_peers or {}
        self.profile = profile
        self.providers = providers
        self.ours = ours
        self.peers = peers
        self.results = Results()
        self.progress: Progress | None = None
        self.stack = contextlib.ExitStack()  # databases that outlive one step (W5)

    # -- sizes ---------------------------------------------------------------------------------

    def jobs_for(self, adapter: DriverAdapter, db: str) -> int:
        if adapter is self.ours:
            return self.args.jobs or self.profile.ours_n
        n = self.args.jobs or self.profile.ours_n
        if self.args.no_cap:
            return n
        return min(n, self.profile.peer_n.get(adapter.name, {}).get(db, n))

    def capped(self, adapter: DriverAdapter, db: str) -> bool:
        return adapter is not self.ours and self.jobs_for(adapter, db) < (self.args.jobs or self.profile.ours_n)

    @staticmethod
    def w1_sizes(adapter: DriverAdapter, n: int, ours: bool) -> tuple[int, int, int]:
        """How the N jobs of a W2 run are enqueued, each way timed (W1): one by one, one transaction, bulk."""
        if ours:
            each, tx = n // 10, n // 5
            return each, tx, n - each - tx
        each = max(1, n // 5)
        if adapter.name == "procrastinate":  # has a bulk API (batch_defer)
            tx = (n - each) // 2
            return each, tx, n - each - tx
        return each, n - each, 0

    def cost(self, adapter: DriverAdapter, db: str, n: int) -> float:
        rate = RATE_HINTS.get(adapter.name, {}).get(db, 100)
        return 4 + n / rate

    def databases_for(self, workload: str) -> list[str]:
        return [db for db in self.providers if workload in self.only.get(db, WORKLOADS)]

    # -- steps ---------------------------------------------------------------------------------

    def plan(self) -> list[Step]:
        steps: list[Step] = []
        work = self.args.workloads
        systems = ([self.ours] if self.ours else []) + self.peers
        pairs = [(a, db) for a in systems for db in a.databases if db in self.providers
                 and (a is self.ours or a.name in self.only_peers.get(db, (a.name,)))]
        reps = self.args.reps or self.profile.reps
        if "w1" in work or "w2" in work:
            for rep in range(1, reps + 1):
                order = pairs if rep % 2 else list(reversed(pairs))
                for adapter, db in order:
                    n = self.jobs_for(adapter, db)
                    each, tx, _ = self.w1_sizes(adapter, n, adapter is self.ours)
                    enqueue_cost = (each + tx) / (600 if db == "postgres" else 1500)
                    steps.append(Step(f"W1+W2 {adapter.name} {db} rep {rep}/{reps}",
                                      self.cost(adapter, db, n) + enqueue_cost + 2,
                                      lambda a=adapter, d=db, n=n, r=rep: self.w1_w2(a, d, n, r)))
                    if adapter is self.ours and "w2" in work:
                        steps.append(Step(f"W2 ours --concurrency 2 {db} rep {rep}/{reps}",
                                          self.cost(adapter, db, n),
                                          lambda d=db, n=n, r=rep: self.w2_variant(d, n, r, "c2")))
                        steps.append(Step(f"W2 ours with Django's default settings {db} rep {rep}/{reps}",
                                          self.cost(adapter, db, n),
                                          lambda d=db, n=n, r=rep: self.w2_variant(d, n, r, "defaults")))
                    if adapter is self.ours and "w4" in work:
                        steps.append(Step(f"W4 ours 2 processes {db} rep {rep}/{reps}",
                                          self.cost(adapter, db, self.profile.w4_n) * 0.8,
                                          lambda d=db, r=rep: self.w4(d, r)))
        elif "w4" in work and self.ours:
            for rep in range(1, reps + 1):
                for db in self.providers:
                    steps.append(Step(f"W4 ours 2 processes {db} rep {rep}/{reps}",
                                      self.cost(self.ours, db, self.profile.w4_n), lambda d=db, r=rep: self.w4(d, r)))
        if "w3" in work:
            for adapter, db in pairs:
                samples = self.latency_samples(adapter)
                period = 5.0 if adapter.name == "django-background-tasks" else 1.0
                steps.append(Step(f"W3 latency {adapter.name} {db}", 5 + samples * (period / 2 + 0.08),
                                  lambda a=adapter, d=db, s=samples: self.w3(a, d, s)))
        if "w5" in work and self.ours:
            for db in self.providers:
                rows = self.profile.w5_rows
                steps.append(Step(f"W5 ours {db}: {rows:,} finished rows", 6 + rows / 50_000,
                                  lambda d=db: self.w5_fill(d)))
                for rep in range(1, reps + 1):
                    for state in ("empty", "filled"):
                        n = self.profile.w5_drain_n
                        steps.append(Step(f"W5 ours {db} {state} rep {rep}/{reps}",
                                          3 + self.profile.w5_claims * 0.002 + self.cost(self.ours, db, n),
                                          lambda d=db, s=state, r=rep: self.w5(d, s, r)))
        if "w6" in work and self.ours:
            for db in self.databases_for("w6"):
                for keys in self.profile.w6_keys:
                    steps.append(Step(f"W6 ours {db}: {self.profile.w6_jobs:,} READY, {keys:,} keys at their limit",
                                      10 + self.profile.w6_jobs / 20_000 + reps * self.profile.w6_claims * 0.01,
                                      lambda d=db, k=keys: self.w6(d, k, reps)))
        if "w7" in work and self.ours:
            for rep in range(1, reps + 1):
                for db in self.databases_for("w7"):
                    n = self.profile.ours_n
                    steps.append(Step(f"W7 ours {db}: a worker's costs, rep {rep}/{reps}",
                                      4 + self.cost(self.ours, db, n), lambda d=db, r=rep, n=n: self.w7(d, r, n)))
        if "w8" in work and self.ours:
            for db in self.databases_for("w8"):
                if db == "sqlite":  # one writer at a time: scaling out is the server databases' question
                    continue
                for kind, n in (("noop", self.profile.w8_noop_n), ("io", self.profile.w8_io_n)):
                    for processes in self.profile.w8_processes:
                        for mode in ("separate", "supervised"):
                            guess = 4 + (n / (20 * processes) if kind == "io" else n / 1500)
                            steps.append(Step(f"W8 ours {db}: {processes} x {mode}, {n:,} {kind} jobs", guess,
                                              lambda d=db, k=kind, n=n, p=processes, m=mode: self.w8(d, k, n, p, m)))
        if "w9" in work and self.ours:
            steps += self.w9_steps(reps)
        return steps

    def w9_steps(self, reps: int) -> list[Step]:
        """W9, per database: (a) and (b) per repetition, the order of their runs reversed every other
        repetition; then (c) once, and (d) per repetition."""
        p, steps = self.profile, []
        for db in self.databases_for("w9"):
            rate = RATE_HINTS["ours"].get(db, 1000)
            for rep in range(1, reps + 1):
                modes = (False, True) if rep % 2 else (True, False)
                steps.append(Step(f"W9a ours {db}: {p.w9_enqueue_n:,} jobs in bulk, with and without a batch, "
                                  f"rep {rep}/{reps}", 2 * (8 + p.w9_enqueue_n / 20_000),
                                  lambda d=db, r=rep, m=modes: self.w9_enqueue(d, r, m)))
                kinds = ("plain", "batch", "large") if rep % 2 else ("large", "batch", "plain")
                steps.append(Step(f"W9b ours {db}: {p.w9_drain_n:,} jobs drained: plain, one batch, in a batch of "
                                  f"{p.w9_large_batch:,}, rep {rep}/{reps}",
                                  8 + 3 * p.w9_drain_n / (rate / 2) + p.w9_large_batch / 20_000,
                                  lambda d=db, r=rep, k=kinds: self.w9_drain(d, r, k)))
                steps.append(Step(f"W9d ours {db}: a chain of {p.w9_chain:,} jobs, rep {rep}/{reps}",
                                  5 + p.w9_chain / 100, lambda d=db, r=rep: self.w9_chain(d, r)))
            steps.append(Step(f"W9c ours {db}: callback latency, {p.w9_callbacks} batches",
                              6 + p.w9_callbacks * 0.7, lambda d=db: self.w9_callback(d)))
        return steps

    def latency_samples(self, adapter: DriverAdapter) -> int:
        if adapter is self.ours:
            return self.profile.latency_ours
        return self.profile.latency_peers.get(adapter.name, 10)

    def run(self) -> Results:
        steps = self.plan()
        self.progress = Progress(sum(s.cost for s in steps))
        for adapter in ([self.ours] if self.ours else []) + self.peers:
            adapter.on_progress = self.progress.update
        try:
            for step in steps:
                self.progress.start(step.label, step.cost)
                try:
                    step.run()
                except AdapterError as exc:
                    message = f"{step.label}: ERROR {str(exc).splitlines()[0]}"
                    self.results.errors.append(f"{step.label}: {exc}")
                    self.progress.note(message)
                self.progress.finish()
        finally:
            self.stack.close()
            self.progress.close()
        return self.results

    def say(self, message: str) -> None:
        if self.progress:
            self.progress.note(message)
        else:
            log(message)

    # -- workloads -------------------------------------------------------------------------------

    def w1_w2(self, adapter: DriverAdapter, db: str, n: int, rep: int) -> None:
        """W1 on the way to W2: fill a fresh database three ways (timed), then drain it with one worker."""
        provider = self.providers[db]
        base = {"queue": adapter.name, "db": db, "rep": rep}
        each, tx, bulk = self.w1_sizes(adapter, n, adapter is self.ours)
        with provider.fresh(f"{adapter.name}_w2_r{rep}") as url:
            adapter.setup(url)
            try:
                modes = adapter.enqueue_modes(each, tx, bulk)
            except AdapterError as exc:
                self.results.w1.append({**base, "error": str(exc)})
                self.results.w2.append({**base, "variant": "", "n": n, "capped": self.capped(adapter, db),
                                        "error": "enqueue failed"})
                raise
            for mode in ("each", "tx", "bulk"):
                if modes.get(mode):
                    self.results.w1.append({**base, "mode": mode, **modes[mode]})
            self.drain_record(adapter, db, n, rep, variant="")

    def w2_variant(self, db: str, n: int, rep: int, variant: str) -> None:
        with self.providers[db].fresh(f"ours_{variant}_r{rep}") as url:
            self.ours.setup(url)
            self.ours.enqueue(n)
            self.drain_record(self.ours, db, n, rep, variant=variant)

    def drain_record(self, adapter: DriverAdapter, db: str, n: int, rep: int, variant: str) -> None:
        record = {"queue": adapter.name, "db": db, "rep": rep, "variant": variant, "n": n,
                  "capped": self.capped(adapter, db)}
        try:
            result = adapter.drain(n, timeout=60 + n / 5, variant=variant or None)
        except AdapterError as exc:
            record["error"] = str(exc)
            self.results.w2.append(record)
            raise
        record.update(seconds=result.seconds, jobs_per_s=result.jobs_per_s,
                      steady_jobs_per_s=result.steady_jobs_per_s, first_done_s=result.first_done_s,
                      failed=result.failed, worker_tracebacks=result.worker_tracebacks)
        if result.failed:
            record["error"] = f"{result.failed} jobs failed"
        self.results.w2.append(record)
        label = adapter.name + (f" ({variant})" if variant else "")
        self.say(f"rep {rep}  W2 {label:<26} {db:<8} N={n:<6} {result.jobs_per_s:9,.1f} jobs/s "
                 f"({result.seconds:.2f} s)")

    def w4(self, db: str, rep: int) -> None:
        n = self.profile.w4_n
        record = {"db": db, "rep": rep, "n": n, "processes": 2}
        with self.providers[db].fresh(f"ours_w4_r{rep}") as url:
            self.ours.setup(url)
            try:
                result = self.ours.dupcheck(n, timeout=60 + n / 5, processes=2)
            except AdapterError as exc:
                self.results.w4.append({**record, "error": str(exc)})
                raise
        record.update(seconds=result.seconds, jobs_per_s=result.jobs_per_s, failed=result.failed,
                      **{k: result.extra.get(k) for k in ("duplicates", "misses", "unexpected", "statuses")})
        self.results.w4.append(record)
        self.say(f"rep {rep}  W4 ours 2 processes         {db:<8} N={n:<6} {result.jobs_per_s:9,.1f} jobs/s "
                 f"duplicates={record['duplicates']} misses={record['misses']}")

    def w3(self, adapter: DriverAdapter, db: str, samples: int) -> None:
        item = {"queue": adapter.name, "db": db}
        with self.providers[db].fresh(f"{adapter.name}_w3") as url:
            adapter.setup(url)
            try:
                item["samples"] = adapter.latency(samples)
            except AdapterError as exc:
                item["error"] = str(exc)
                self.results.w3.append(item)
                raise
        self.results.w3.append(item)
        ordered = sorted(item["samples"])
        self.say(f"W3 {adapter.name:<26} {db:<8} p50 {report.percentile(ordered, 50) * 1000:8.1f} ms  "
                 f"p95 {report.percentile(ordered, 95) * 1000:8.1f} ms  ({len(ordered)} samples)")

    def w5_fill(self, db: str) -> None:
        """Two databases for the whole of W5: an empty one and one with the finished rows."""
        provider = self.providers[db]
        urls = {}
        for state in ("empty", "filled"):
            urls[state] = self.stack.enter_context(provider.fresh(f"ours_w5_{state}"))
            self.ours.setup(urls[state])
        fill = self.ours.call("fill_finished", self.profile.w5_rows, timeout=1800)
        self.w5_urls = getattr(self, "w5_urls", {})
        self.w5_urls[db] = urls
        self.results.w5_fill.append({"db": db, **fill})
        self.say(f"W5 ours {db:<8} inserted {fill['rows']:,} finished rows in {fill['insert_s']:.1f} s")

    def w5(self, db: str, state: str, rep: int) -> None:
        urls = getattr(self, "w5_urls", {}).get(db)
        if not urls:
            raise AdapterError(f"W5 {db}: no databases (the fill step failed)")
        self.ours.use(urls[state])
        cost = self.ours.call("claim_cost", self.profile.w5_claims)
        n = self.profile.w5_drain_n
        self.ours.enqueue(n)
        drained = self.ours.drain(n, timeout=60 + n / 5)
        record = {"db": db, "state": state, "rep": rep, "rows": self.profile.w5_rows if state == "filled" else 0,
                  "claim_median_s": cost["median_s"], "claim_p95_s": cost["p95_s"], "claims": cost["samples"],
                  "plan": cost["plan"], "drain_n": n, "drain_jobs_per_s": drained.jobs_per_s,
                  "drain_steady_jobs_per_s": drained.steady_jobs_per_s}
        self.results.w5.append(record)
        self.say(f"rep {rep}  W5 ours {db:<8} {state:<6} claim {cost['median_s'] * 1e6:7.0f} us/job  "
                 f"drain {drained.jobs_per_s:8,.1f} jobs/s")

    def w6(self, db: str, keys: int, reps: int) -> None:
        """One database: the held-back jobs, then ``reps`` rounds of timed claims (each takes free
        jobs, and every 10th the next job of a key just freed)."""
        jobs_total, held_share = self.profile.w6_jobs, 0.99
        with self.providers[db].fresh(f"ours_w6_{keys}") as url:
            self.ours.setup(url)
            fill = self.ours.call("fill_held_back", jobs_total, keys, held_share, timeout=1800)
            for rep in range(1, reps + 1):
                cost = self.ours.call("held_back_claim_cost", self.profile.w6_claims)
                self.results.w6.append({"db": db, "rep": rep, "keys": keys, "ready": fill["ready"],
                                        "held_back": fill["held_back"], "fill_s": fill["insert_s"], **cost})
                self.say(f"rep {rep}  W6 ours {db:<8} {keys:>5,} keys  claim p50 {cost['median_s'] * 1000:6.2f} ms  "
                         f"p95 {cost['p95_s'] * 1000:6.2f} ms  (key freed: {cost['keyed_median_s'] * 1000:.2f} ms)")

    def w7(self, db: str, rep: int, n: int) -> None:
        with self.providers[db].fresh(f"ours_w7_{rep}") as url:
            self.ours.setup(url)
            cost = self.ours.call("worker_cost", n, timeout=600)
        self.results.w7.append({"db": db, "rep": rep, **cost})
        per_job = ", ".join(f"{cost[k]:.2f} {label}" for k, label in (
            ("commits_per_job", "commits"), ("round_trips_per_job", "round trips")) if cost[k] is not None)
        self.say(f"rep {rep}  W7 ours {db:<8} RSS idle {cost['rss_idle_mb']:.0f} MB, "
                 f"load {cost['rss_load_peak_mb']:.0f} MB; per job {cost['cpu_ms_per_job']:.3f} CPU ms"
                 f"{', ' + per_job if per_job else ''}")

    def w9_enqueue(self, db: str, rep: int, modes: tuple[bool, ...]) -> None:
        n = self.profile.w9_enqueue_n
        for batched in modes:
            with self.providers[db].fresh(f"ours_w9a_{'batch' if batched else 'plain'}_r{rep}") as url:
                self.ours.setup(url)
                out = self.ours.call("batch_enqueue_cost", n, batched, timeout=600)
            self.results.w9.append({"part": "enqueue", "db": db, "rep": rep, **out})
            self.say(f"rep {rep}  W9a ours {db:<8} {n:,} in bulk {'in a batch' if batched else 'no batch  '} "
                     f"{out['jobs_per_s']:9,.0f} jobs/s ({out['seconds']:.2f} s)")

    def w9_drain(self, db: str, rep: int, kinds: tuple[str, ...]) -> None:
        """(b) in one database per repetition: each run drains its own jobs (the earlier ones stay
        SUCCESSFUL in the table: W5 shows those cost the claim nothing)."""
        n, size = self.profile.w9_drain_n, self.profile.w9_large_batch
        with self.providers[db].fresh(f"ours_w9b_r{rep}") as url:
            self.ours.setup(url)
            for kind in kinds:
                out = self.ours.call("batch_drain", n, kind, size, timeout=600 + n / 10)
                self.results.w9.append({"part": "drain", "db": db, "rep": rep, **out})
                self.say(f"rep {rep}  W9b ours {db:<8} {kind:<5} (batch of {out['batch_size']:>7,}) "
                         f"{out['steady_jobs_per_s']:8,.0f} jobs/s steady, {out['us_per_job']:6.0f} µs per job")

    def w9_callback(self, db: str) -> None:
        p = self.profile
        with self.providers[db].fresh("ours_w9c") as url:
            self.ours.setup(url)
            out = self.ours.call("callback_latency", p.w9_callbacks, p.w9_members, timeout=120 + p.w9_callbacks * 5)
        self.results.w9.append({"part": "callback", "db": db, **out})
        ordered = sorted(out["samples"])
        self.say(f"W9c ours {db:<8} last member's end to callback start: p50 "
                 f"{report.percentile(ordered, 50) * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms "
                 f"({len(ordered)} batches)")

    def w9_chain(self, db: str, rep: int) -> None:
        n = self.profile.w9_chain
        with self.providers[db].fresh(f"ours_w9d_r{rep}") as url:
            self.ours.setup(url)
            out = self.ours.call("chain", n, timeout=600 + n)
        self.results.w9.append({"part": "chain", "db": db, "rep": rep, **out})
        self.say(f"rep {rep}  W9d ours {db:<8} chain of {n:,}: {out['links_per_s']:7,.0f} links/s "
                 f"(enqueue {out['enqueue_per_s']:,.0f} links/s)")

    def w8(self, db: str, kind: str, n: int, processes: int, mode: str) -> None:
        with self.providers[db].fresh(f"ours_w8_{kind}_{processes}_{mode}") as url:
            self.ours.setup(url)
            out = self.ours.call("scale_out", n, processes, mode, kind, timeout=120 + n)
        self.results.w8.append({"db": db, **out})
        parent = (f", parent {out['parent_rss_mb']:.0f} MB / {out['parent_cpu_ms']:.0f} CPU ms"
                  if out.get("parent_rss_mb") else "")
        self.say(f"W8 ours {db:<8} {processes} x {mode:<10} {kind:<4} {out['jobs_per_s']:9,.1f} jobs/s  "
                 f"duplicates={out['duplicates']} misses={out['misses']} connections={out['peak_connections']}"
                 f"{parent}")


# -- set-up and output -------------------------------------------------------------------------

def open_databases(kinds: set[str], sqlite_dir: Path) -> dict:
    providers = {}
    if "sqlite" in kinds:
        providers["sqlite"] = SqliteDatabases(sqlite_dir)
    if "postgres" in kinds:
        try:
            log("starting a throwaway PostgreSQL server (default durability)")
            providers["postgres"] = PostgresDatabases()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            log(f"PostgreSQL unavailable, skipping it: {exc}")
    if "mariadb" in kinds:
        try:
            log("starting a throwaway MariaDB server (default durability)")
            providers["mariadb"] = MariadbDatabases()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            log(f"MariaDB unavailable, skipping it: {exc}")
    return providers


def choose_databases(option: str | None):
    """The databases asked for (``--db``), or the default's: SQLite, PostgreSQL, and MariaDB (W1-W5,
    ours and django-tasks-db) when its server binaries are here (said when they are not). Returns
    the databases; per database the only workloads and the only peers run there; notes for the report."""
    if option is not None:
        return {d.strip() for d in option.split(",") if d.strip()}, {}, {}, []
    if mariadb_binaries() is None:
        return {"sqlite", "postgres"}, {}, {}, [
            "MariaDB skipped: no server binaries (mariadbd and mariadb-install-db, e.g. Debian's mariadb-server) "
            "on this machine"]
    return ({"sqlite", "postgres", "mariadb"}, {"mariadb": DEFAULT_MARIADB_WORKLOADS},
            {"mariadb": DEFAULT_MARIADB_PEERS}, [])


def machine_facts() -> dict:
    facts = {"platform": platform.platform(), "cpus": os.cpu_count(), "harness_python": sys.version.split()[0]}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        facts["memory_gb"] = round(mem_kb / 1024 / 1024, 1)
    return facts


def prepare(adapters: list[DriverAdapter], chart_venv: Path | None) -> tuple[dict, list[DriverAdapter], str | None]:
    """Build every venv side by side (mostly pip downloads); a broken one skips its queue, not the run."""
    queues: dict[str, dict] = {}
    ready: list[DriverAdapter] = []
    chart_python = None
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(adapters) + 1) as pool:
        futures = [(a, pool.submit(a.prepare)) for a in adapters]
        chart_future = None
        if chart_venv is not None:
            version = f"{sys.version_info[0]}.{sys.version_info[1]}"
            chart_future = pool.submit(ensure_venv, chart_venv, version, CHART_DIR / "requirements.txt", log)
    for adapter, future in futures:
        try:
            queues[adapter.name] = future.result()
            ready.append(adapter)
        except (RuntimeError, OSError, AdapterError) as exc:
            log(f"{adapter.name}: preparation failed, skipped: {exc}")
            queues[adapter.name] = {"error": str(exc)}
    if chart_future is not None:
        try:
            chart_python = chart_future.result().python
        except (RuntimeError, OSError) as exc:
            log(f"chart venv failed, no chart this time: {exc}")
    log(f"venvs ready in {time.perf_counter() - started:.1f} s")
    return queues, ready, chart_python


def draw_chart(chart_python: str, results_json: Path, png: Path) -> str | None:
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([chart_python, str(CHART_DIR / "draw.py"), str(results_json), str(png)],
                          capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode != 0:
        return (proc.stdout + proc.stderr).strip()[-2000:]
    return None


def publish(payload: dict, json_path: Path, chart_python: str | None, chart: Path) -> None:
    """The tables (stdout and results.md next to the JSON) and the chart."""
    text = report.markdown(payload)
    log("")
    log(text)
    json_path.with_suffix(".md").write_text(text + "\n")
    log(f"\nwrote {json_path} and {json_path.with_suffix('.md')}")
    if chart_python:
        problem = draw_chart(chart_python, json_path, chart)
        log(f"chart: {chart}" if problem is None else f"chart failed:\n{problem}")
    log(f"harness wall time: {payload['wall_s'] / 60:.1f} min")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:  # only redo the tables and the chart
        payload = json.loads(args.from_json.read_text())
        chart_python = None
        if not args.no_chart:
            version = f"{sys.version_info[0]}.{sys.version_info[1]}"
            chart_python = ensure_venv(args.venvs / "chart", version, CHART_DIR / "requirements.txt", log).python
        publish(payload, args.from_json, chart_python, args.chart)
        return 0
    wall_started = time.perf_counter()
    profile = PROFILES["quick" if args.quick else "full" if args.full else "default"]
    wanted_dbs, only, only_peers, notes = choose_databases(args.db)
    for note in notes:
        log(note)
    started_at = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    log(f"bench profile={profile.name}  workloads={','.join(args.workloads)}  load average "
        f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    if load_before[0] > 0.5:
        log(f"warning: load average {load_before[0]:.2f} before starting: other work on this machine "
            "will skew the figures")

    log_dir = BENCH_DIR / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    ours = make_ours(log_dir, python=args.ours_python)
    if args.peers and args.peers.strip() == "none":
        peers = []
    else:
        names = [n.strip() for n in args.peers.split(",")] if args.peers else None
        peers = make_adapters(names, venv_root=args.venvs, log_dir=log_dir, log=log)
    if not ({"w1", "w2", "w3"} & set(args.workloads)):
        peers = []  # W4 and W5 are ours alone
    queues, ready, chart_python = prepare([ours, *peers], None if args.no_chart else args.venvs / "chart")
    if ours not in ready:
        log("ours could not be prepared: nothing to compare against; stopping")
        return 2
    ready_peers = [a for a in ready if a is not ours]

    providers = open_databases({db for a in ready for db in a.databases} & wanted_dbs, args.sqlite_dir)
    notes += [f"{db} could not be started and was skipped (the reason is in the output above)"
              for db in sorted(({db for a in ready for db in a.databases} & wanted_dbs) - providers.keys())]
    try:
        bench = Bench(args, profile, providers, ours, ready_peers, only, only_peers)
        results = bench.run()
        databases = {kind: provider.describe() for kind, provider in providers.items()}
    finally:
        for provider in providers.values():
            provider.close()

    summary = report.summarize(results, profile, ours_name=ours.name)
    payload = {
        "title": "make bench: our queue against the peers",
        "profile": profile.name,
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_s": None,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sizes": {"ours_n": args.jobs or profile.ours_n, "reps": args.reps or profile.reps,
                  "peer_n": profile.peer_n if not args.no_cap else "same as ours", "w4_n": profile.w4_n,
                  "w5_rows": profile.w5_rows, "w5_claims": profile.w5_claims, "w5_drain_n": profile.w5_drain_n,
                  "w6_jobs": profile.w6_jobs, "w6_keys": list(profile.w6_keys), "w6_claims": profile.w6_claims,
                  "latency_ours": profile.latency_ours, "latency_peers": profile.latency_peers,
                  "w9": {"enqueue_n": profile.w9_enqueue_n, "drain_n": profile.w9_drain_n,
                         "large_batch": profile.w9_large_batch, "callbacks": profile.w9_callbacks,
                         "members": profile.w9_members, "chain": profile.w9_chain}},
        "machine": {**machine_facts(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "databases": databases,
        "queues": queues,
        "summary": summary,
        "errors": results.errors,
        "notes": notes + [f"{report.DB_LABEL.get(db, db)}: {', '.join(w.upper() for w in only[db])} only, "
                          f"ours and {', '.join(only_peers.get(db, ()))} (`--db` naming it runs the rest there too)"
                          for db in only if db in providers],
        "runs": {"w1": results.w1, "w2": results.w2, "w3": results.w3, "w4": results.w4, "w5": results.w5,
                 "w5_fill": results.w5_fill, "w6": results.w6, "w7": results.w7, "w8": results.w8,
                 "w9": results.w9},
    }
    payload["wall_s"] = round(time.perf_counter() - wall_started, 1)
    report.write_json(args.out, payload)  # first: a problem below must not lose the measurements
    publish(payload, args.out, None if args.no_chart else chart_python, args.chart)
    return 1 if results.errors else 0


def run_cli() -> int:
    """``main()`` for the command line: Ctrl-C ends the run without a traceback (the
    drivers stop their workers and the PostgreSQL server is removed on the way out)."""
    try:
        return main()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run_cli())
