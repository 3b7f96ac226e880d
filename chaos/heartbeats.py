"""Each worker's heartbeats as the harness sees them, and what they say about the worker.

A thread samples the ``WorkerProcess`` rows every second all run long. From those
samples: how long each worker took to heartbeat again once an outage of its own ended
(a partition healed, a SIGCONT, the database back), and whether a worker that nothing
excused ever went silent, which is what would let its jobs be taken back while it is
alive.

A ``--processes`` host's worker is its parent and children: the parent has no row, each
child has one naming the parent, and the parent beats for every running child. Their
beats count as the host's worker's, under the parent's PID (the PID the harness started);
a child the parent replaced is no silence of the host's.
"""

from __future__ import annotations

import threading
import time

from .database import retrying

# Seconds for a live worker to heartbeat again once an outage of its own ends: its dead
# connections noticed (TCP keepalive and user timeouts), then a reconnect (connect_timeout,
# and its backoff of at most 10 s).
RECOVERY_TIMEOUT = 60.0
AFTER_RESTART = 15.0  # seconds after a database restart when a worker may still be reconnecting


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
            rows = retrying(lambda: list(WorkerProcess.objects.values_list("pid", "parent", "heartbeat_at")),
                            attempts=1, default=[])
            for pid, parent, beat in rows:
                beats = self.by_pid.setdefault(int(parent.split(":")[1]) if parent else pid, [])
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
            if fault["pid"] is None or fault["kind"] == "kill-child":  # the parent and the other child beat on
                continue
            start, end = fault["start"], fault["end"]
            if fault["kind"] in ("kill", "term", "crash") or end is None:
                end = float("inf")
            else:
                end = self.first_after(fault["pid"], end) or float("inf")
            excused.setdefault(fault["pid"], []).append((start, end))
        outages = [(r["began"], r["up"] + AFTER_RESTART) for r in restarts]
        silent = []
        for run in cluster.runs:
            beats = self.by_pid.get(run.process.pid, [])
            windows = excused.get(run.process.pid, []) + outages
            for before, after in zip(beats, beats[1:]):
                if after - before > limit and not any(s < after and before < e for s, e in windows):
                    silent.append(f"{run.label} went {after - before:.0f}s without a heartbeat (from "
                                  f"{time.strftime('%H:%M:%S', time.localtime(before))}), alive and reachable")
        return silent
