"""Summaries of benchmark runs: medians per queue and database, our ratios, the targets, tables and JSON.

Medians, not means: with three repetitions one disturbed run (a checkpoint,
a noisy neighbour) should not move the figure we compare. Ratios are always
"how many times better ours is": our throughput over theirs, their latency
over ours.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

MODES = {"each": "one by one", "tx": "one transaction", "bulk": "bulk"}
DB_LABEL = {"sqlite": "SQLite", "postgres": "PostgreSQL", "mariadb": "MariaDB"}
POLL_INTERVAL_S = 1.0  # our OPTIONS poll_interval default: the W3 SQLite target is half of it

# (workload, peer, database, minimum ratio) from issue 6.
W2_TARGETS = (
    ("django-background-tasks", "sqlite", 10),
    ("django-background-tasks", "postgres", 10),
    ("django-tasks-db", "sqlite", 5),
    ("django-tasks-db", "postgres", 5),
    ("procrastinate", "postgres", 3),
)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, pct: float) -> float | None:
    """Nearest-rank percentile of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours and theirs else None


def _group(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return groups


# -- summaries ------------------------------------------------------------------------------------------

def summarize(results, profile, ours_name: str = "ours") -> dict:
    w1 = _summarize_w1(results.w1, ours_name)
    w2 = _summarize_w2(results.w2, ours_name)
    w3 = _summarize_w3(results.w3, ours_name)
    w4 = _summarize_w4(results.w4)
    w5 = _summarize_w5(results.w5, results.w5_fill)
    w6 = _summarize_w6(getattr(results, "w6", []))
    w7 = _summarize_w7(getattr(results, "w7", []))
    w8 = list(getattr(results, "w8", []))
    w9 = _summarize_w9(getattr(results, "w9", []))
    return {"w1": w1, "w2": w2, "w3": w3, "w4": w4, "w5": w5, "w6": w6, "w7": w7, "w8": w8, "w9": w9,
            "targets": targets(w1, w2, w3, w4, w5, ours_name, w6) + w9_targets(w9)}


def _summarize_w1(runs: list[dict], ours: str) -> list[dict]:
    rows = []
    for (queue, db, mode), group in _group([r for r in runs if not r.get("error")], "queue", "db", "mode").items():
        rates = [r["jobs_per_s"] for r in group]
        rows.append({"queue": queue, "db": db, "mode": mode, "n": group[0]["n"], "runs": len(group),
                     "median_jobs_per_s": median(rates), "min_jobs_per_s": min(rates), "max_jobs_per_s": max(rates)})
    ours_rate = {(r["db"], r["mode"]): r["median_jobs_per_s"] for r in rows if r["queue"] == ours}
    for row in rows:
        row["ours_ratio"] = None if row["queue"] == ours else _ratio(ours_rate.get((row["db"], row["mode"])),
                                                                     row["median_jobs_per_s"])
    return rows


def _summarize_w2(runs: list[dict], ours: str) -> list[dict]:
    rows = []
    for (queue, variant, db), group in _group(runs, "queue", "variant", "db").items():
        ok = [r for r in group if not r.get("error")]
        rates = [r["jobs_per_s"] for r in ok]
        rows.append({
            "queue": queue, "variant": variant or "", "db": db, "n": (ok or group)[0]["n"],
            "capped": (ok or group)[0].get("capped", False), "runs": len(group), "errors": len(group) - len(ok),
            "median_jobs_per_s": median(rates), "min_jobs_per_s": min(rates) if rates else None,
            "max_jobs_per_s": max(rates) if rates else None,
            "median_steady_jobs_per_s": median([r.get("steady_jobs_per_s") for r in ok]),
            "median_first_done_s": median([r.get("first_done_s") for r in ok]),
            "worker_tracebacks": sum(r.get("worker_tracebacks") or 0 for r in ok),
        })
    ours_rate = {r["db"]: r["median_jobs_per_s"] for r in rows if r["queue"] == ours and not r["variant"]}
    for row in rows:
        row["ours_ratio"] = None if row["queue"] == ours else _ratio(ours_rate.get(row["db"]), row["median_jobs_per_s"])
    return rows


def _summarize_w3(items: list[dict], ours: str) -> list[dict]:
    rows = []
    for item in items:
        samples = item.get("samples") or []
        rows.append({"queue": item["queue"], "db": item["db"], "samples": len(samples),
                     "p50_s": percentile(samples, 50), "p95_s": percentile(samples, 95),
                     "max_s": max(samples) if samples else None, "error": item.get("error")})
    ours_p50 = {r["db"]: r["p50_s"] for r in rows if r["queue"] == ours}
    for row in rows:
        row["ours_ratio"] = None if row["queue"] == ours else _ratio(row["p50_s"], ours_p50.get(row["db"]))
    return rows


def _summarize_w4(runs: list[dict]) -> list[dict]:
    rows = []
    for (db,), group in _group(runs, "db").items():
        ok = [r for r in group if not r.get("error")]
        rows.append({
            "db": db, "n": group[0]["n"], "processes": group[0]["processes"], "runs": len(group),
            "errors": len(group) - len(ok), "median_jobs_per_s": median([r["jobs_per_s"] for r in ok]),
            "duplicates": sum(r.get("duplicates") or 0 for r in ok), "misses": sum(r.get("misses") or 0 for r in ok),
            "unexpected": sum(r.get("unexpected") or 0 for r in ok),
            "all_successful": all(set((r.get("statuses") or {}).keys()) <= {"SUCCESSFUL"} for r in ok),
        })
    return rows


def _summarize_w5(runs: list[dict], fills: list[dict]) -> list[dict]:
    rows = []
    fill_by_db = {f["db"]: f for f in fills}
    for (db,), group in _group(runs, "db").items():
        by_state = _group(group, "state")
        empty, filled = by_state.get(("empty",), []), by_state.get(("filled",), [])
        claim = {s: median([r["claim_median_s"] for r in g]) for s, g in (("empty", empty), ("filled", filled))}
        drain = {s: median([r["drain_jobs_per_s"] for r in g]) for s, g in (("empty", empty), ("filled", filled))}
        fill = fill_by_db.get(db, {})
        rows.append({
            "db": db, "rows": filled[0]["rows"] if filled else None, "runs": len(filled),
            "claims_per_run": group[0]["claims"], "drain_n": group[0]["drain_n"],
            "claim_empty_s": claim["empty"], "claim_filled_s": claim["filled"],
            "claim_ratio": _ratio(claim["filled"], claim["empty"]),
            "drain_empty_jobs_per_s": drain["empty"], "drain_filled_jobs_per_s": drain["filled"],
            "drain_ratio": _ratio(drain["empty"], drain["filled"]),
            "fill_insert_s": fill.get("insert_s"), "plan_filled": filled[-1]["plan"] if filled else None,
        })
    return rows


def _summarize_w6(runs: list[dict]) -> list[dict]:
    rows = []
    for (db, keys), group in _group(runs, "db", "keys").items():
        rows.append({"db": db, "keys": keys, "ready": group[0]["ready"], "held_back": group[0]["held_back"],
                     "runs": len(group), "claims_per_run": group[0]["samples"],
                     "claim_median_s": median([r["median_s"] for r in group]),
                     "claim_p95_s": median([r["p95_s"] for r in group]),
                     "freed_key_median_s": median([r["keyed_median_s"] for r in group])})
    return sorted(rows, key=lambda r: ({"sqlite": 0, "postgres": 1}.get(r["db"], 9), r["keys"]))


W7_FIGURES = ("rss_idle_mb", "rss_load_peak_mb", "cpu_ms_per_job", "commits_per_job", "round_trips_per_job")


def _summarize_w7(runs: list[dict]) -> list[dict]:
    rows = []
    for (db,), group in _group(runs, "db").items():
        row = {"db": db, "runs": len(group), "n": group[0]["n"]}
        for name in W7_FIGURES:
            values = [r[name] for r in group if r.get(name) is not None]
            row[name] = median(values) if values else None
        rows.append(row)
    return sorted(rows, key=lambda r: {"sqlite": 0, "postgres": 1}.get(r["db"], 9))


DB_ORDER = {"sqlite": 0, "postgres": 1, "mariadb": 2}


def _summarize_w9(runs: list[dict]) -> list[dict]:
    """One row per database: (a) the bulk enqueue with and without a batch, (b) the drains per
    kind, (c) the callback's delay, (d) the chain."""
    rows = []
    for (db,), group in sorted(_group(runs, "db").items(), key=lambda item: DB_ORDER.get(item[0][0], 9)):
        row: dict = {"db": db}
        enqueue = [r for r in group if r["part"] == "enqueue"]
        if enqueue:
            for batched, key in ((False, "plain"), (True, "batch")):
                chosen = [r for r in enqueue if r["batched"] is batched]
                row[f"enqueue_{key}_s"] = median([r["seconds"] for r in chosen])
                row[f"enqueue_{key}_jobs_per_s"] = median([r["jobs_per_s"] for r in chosen])
            row["enqueue_n"] = enqueue[0]["n"]
            row["enqueue_runs"] = len(enqueue) // 2
            # The two runs of a repetition ran one after the other: their ratio, then the median of those
            # (drift of a shared machine between repetitions cancels); the ratio of the medians is kept too.
            pairs = _group(enqueue, "rep")
            row["enqueue_ratio"] = median([
                _ratio(*(next(r["seconds"] for r in pair if r["batched"] is b) for b in (True, False)))
                for pair in pairs.values() if len(pair) == 2])
            row["enqueue_ratio_of_medians"] = _ratio(row["enqueue_batch_s"], row["enqueue_plain_s"])
        drains = [r for r in group if r["part"] == "drain"]
        if drains:
            row["drain_n"] = drains[0]["n"]
            row["drain_runs"] = len(drains) // 3
            for kind in ("plain", "batch", "large"):
                chosen = [r for r in drains if r["kind"] == kind]
                row[f"drain_{kind}_jobs_per_s"] = median([r["steady_jobs_per_s"] for r in chosen])
                row[f"drain_{kind}_batch_size"] = chosen[0]["batch_size"] if chosen else None
            row["member_cost_ratio"] = _ratio(row["drain_plain_jobs_per_s"], row["drain_batch_jobs_per_s"])
            row["large_vs_batch"] = _ratio(row["drain_large_jobs_per_s"], row["drain_batch_jobs_per_s"])
        callbacks = [s for r in group if r["part"] == "callback" for s in r["samples"]]
        if callbacks:
            row.update(callback_samples=len(callbacks), callback_p50_s=percentile(callbacks, 50),
                       callback_p95_s=percentile(callbacks, 95), callback_max_s=max(callbacks))
        chains = [r for r in group if r["part"] == "chain"]
        if chains:
            row.update(chain_n=chains[0]["n"], chain_runs=len(chains),
                       chain_links_per_s=median([r["links_per_s"] for r in chains]),
                       chain_enqueue_per_s=median([r["enqueue_per_s"] for r in chains]))
        rows.append(row)
    return rows


W9_ENQUEUE_MAX, W9_LARGE_MIN, W9_CALLBACK_S, W9_CHAIN_MIN = 1.10, 0.9, 1.0, 200  # issue 22, item 3


def w9_targets(w9: list[dict]) -> list[dict]:
    out = []
    for row in w9:
        label = DB_LABEL.get(row["db"], row["db"])
        for name, value, met, shown in (
            (f"W9a bulk enqueue of {row.get('enqueue_n') or 0:,} in a batch <= {W9_ENQUEUE_MAX:.2f}x without, "
             f"on {label}", row.get("enqueue_ratio"),
             lambda v: v <= W9_ENQUEUE_MAX, lambda v: f"{v:.2f}x"),
            (f"W9b a member's end does not cost more in a larger batch (rate in the batch of "
             f"{row.get('drain_large_batch_size') or 0:,} >= {W9_LARGE_MIN}x in the batch of "
             f"{row.get('drain_batch_batch_size') or 0:,}) on {label}", row.get("large_vs_batch"),
             lambda v: v >= W9_LARGE_MIN, lambda v: f"{v:.2f}x"),
            (f"W9c callback p50 < {W9_CALLBACK_S:.0f} s after the last member on {label}", row.get("callback_p50_s"),
             lambda v: v < W9_CALLBACK_S, lambda v: f"{v * 1000:.0f} ms"),
            (f"W9d chain of {row.get('chain_n') or 0:,} >= {W9_CHAIN_MIN} links/s on {label}",
             row.get("chain_links_per_s"), lambda v: v >= W9_CHAIN_MIN, lambda v: f"{v:,.0f} links/s"),
        ):
            if value is not None:
                out.append({"target": name, "measured": value, "met": met(value), "shown": shown(value)})
    return out


W6_TARGET_KEYS, W6_TARGET_S = 100, 0.005  # issue 12: 100,000 READY, 99% held back, a claim under 5 ms


def targets(w1, w2, w3, w4, w5, ours: str, w6=()) -> list[dict]:
    """The issues' targets (6, 12 and 14), each with what was measured and whether it was met
    (None: not measured)."""
    out = []

    def add(name: str, measured: float | None, met: bool | None, shown: str):
        out.append({"target": name, "measured": measured, "met": met, "shown": shown})

    w2_by = {(r["queue"], r["db"]): r for r in w2 if not r["variant"]}
    for peer, db, minimum in W2_TARGETS:
        ratio = (w2_by.get((peer, db)) or {}).get("ours_ratio")
        add(f"W2 one worker >= {minimum}x {peer} on {DB_LABEL[db]}", ratio,
            None if ratio is None else ratio >= minimum, "-" if ratio is None else f"{ratio:.1f}x")
    w3_by = {r["db"]: r for r in w3 if r["queue"] == ours and r["samples"]}
    pg, lite = w3_by.get("postgres"), w3_by.get("sqlite")
    for label, row, key, limit in (("W3 PostgreSQL p50 <= 10 ms", pg, "p50_s", 0.010),
                                   ("W3 PostgreSQL p95 <= 30 ms", pg, "p95_s", 0.030),
                                   (f"W3 SQLite p50 <= {POLL_INTERVAL_S / 2 * 1000:.0f} ms (half the poll interval)",
                                    lite, "p50_s", POLL_INTERVAL_S / 2)):
        value = row[key] if row else None
        add(label, value, None if value is None else value <= limit, "-" if value is None else f"{value * 1000:.1f} ms")
    for row in w4:
        bad = row["duplicates"] + row["misses"] + row["unexpected"]
        ok = bad == 0 and not row["errors"] and row["all_successful"]
        add(f"W4 zero duplicates and misses on {DB_LABEL[row['db']]}", bad, ok,
            f"{row['duplicates']} dup / {row['misses']} miss in {row['runs']} runs of {row['n']:,}")
    for row in w5:
        ratio = row["claim_ratio"]
        add(f"W5 claim cost with {row['rows']:,} finished rows <= 1.5x empty on {DB_LABEL[row['db']]}", ratio,
            None if ratio is None else ratio <= 1.5, "-" if ratio is None else f"{ratio:.2f}x")
    w1_by = {r["db"]: r for r in w1 if r["queue"] == ours and r["mode"] == "bulk"}
    for db, minimum in (("sqlite", 20000), ("postgres", 25000), ("mariadb", 20000)):  # issues 6 and 20
        rate = (w1_by.get(db) or {}).get("median_jobs_per_s")
        add(f"W1 bulk >= {minimum:,} jobs/s on {DB_LABEL[db]}", rate, None if rate is None else rate >= minimum,
            "-" if rate is None else f"{rate:,.0f} jobs/s")
    # Issue 14: the redesigned worker.
    ours_w2 = {r["db"]: r["median_jobs_per_s"] for r in w2 if r["queue"] == ours and not r["variant"]}
    for db, minimum in (("postgres", 2000), ("sqlite", 2500), ("mariadb", 2000)):  # issues 14 and 20
        rate = ours_w2.get(db)
        add(f"W2 one worker >= {minimum:,} jobs/s on {DB_LABEL[db]}", rate, None if rate is None else rate >= minimum,
            "-" if rate is None else f"{rate:,.0f} jobs/s")
    w1_pg = {(r["queue"], r["mode"]): r for r in w1 if r["db"] == "postgres"}
    for mode, minimum, against in (("each", 1.5, ["procrastinate"]), ("tx", 1.2, None)):
        peers = [r for (queue, m), r in w1_pg.items() if m == mode and queue != ours
                 and (against is None or queue in against) and r["ours_ratio"]]
        ratio = min((r["ours_ratio"] for r in peers), default=None)  # against the best of them
        who = against[0] if against else "the best peer"
        add(f"W1 {MODES[mode]} on PostgreSQL >= {minimum}x {who}", ratio, None if ratio is None else ratio >= minimum,
            "-" if ratio is None else f"{ratio:.2f}x")
    for db in ("postgres", "sqlite"):
        row = w3_by.get(db)
        value = row["p50_s"] if row else None
        add(f"W3 {DB_LABEL[db]} p50 <= 4 ms", value, None if value is None else value <= 0.004,
            "-" if value is None else f"{value * 1000:.1f} ms")
    # Issue 12: the claim past held-back jobs.
    for row in w6:
        if row["keys"] == W6_TARGET_KEYS:
            value = row["claim_median_s"]
            add(f"W6 claim with {row['ready']:,} READY ({row['held_back']:,} held back on {row['keys']} keys) "
                f"< 5 ms on {DB_LABEL[row['db']]}", value, None if value is None else value < W6_TARGET_S,
                "-" if value is None else f"{value * 1000:.2f} ms")
    return out


# -- text ---------------------------------------------------------------------------------------------------

def _num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _x(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}x" if value >= 100 else f"{value:.1f}x"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" * len(header)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    sep = ["-" * w if a == "l" else "-" * (w - 1) + ":" for w, a in zip(widths, align)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                                 for c, w, a in zip(cells, widths, align)) + " |"

    return "\n".join([line(header), "| " + " | ".join(sep) + " |", *(line(r) for r in rows)])


def _system(queue: str, variant: str = "") -> str:
    if variant == "c2":
        return f"**{queue}** `--concurrency 2`"
    if variant == "defaults":
        return f"**{queue}** in a site with Django's defaults"
    return f"**{queue}**" if queue == "ours" else queue


def _order(rows: list[dict], ours: str = "ours") -> list[dict]:
    return sorted(rows, key=lambda r: (DB_ORDER.get(r["db"], 9), r.get("queue") != ours, r.get("variant") or ""))


def machine_line(payload: dict) -> str:
    m = payload["machine"]
    dbs = payload.get("databases", {})
    parts = [f"{m.get('cpus')} cores ({m.get('cpu_model', 'unknown CPU')})"]
    if m.get("memory_gb"):
        parts.append(f"{m['memory_gb']:g} GB RAM")
    parts.append(m.get("platform", ""))
    pg = dbs.get("postgres")
    if pg:
        parts.append(f"PostgreSQL {pg.get('server_version')} ({pg.get('settings')})")
    maria = dbs.get("mariadb")
    if maria:
        parts.append(f"MariaDB {maria.get('server_version')} ({maria.get('settings')})")
    lite = dbs.get("sqlite")
    sqlite_version = (payload.get("queues", {}).get("ours") or {}).get("sqlite")
    if lite:
        parts.append(f"SQLite {sqlite_version or ''} on {lite.get('filesystem')}".replace("  ", " "))
    before, after = m.get("loadavg_before") or [0, 0, 0], m.get("loadavg_after") or [0, 0, 0]
    parts.append(f"load average {before[0]:.2f} before, {after[0]:.2f} after")
    return "; ".join(p for p in parts if p)


def markdown(payload: dict) -> str:
    s = payload["summary"]
    sizes = payload["sizes"]
    out = [f"Profile `{payload['profile']}`, {payload['started_at']}, {sizes['reps']} repetitions, medians; "
           f"harness wall time {payload['wall_s'] / 60:.1f} min.", "", f"Machine: {machine_line(payload)}."]

    if s["w1"]:
        out += ["", "**W1 enqueue** (jobs/s; in brackets: ours ÷ this system, same way and database)", ""]
        keyed = {(r["queue"], r["db"], r["mode"]): r for r in s["w1"]}
        pairs = []
        for r in _order(s["w1"]):
            if (r["queue"], r["db"]) not in pairs:
                pairs.append((r["queue"], r["db"]))
        rows = []
        for queue, db in pairs:
            cells, sizes_used = [], []
            for mode in MODES:
                r = keyed.get((queue, db, mode))
                if not r:
                    cells.append("n/a")
                    continue
                sizes_used.append(f"{r['n']:,}")
                ratio = f" ({_x(r['ours_ratio'])})" if r["ours_ratio"] else ""
                cells.append(_rate(r["median_jobs_per_s"]) + ratio)
            rows.append([_system(queue), DB_LABEL[db], *cells, " / ".join(sizes_used)])
        out.append(_table(["system", "db", *MODES.values(), "jobs timed"], rows, "llrrrl"))

    if s["w2"]:
        out += ["", "**W2 drain**, one worker process (jobs/s from spawning the worker until all N are done; "
                "steady: after the first job)", ""]
        rows = []
        for r in _order(s["w2"]):
            notes = []
            if r["errors"]:
                notes.append(f"{r['errors']}/{r['runs']} runs failed")
            if r["worker_tracebacks"]:
                notes.append(f"{r['worker_tracebacks']} worker tracebacks")
            n = f"{r['n']:,}" + (" (capped)" if r["capped"] else "")
            rows.append([_system(r["queue"], r["variant"]), DB_LABEL[r["db"]], n, _rate(r["median_jobs_per_s"]),
                         f"{_rate(r['min_jobs_per_s'])}–{_rate(r['max_jobs_per_s'])}",
                         _rate(r["median_steady_jobs_per_s"]), _num(r["median_first_done_s"], ".2f"),
                         f"**{_x(r['ours_ratio'])}**" if r["ours_ratio"] else "", "; ".join(notes)])
        out.append(_table(["system", "db", "N", "jobs/s", "min–max", "steady jobs/s", "start-up s", "ours ÷ this",
                           "notes"], rows, "llrrrrrrl"))

    if s["w3"]:
        out += ["", "**W3 enqueue-to-start latency**, idle worker, probes at a random phase of the poll", ""]
        rows = []
        for r in _order(s["w3"]):
            if r["error"]:
                rows.append([_system(r["queue"]), DB_LABEL[r["db"]], "0", "failed", "", "", ""])
                continue
            rows.append([_system(r["queue"]), DB_LABEL[r["db"]], str(r["samples"]), _num(r["p50_s"] * 1000, ".1f"),
                         _num(r["p95_s"] * 1000, ".1f"), _num(r["max_s"] * 1000, ".1f"),
                         f"**{_x(r['ours_ratio'])}**" if r["ours_ratio"] else ""])
        out.append(_table(["system", "db", "samples", "p50 ms", "p95 ms", "max ms", "this ÷ ours (p50)"], rows,
                          "llrrrrr"))

    if s["w4"]:
        out += ["", "**W4 two worker processes** of ours draining one queue (each job appends its id to a file)", ""]
        rows = [[DB_LABEL[r["db"]], f"{r['n']:,}", str(r["runs"]), _rate(r["median_jobs_per_s"]), str(r["duplicates"]),
                 str(r["misses"]), "yes" if r["all_successful"] and not r["errors"] else "NO"] for r in _order(s["w4"])]
        out.append(_table(["db", "N per run", "runs", "jobs/s", "duplicates", "misses", "all SUCCESSFUL"], rows,
                          "lrrrrrl"))

    if s["w5"]:
        out += ["", "**W5 claim cost** with finished rows in the table (claim statement, one job per claim; and a "
                f"drain of {s['w5'][0]['drain_n']:,} jobs)", ""]
        rows = []
        for r in _order(s["w5"]):
            rows.append([DB_LABEL[r["db"]], f"{r['rows']:,}" if r["rows"] is not None else "-",
                         _num(r["claim_empty_s"] and r["claim_empty_s"] * 1e6), _num(r["claim_filled_s"] and
                                                                                   r["claim_filled_s"] * 1e6),
                         f"**{r['claim_ratio']:.2f}x**" if r["claim_ratio"] else "-", _rate(r["drain_empty_jobs_per_s"]),
                         _rate(r["drain_filled_jobs_per_s"]), f"{r['drain_ratio']:.2f}x" if r["drain_ratio"] else "-"])
        out.append(_table(["db", "finished rows", "claim µs (empty)", "claim µs (filled)", "ratio",
                           "drain jobs/s (empty)", "drain jobs/s (filled)", "ratio"], rows, "lrrrrrrr"))

    if s.get("w6"):
        out += ["", "**W6 claim past held-back jobs**: 100,000 READY jobs, 99% of them on keys at their "
                "concurrency limit; one job per claim, the whole claim timed (its keys, their limit rows, the "
                "claim, the commit); every 10th claim follows a freed key", ""]
        rows = [[DB_LABEL[r["db"]], f"{r['keys']:,}", f"{r['ready']:,}", f"{r['held_back']:,}",
                 _num(r["claim_median_s"] * 1000, ".2f"), _num(r["claim_p95_s"] * 1000, ".2f"),
                 _num(r["freed_key_median_s"] * 1000, ".2f")] for r in s["w6"]]
        out.append(_table(["db", "keys", "READY", "held back", "claim p50 ms", "p95 ms", "freed key p50 ms"], rows,
                          "lrrrrrr"))

    if s.get("w7"):
        out += ["", "**W7 what a worker costs**: one worker process of ours (one slot), idle (started on an empty "
                "queue) and draining N no-op jobs; per job: CPU of the whole process (its start-up taken out), "
                "commits and round trips (statements, BEGIN and COMMIT included, from pg_stat_statements) in the "
                "database, the harness's own queries taken out", ""]
        rows = [[DB_LABEL[r["db"]], f"{r['n']:,}", _num(r["rss_idle_mb"], ".0f"), _num(r["rss_load_peak_mb"], ".0f"),
                 _num(r["cpu_ms_per_job"], ".3f"),
                 "n/a" if r["commits_per_job"] is None else _num(r["commits_per_job"], ".3f"),
                 "n/a (in-process)" if r["round_trips_per_job"] is None else _num(r["round_trips_per_job"], ".3f")]
                for r in s["w7"]]
        out.append(_table(["db", "N", "RSS idle MB", "RSS peak under load MB", "CPU ms per job", "commits per job",
                           "round trips per job"], rows, "lrrrrrr"))

    if s.get("w8"):
        out += ["", "**W8 scaling out**: N jobs that record their id, drained by 1-8 worker processes of one "
                "thread each, started one by one (separate) or as one `process_tasks --processes K` "
                "(supervised); the workers start on an empty queue, then the N jobs come in one bulk enqueue and "
                "the clock runs until the last is finished; the most connections seen; the parent's own RSS and "
                "CPU over the whole run", ""]
        single = {(r["db"], r["kind"], r["mode"]): r["jobs_per_s"] for r in s["w8"] if r["processes"] == 1}
        rows = [[DB_LABEL.get(r["db"], r["db"]), r["kind"], str(r["processes"]), r["mode"], f"{r['n']:,}",
                 _num(r["jobs_per_s"], ",.0f"),
                 _num(r["jobs_per_s"] / single[(r["db"], r["kind"], r["mode"])], ".2f") + "x"
                 if single.get((r["db"], r["kind"], r["mode"])) else "-",
                 f"{r['duplicates']}/{r['misses']}", str(r["peak_connections"]),
                 "-" if r.get("parent_rss_mb") is None else f"{r['parent_rss_mb']:.0f} MB, "
                                                            f"{r['parent_cpu_ms']:.0f} ms"]
                for r in s["w8"]]
        out.append(_table(["db", "jobs", "processes", "started", "N", "jobs/s", "vs 1", "dup/miss", "connections",
                           "parent RSS, CPU"], rows, "llrlrrrrrl"))

    if s.get("w9"):
        out += _w9_markdown(s["w9"])

    if s["targets"]:
        out += ["", "**Targets** (issues 6, 12, 14, 20 and 22)", ""]
        rows = [[t["target"], t["shown"], {True: "met", False: "**missed**", None: "not measured"}[t["met"]]]
                for t in s["targets"]]
        out.append(_table(["target", "measured", ""], rows, "lrl"))
    if payload.get("notes"):
        out += ["", "Notes:", *(f"- {n}" for n in payload["notes"])]
    if payload.get("errors"):
        out += ["", "Errors:", *(f"- {e.splitlines()[0]}" for e in payload["errors"])]
    return "\n".join(out)


def _w9_markdown(w9: list[dict]) -> list[str]:
    out = []
    rows = [r for r in w9 if r.get("enqueue_ratio") is not None or r.get("drain_n")]
    if rows:
        out += ["", "**W9 batches and dependencies (ours)**: (a) one bulk enqueue in a `batch()` block vs the "
                "same without one, fresh databases side by side (time ratio: the median of each "
                "repetition's); (b) one worker draining N no-op jobs, steady "
                "rate (first job's end to the last's): plain, the members of one batch of N, and the last N members "
                "of a larger batch (its other members ended)", ""]
        table = []
        for r in rows:
            table.append([DB_LABEL.get(r["db"], r["db"]), f"{r.get('enqueue_n') or 0:,}",
                          _rate(r.get("enqueue_plain_jobs_per_s")), _rate(r.get("enqueue_batch_jobs_per_s")),
                          f"**{r['enqueue_ratio']:.2f}x**" if r.get("enqueue_ratio") else "-",
                          f"{r.get('drain_n') or 0:,}", _rate(r.get("drain_plain_jobs_per_s")),
                          _rate(r.get("drain_batch_jobs_per_s")), _rate(r.get("drain_large_jobs_per_s")),
                          f"{r['member_cost_ratio']:.2f}x" if r.get("member_cost_ratio") else "-",
                          f"**{r['large_vs_batch']:.2f}x**" if r.get("large_vs_batch") else "-"])
        large = f"jobs/s batch of {rows[0].get('drain_large_batch_size') or 0:,}"
        out.append(_table(["db", "enqueued", "jobs/s no batch", "jobs/s in a batch", "time ratio", "drained",
                           "jobs/s plain", "jobs/s batch of N", large,
                           "cost per member ÷ plain", "large ÷ N"], table, "lrrrrrrrrrr"))
    rows = [r for r in w9 if r.get("callback_samples") or r.get("chain_n")]
    if rows:
        out += ["", "**W9 callbacks and chains (ours)**: (c) the last member's end to the callback's start, one "
                "idle worker, batches at a random phase of its poll; (d) a chain of `enqueue_after` links, each "
                "waiting for the previous, all enqueued first, one worker (first link's start to last link's end)",
                ""]
        table = [[DB_LABEL.get(r["db"], r["db"]), str(r.get("callback_samples") or "-"),
                  _num(r.get("callback_p50_s") and r["callback_p50_s"] * 1000, ".1f"),
                  _num(r.get("callback_p95_s") and r["callback_p95_s"] * 1000, ".1f"),
                  _num(r.get("callback_max_s") and r["callback_max_s"] * 1000, ".1f"),
                  f"{r.get('chain_n') or 0:,}", _rate(r.get("chain_links_per_s")), _rate(r.get("chain_enqueue_per_s"))]
                 for r in rows]
        out.append(_table(["db", "batches", "callback p50 ms", "p95 ms", "max ms", "chain links", "links/s",
                           "enqueue_after/s"], table, "lrrrrrrr"))
    return out


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
