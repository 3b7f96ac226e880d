"""The fault injector: seeded, overlapping faults against the workers and the database.

Every couple of seconds one fault starts; most last longer than ``stale_after``, so
several are under way at once, and database restarts run beside the others:

- ``kill``: SIGKILL a worker; a new one starts on its host a few seconds later.
- ``term``: SIGTERM a worker that is running a job (shutdown grace, then hand-back).
- ``stop``: SIGSTOP a worker past ``stale_after``, then SIGCONT: a zombie that wakes up
  holding attempts that others have taken over.
- ``partition``: cut a host off the database past ``stale_after`` (now and then past the
  TCP keepalive timeouts), its worker running on, then heal it.
- ``restart-fast`` / ``restart-immediate``: restart PostgreSQL in that shutdown mode.
- ``start``: a new worker joins (on a host whose worker died), while others die.
- ``kill-child``: SIGKILL one child process of a ``--processes`` host: its parent takes
  its jobs back at once and starts another; the host's worker is not down.

On a ``--processes`` host the other faults hit the whole worker: SIGKILL, SIGSTOP and
SIGCONT go to its process group (the parent and its children), SIGTERM to the parent,
which passes it on.

A fault targets only a healthy worker (alive, running, reachable, and heartbeating again
since its last stop or partition ended, so that a worker slow to recover is seen, not
killed), and never the last ``MIN_HEALTHY`` of them, so the queue always has someone to
recover with.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import signal
import threading
import time

from .database import Database
from .hosts import Cluster, WorkerRun

logger = logging.getLogger("chaos")

WEIGHTS = {"kill": 3, "term": 3, "stop": 2, "partition": 3, "restart-fast": 1, "restart-immediate": 1,
           "kill-child": 2}
BETWEEN_FAULTS = (1.0, 4.0)  # seconds from one fault's start to the next
STOP_BEYOND_STALE = (1.0, 6.0)  # a stopped worker sleeps stale_after + this
PARTITION_BEYOND_STALE = (1.0, 10.0)
LONG_PARTITION = (100.0, 150.0)  # past the server's FIN retries (~100 s): its side of the connection is gone
LONG_PARTITION_SHARE = 0.15
MID_TRANSACTION_SHARE = 0.5  # of stops and partitions: aimed at a worker holding row locks
CATCH_FOR = 2.0  # seconds spent trying to catch such a moment
RESTART_GAP = 10.0  # seconds between one database restart's end and the next one's start
NEW_WORKER_AFTER = (0.5, 4.0)  # seconds after a worker died until a new one starts on its host
MIN_HEALTHY = 2


class Injector:
    def __init__(self, cluster: Cluster, database: Database, *, seed: int, stale_after: float, partitions: bool,
                 running_jobs, holds_locks, beat_since):
        self.cluster = cluster
        self.database = database
        self.rng = random.Random(f"faults-{seed}")
        self.stale_after = stale_after
        self.weights = {k: w for k, w in WEIGHTS.items() if partitions or k != "partition"}
        self.running_jobs = running_jobs  # () -> PIDs of workers holding a RUNNING job (a child's: its parent's)
        self.holds_locks = holds_locks  # label -> whether that worker is inside a transaction holding job rows
        self.beat_since = beat_since  # (pid, time) -> whether that worker heartbeated since
        self.faults: list[dict] = []
        self._timers: list = []  # heap of (when, n, action)
        self._order = itertools.count()
        self._restart: threading.Thread | None = None
        self._last_restart_end = 0.0
        self._handled_exits: set[int] = set()

    # -- the loop --------------------------------------------------------------------------

    def run(self, seconds: float, tick=None) -> None:
        end = time.monotonic() + seconds
        next_fault = time.monotonic() + self.rng.uniform(*BETWEEN_FAULTS)
        while time.monotonic() < end:
            self._run_due_timers()
            self._notice_exits()
            if time.monotonic() >= next_fault:
                self._inject(self._choose())
                next_fault = time.monotonic() + self.rng.uniform(*BETWEEN_FAULTS)
            if tick:
                tick()
            time.sleep(0.05)

    def settle(self) -> None:
        """End every fault: the database up, partitions healed, stopped workers continued,
        and a worker on every host. Pending timers run now."""
        if self._restart:
            self._restart.join()
        while self._timers:
            _, _, action = heapq.heappop(self._timers)
            action()
        self._notice_exits(restart=False)
        for host in self.cluster.hosts:
            if self.cluster.on(host) is None:
                self._start(host)

    def _at(self, delay: float, action) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._order), action))

    def _run_due_timers(self) -> None:
        while self._timers and self._timers[0][0] <= time.monotonic():
            _, _, action = heapq.heappop(self._timers)
            action()

    def _notice_exits(self, restart: bool = True) -> None:
        """A worker that exited gets a successor; one that exited unasked is a crash."""
        for run in self.cluster.runs:
            if run.alive or run.seq in self._handled_exits:
                continue
            self._handled_exits.add(run.seq)
            if not run.terminated:
                self._record("crash", run, end=run.ended, returncode=run.process.returncode)
                logger.warning("worker %s exited by itself, rc=%s", run.label, run.process.returncode)
            if restart:
                self._at(self.rng.uniform(*NEW_WORKER_AFTER), lambda host=run.host: self._start_if_empty(host))

    # -- choosing and injecting ------------------------------------------------------------

    def healthy(self) -> list[WorkerRun]:
        return [r for r in self.cluster.runs
                if r.alive and not r.stopped and not r.terminated and not r.host.partitioned
                and (r.outage_ended is None or self.beat_since(r.process.pid, r.outage_ended))]

    def _choose(self) -> str:
        return self.rng.choices(list(self.weights), weights=list(self.weights.values()))[0]

    def _inject(self, kind: str) -> None:
        if kind.startswith("restart-"):
            self._restart_database(kind.removeprefix("restart-"))
            return
        healthy = self.healthy()
        if len(healthy) <= MIN_HEALTHY:
            return
        if kind == "kill-child":
            healthy = [r for r in healthy if r.supervised and r.children()]
            if not healthy:
                return
        if kind == "term":  # mid-job: a worker holding a job, when there is one
            busy = self.running_jobs()
            healthy = [r for r in healthy if r.process.pid in busy] or healthy
        run = self.rng.choice(healthy)
        getattr(self, "_" + kind.replace("-", "_"))(run)

    def _record(self, kind: str, run: WorkerRun | None, *, start: float | None = None, end: float | None = None,
                **details) -> dict:
        fault = {"kind": kind, "target": run.label if run else "database", "pid": run.process.pid if run else None,
                 "start": start or time.time(), "end": end, **details}
        self.faults.append(fault)
        return fault

    def _kill(self, run: WorkerRun) -> None:
        run.terminated = True
        run.signal(signal.SIGKILL)
        self._record("kill", run)

    def _kill_child(self, run: WorkerRun) -> None:
        """Not a crash of the host: its parent must replace the child and take its jobs back."""
        child = self.rng.choice(sorted(run.children()))
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._record("kill-child", run, end=time.time(), child_pid=child)

    def _term(self, run: WorkerRun) -> None:
        run.terminated = True
        run.signal(signal.SIGTERM)
        self._record("term", run)

    def _freeze(self, run: WorkerRun, freeze, thaw) -> bool:
        """``freeze()``, half the time at a moment when ``run`` holds job rows locked (True
        when that was caught): freeze, look, thaw and try again, for up to CATCH_FOR s."""
        if self.rng.random() >= MID_TRANSACTION_SHARE:
            freeze()
            return False
        deadline = time.monotonic() + CATCH_FOR
        while True:
            freeze()
            if self.holds_locks(run.label):
                return True
            if time.monotonic() > deadline:
                return False
            thaw()
            time.sleep(self.rng.uniform(0, 0.02))

    def _stop(self, run: WorkerRun) -> None:
        run.stopped = True
        began = time.time()  # the fishing for a moment inside a transaction is part of the fault
        caught = self._freeze(run, lambda: run.signal(signal.SIGSTOP), lambda: run.signal(signal.SIGCONT))
        fault = self._record("stop", run, start=began, mid_transaction=caught)

        def resume():
            run.signal(signal.SIGCONT)
            run.stopped = False
            fault["end"] = run.outage_ended = time.time()

        self._at(self.stale_after + self.rng.uniform(*STOP_BEYOND_STALE), resume)

    def _partition(self, run: WorkerRun) -> None:
        host = run.host
        long = self.rng.random() < LONG_PARTITION_SHARE
        duration = self.rng.uniform(*LONG_PARTITION) if long else self.stale_after + self.rng.uniform(
            *PARTITION_BEYOND_STALE)
        began = time.time()
        caught = self._freeze(run, host.partition, host.heal)
        fault = self._record("partition", run, start=began, long=long, mid_transaction=caught)

        def heal():
            host.heal()
            fault["end"] = run.outage_ended = time.time()

        self._at(duration, heal)

    def _restart_database(self, mode: str) -> None:
        if (self._restart and self._restart.is_alive()) or time.monotonic() - self._last_restart_end < RESTART_GAP:
            return
        fault = self._record(f"restart-{mode}", None)

        def restart():
            timings = self.database.restart(mode)
            if timings:
                fault.update(end=timings["up"], down=timings["down"])
            self._last_restart_end = time.monotonic()

        self._restart = threading.Thread(target=restart, name="chaos-restart", daemon=True)
        self._restart.start()

    def _start(self, host) -> WorkerRun:
        run = self.cluster.start(host)
        return run

    def _start_if_empty(self, host) -> None:
        if self.cluster.on(host) is None:
            run = self._start(host)
            self._record("start", run, end=run.started)
