"""Summaries of benchmark runs: medians per (queue, database), a text table, and the JSON file.

Medians, not means: with three repetitions one disturbed run (a checkpoint,
a noisy neighbour) should not move the figure we compare.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (queue, database) in first-seen order, from the per-run records."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["queue"], run["db"]), []).append(run)
    rows = []
    for (queue, db), group in groups.items():
        ok = [r for r in group if not r.get("error")]
        rates = [r["jobs_per_s"] for r in ok]
        rows.append(
            {
                "queue": queue,
                "db": db,
                "n": ok[0]["n"] if ok else group[0]["n"],
                "runs": len(group),
                "errors": len(group) - len(ok),
                "median_jobs_per_s": _median(rates),
                "min_jobs_per_s": min(rates) if rates else None,
                "max_jobs_per_s": max(rates) if rates else None,
                "median_steady_jobs_per_s": _median([r.get("steady_jobs_per_s") for r in ok]),
                "median_first_done_s": _median([r.get("first_done_s") for r in ok]),
                "worker_tracebacks": sum(r.get("worker_tracebacks") or 0 for r in ok),
            }
        )
    return rows


def summarize_latency(latencies: list[dict]) -> list[dict]:
    rows = []
    for item in latencies:
        samples = item.get("samples") or []
        rows.append(
            {
                "queue": item["queue"],
                "db": item["db"],
                "samples": len(samples),
                "p50_s": _percentile(samples, 50),
                "p95_s": _percentile(samples, 95),
                "error": item.get("error"),
            }
        )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    header = ("queue", "db", "N", "jobs/s (median)", "min-max", "steady jobs/s", "start-up s", "notes")
    lines = [header]
    for row in rows:
        notes = []
        if row["errors"]:
            notes.append(f"{row['errors']}/{row['runs']} runs failed")
        if row["worker_tracebacks"]:
            notes.append(f"{row['worker_tracebacks']} worker tracebacks")
        lines.append(
            (
                row["queue"],
                row["db"],
                str(row["n"]),
                _fmt(row["median_jobs_per_s"], ".1f"),
                f"{_fmt(row['min_jobs_per_s'], '.1f')}-{_fmt(row['max_jobs_per_s'], '.1f')}",
                _fmt(row["median_steady_jobs_per_s"], ".1f"),
                _fmt(row["median_first_done_s"], ".2f"),
                "; ".join(notes),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(out)


def format_latency_table(rows: list[dict]) -> str:
    lines = [f"{'queue':<26} {'db':<9} {'samples':>7} {'p50 ms':>8} {'p95 ms':>8}"]
    for row in rows:
        if row["error"]:
            lines.append(f"{row['queue']:<26} {row['db']:<9} failed: {row['error'].splitlines()[0]}")
            continue
        p50 = _fmt(row["p50_s"] and row["p50_s"] * 1000, ".0f")
        p95 = _fmt(row["p95_s"] and row["p95_s"] * 1000, ".0f")
        lines.append(f"{row['queue']:<26} {row['db']:<9} {row['samples']:>7} {p50:>8} {p95:>8}")
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
