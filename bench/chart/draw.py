"""Draw the benchmark chart from .bench/results.json (runs in the chart venv: matplotlib).

    python bench/chart/draw.py .bench/results.json docs/bench.png

Four panels, each per system and database, log scales: W1 enqueue rate, W2
drain throughput, W3 latency (bar p50, whisker to p95) and W5 claim cost
with an empty and a filled table.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "ours": "#1b7f3b",
    "ours c2": "#5fbf7f",
    "django-background-tasks": "#9a9a9a",
    "django-tasks-db": "#3b6fb6",
    "django-q2": "#d08a2e",
    "procrastinate": "#8e44ad",
}
DBS = (("sqlite", "SQLite"), ("postgres", "PostgreSQL"), ("mariadb", "MariaDB"))
MODES = (("each", "one by one"), ("tx", "one transaction"), ("bulk", "bulk"))


def label(queue: str, variant: str = "") -> str:
    return "ours c2" if queue == "ours" and variant == "c2" else queue


def systems_in(rows, key=lambda r: label(r["queue"], r.get("variant", ""))):
    seen = []
    for name in COLORS:
        if any(key(r) == name for r in rows) and name not in seen:
            seen.append(name)
    return seen


def fmt(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def grouped_bars(ax, groups, systems, value_of, *, annotate=True, err_of=None):
    """Bars per system inside each group (database or mode); missing values leave a gap."""
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        xs, ys, errs = [], [], []
        for g, group in enumerate(groups):
            value = value_of(system, group)
            if value is None:
                continue
            xs.append(g + (i - (len(systems) - 1) / 2) * width)
            ys.append(value)
            errs.append(err_of(system, group) if err_of else None)
        if not xs:
            continue
        ax.bar(xs, ys, width * 0.92, color=COLORS.get(system, "#444"), label=system)
        if err_of:
            for x, y, e in zip(xs, ys, errs):
                if e is not None and e > y:
                    ax.plot([x, x], [y, e], color="black", linewidth=1)
                    ax.plot([x - width * 0.2, x + width * 0.2], [e, e], color="black", linewidth=1)
        if annotate:
            for x, y in zip(xs, ys):
                ax.annotate(fmt(y), (x, y), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                            textcoords="offset points", rotation=90 if len(systems) > 4 else 0)
    ax.set_yscale("log")
    ax.grid(axis="y", which="major", alpha=0.3)


def main(source: str, target: str) -> int:
    data = json.load(open(source))
    s = data["summary"]
    measured = {r["db"] for part in ("w1", "w2", "w3", "w5") for r in s.get(part) or []}
    dbs = [(db, name) for db, name in DBS if db in measured]  # the databases this run measured
    fig, axes = plt.subplots(2, 2, figsize=(13 if len(dbs) < 3 else 15, 9.5))
    m = data["machine"]
    fig.suptitle(f"make bench ({data['profile']}, medians of {data['sizes']['reps']}): "
                 f"{m.get('cpus')} cores, {m.get('platform', '').split('-with')[0]}, "
                 f"load {m['loadavg_before'][0]:.2f} at start", fontsize=12)

    # W2 drain
    ax = axes[0][0]
    rows = s["w2"]
    systems = systems_in(rows)
    by = {(label(r["queue"], r["variant"]), r["db"]): r for r in rows}
    grouped_bars(ax, [d for d, _ in dbs], systems, lambda sy, db: (by.get((sy, db)) or {}).get("median_jobs_per_s"))
    ax.set_xticks(range(len(dbs)), [name for _, name in dbs])
    ax.set_ylabel("jobs/s (log)")
    ax.set_title("W2: drain no-op jobs, one worker process (higher is better)", fontsize=10)

    # W3 latency
    ax = axes[0][1]
    rows = [r for r in s["w3"] if r.get("p50_s")]
    systems = systems_in(rows)
    by = {(r["queue"], r["db"]): r for r in rows}
    grouped_bars(ax, [d for d, _ in dbs], systems,
                 lambda sy, db: (by[(sy, db)]["p50_s"] * 1000) if (sy, db) in by else None,
                 err_of=lambda sy, db: (by[(sy, db)]["p95_s"] * 1000) if (sy, db) in by else None)
    ax.set_xticks(range(len(dbs)), [name for _, name in dbs])
    ax.set_ylabel("ms (log)")
    ax.set_title("W3: enqueue-to-start latency, idle worker (p50 bar, p95 whisker; lower is better)", fontsize=10)

    # W1 enqueue
    ax = axes[1][0]
    rows = s["w1"]
    systems = systems_in(rows, key=lambda r: r["queue"])
    by = {(r["queue"], r["db"], r["mode"]): r for r in rows}
    groups = [(db, mode) for db, _ in dbs for mode, _ in MODES if any(k[1:] == (db, mode) for k in by)]
    grouped_bars(ax, groups, systems, lambda sy, g: (by.get((sy, *g)) or {}).get("median_jobs_per_s"),
                 annotate=False)
    names = dict(dbs)
    modes = dict(MODES) if len(groups) <= 6 else {"each": "one by one", "tx": "one tx", "bulk": "bulk"}
    ax.set_xticks(range(len(groups)), [f"{modes[mode]}\n{names[db]}" for db, mode in groups],
                  fontsize=8 if len(groups) <= 6 else 7)
    ax.set_ylabel("jobs/s (log)")
    ax.set_title("W1: enqueue throughput (higher is better)", fontsize=10)

    # W5 claim cost
    ax = axes[1][1]
    rows = s["w5"]
    states = (("claim_empty_s", "empty table", "#8fd19e"), ("claim_filled_s", "finished rows", "#1b7f3b"))
    for i, (key, name, color) in enumerate(states):
        xs = [g + (i - 0.5) * 0.35 for g, _ in enumerate(rows)]
        ys = [(r[key] or 0) * 1e6 for r in rows]
        ax.bar(xs, ys, 0.33, color=color, label=name)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.0f} µs", (x, y), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
    ax.set_xticks(range(len(rows)), [f"{dict(dbs)[r['db']]}\n{r['rows']:,} rows: {r['claim_ratio']:.2f}x"
                                     if r["claim_ratio"] else dict(dbs)[r["db"]] for r in rows])
    ax.set_ylabel("µs per claim statement")
    ax.set_title("W5: our claim statement, empty vs. filled table (target <= 1.5x)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)

    # One legend for the three panels that compare systems, above them.
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[name]) for name in COLORS
               if any(label(r["queue"], r.get("variant", "")) == name for r in s["w2"] + s["w3"] + s["w1"])]
    names = [name.replace("ours c2", "ours --concurrency 2") for name in COLORS
             if any(label(r["queue"], r.get("variant", "")) == name for r in s["w2"] + s["w3"] + s["w1"])]
    fig.legend(handles, names, loc="upper center", ncol=len(names), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.955))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(target, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
