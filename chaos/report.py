"""The report: every figure of a run as JSON, and the contract's closing line."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime
from pathlib import Path

from .check import INVARIANTS, Evidence, Verdict
from .mix import BY_TASK_PATH, CALLBACK_BY_TASK_PATH

HARMFUL = ("kill", "term", "stop", "partition", "restart-fast", "restart-immediate", "kill-child")  # what the line counts
MESSAGES_KEPT = 50  # per invariant, in the JSON; the count is always complete


def closing_line(jobs: int, faults: list[dict], verdict: Verdict) -> str:
    harmful = [f for f in faults if f["kind"] in HARMFUL]
    partitions = sum(f["kind"] == "partition" for f in faults)
    counts = ", ".join(f"{verdict.count(name)} {name}" for name in INVARIANTS)
    made = f"{verdict.batches.get('made', 0)} batches, {verdict.chains.get('made', 0)} chains"
    # The contract's line first, as it is; what batches added after it.
    return f"chaos: {jobs} jobs, {len(harmful)} faults ({partitions} partitions), {counts} ({made})"


def _timestamp(value) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def _finished_between(finishes: list[float], start: float, end: float) -> dict:
    n = sum(start <= t < end for t in finishes)
    seconds = max(end - start, 1e-9)
    return {"seconds": round(seconds, 1), "jobs_finished": n, "jobs_per_second": round(n / seconds, 1)}


def _spread(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": values[len(values) // 2], "max": values[-1]}


def build(*, ev: Evidence, verdict: Verdict, run: dict, phases: dict, line: str) -> dict:
    """``run``: the options and the machine; ``phases``: wall-clock times of the run's phases."""
    enqueued = [ev.jobs[job_id] for job_id in verdict.enqueued.values()]
    callbacks = [job for job in ev.jobs.values() if job["task_path"] in CALLBACK_BY_TASK_PATH]
    by_kind: dict[str, Counter] = {}
    for job in enqueued + callbacks:
        kind = BY_TASK_PATH.get(job["task_path"])
        by_kind.setdefault(kind.name if kind else job["task_path"], Counter())[job["status"]] += 1
    finishes = sorted(t for job in enqueued if (t := _timestamp(job["finished_at"])) is not None)
    start = phases["faults_started"]
    restarts = []
    for restart in ev.restarts:
        after = next((t for t in finishes if t > restart["up"]), None)
        restarts.append({
            "mode": restart["mode"], "at_s": round(restart["began"] - start, 1),
            "down_s": round(restart["up"] - restart["began"], 2),
            "first_job_finished_s": round(after - restart["began"], 2) if after else None,
        })
    modes = Counter(call["mode"] for call in ev.calls.values())
    discarded = [(job, attempt) for log in ev.logs for job, attempt in log.discarded]
    return {
        "line": line,
        "run": run,
        "phases_s": {name: round(t - phases["started"], 1) for name, t in phases.items()},
        "invariants": {name: {"count": verdict.count(name),
                              "failures": list(verdict.failures[name].values())[:MESSAGES_KEPT]}
                       for name in INVARIANTS},
        "jobs": {
            "total": len(enqueued),
            "by_kind": {kind: dict(counts) for kind, counts in sorted(by_kind.items())},
            "enqueue_calls": {"by_mode": dict(modes), "raised": sum("error" in c for c in ev.calls.values()),
                              "unfinished": sum("ids" not in c and "error" not in c for c in ev.calls.values()),
                              "raised_but_reconciled": dict(verdict.reconciled)},
            "effects": sum(len(v) for v in ev.effects.values()),
        },
        "faults": {
            "by_kind": dict(Counter(f["kind"] for f in ev.faults)),
            "long_partitions": sum(bool(f.get("long")) for f in ev.faults),
            "timeline": [{**f, "start": round(f["start"] - start, 1),
                          "end": round(f["end"] - start, 1) if f.get("end") else None} for f in ev.faults],
        },
        "throughput": {
            "during_faults": _finished_between(finishes, start, phases["faults_ended"]),
            "after_faults": _finished_between(finishes, phases["faults_ended"], phases["drained"]),
            "per_10s": [sum(t0 <= t < t0 + 10 for t in finishes)
                        for t0 in range(int(start), int(phases["drained"]) + 1, 10)],
        },
        "database_restarts": restarts,
        "back_after_fault_s": {kind: _spread([f["back_after_s"] for f in ev.faults
                                              if f["kind"] == kind and f.get("back_after_s") is not None])
                               for kind in ("stop", "partition")},
        "fencing": {"outcomes_discarded": len(discarded), "jobs": sorted({job for job, _ in discarded})[:100]},
        "take_backs": {"by_cause": dict(verdict.taken_back_by_cause),
                       "logged": sum(len(log.taken_back) for log in ev.logs)},
        "hand_backs": sum(len(log.handed_back) for log in ev.logs),
        "job_control": {
            "unique_enqueues_collapsed": len(verdict.collapsed),
            "limit_samples": ev.limit_samples,
            "most_running_sampled": {key: {"running": n, "limit": limit} for key, (n, limit) in ev.limit_peaks.items()},
            "most_running_by_effects": verdict.most_running,
            "cancels": dict(Counter(c.get("said", "raised" if "error" in c else "unfinished")
                                    for c in ev.cancels.values())),
        },
        "batches": verdict.batches,
        "chains": verdict.chains,
        "workers": {"processes": len(ev.logs), "bad": ev.bad_workers,
                    # --processes hosts: children started (replacements included), ended by their
                    # parent for a job that would not stop, and seen dying (kill-child faults)
                    "supervised": {"runs": sum(bool(log.children) for log in ev.logs),
                                   "children_started": sum(len(log.children) for log in ev.logs),
                                   "children_ended_by_parent": sum(len(log.ended) for log in ev.logs),
                                   "children_died": sum(len(log.died) for log in ev.logs)}},
    }


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")


def machine() -> dict:
    return {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}
