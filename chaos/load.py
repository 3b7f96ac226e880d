"""The load: a producer process enqueueing a seeded mix of jobs at a steady rate.

Each call enqueues one job, a few in one transaction, a bulk of them by
``jobs.enqueue_many``, a batch (``jobs.batch`` with all three callbacks, its members
one by one or in bulk) or a chain of dependencies (``jobs.enqueue_after``: each link
waits for the one before, some a fan-in of 2-3 parents, some with a link that fails
for good or a root that the producer cancels); batches and chains are made in one
transaction, like the calls of several jobs. Every job carries a ``token`` (the producer's own name for it)
in its kwargs, and the producer writes each call to its record file before making
it, then what came back: the job ids, or the error. A call that raised (the database
restarting under it) may or may not have committed; the checker finds out by the
tokens, as a careful caller would. Jobs of a kind with ``cancels`` are cancelled a
moment later (``jobs.cancel``), found READY, RUNNING or finished as it happens; each
cancel goes in the record too, with what ``cancel`` said.

``python -m chaos.load --seconds S --seed N --rate JOBS_PER_S --record PATH``
(run by the harness with ``chaos.settings``).
"""

from __future__ import annotations

import argparse
import json
import random
import time

MODES = {"one": 5, "transaction": 3, "bulk": 2, "batch": 1, "chain": 2}  # relative weights of the calls
TRANSACTION_SIZE = (2, 8)
BULK_SIZE = (10, 100)  # capped by each kind's ``bulk``


def _task(kind):
    """The kind's task on its queue, due ``kind.due_in`` seconds from now."""
    from datetime import timedelta

    from django.utils import timezone

    task = kind.task if kind.queue == "default" else kind.task.using(queue_name=kind.queue)
    return task.using(run_after=timezone.now() + timedelta(seconds=kind.due_in)) if kind.due_in else task


def enqueue_call(mode: str, calls: list, *, parents: dict | None = None, batch: dict | None = None) -> list[str]:
    """Enqueue ``[(kind, token, kwargs)]`` one way or another; returns the job ids. ``parents``
    (a chain): token -> the tokens it waits for, each earlier in ``calls``. ``batch`` (a batch):
    filled with the batch's id."""
    from django.db import transaction

    import jobs

    if mode == "batch":
        from . import tasks

        with transaction.atomic(), jobs.batch(on_success=tasks.batch_succeeded, on_failure=tasks.batch_failed,
                                              on_finish=tasks.batch_finished) as made:
            batch["id"] = made.id
            if batch["bulk"]:  # enqueue_many takes one task: one call per kind, in the order drawn
                ids = {}
                for kind in dict.fromkeys(kind for kind, _, _ in calls):
                    mine = [(t, kw) for k, t, kw in calls if k is kind]
                    results = jobs.enqueue_many(_task(kind), [((), {"token": t, **kw}) for t, kw in mine])
                    ids.update({t: r.id for (t, _), r in zip(mine, results)})
                return [ids[t] for _, t, _ in calls]
            return [_task(kind).enqueue(token=t, **kw).id for kind, t, kw in calls]
    if mode == "chain":
        ids = {}
        with transaction.atomic():
            for kind, t, kw in calls:
                waits = [ids[p] for p in parents.get(t, [])]
                ids[t] = (jobs.enqueue_after(waits, _task(kind), token=t, **kw) if waits
                          else _task(kind).enqueue(token=t, **kw)).id
        return [ids[t] for _, t, _ in calls]
    if mode == "bulk":
        kind = calls[0][0]
        return [r.id for r in jobs.enqueue_many(_task(kind), [((), {"token": t, **kw}) for _, t, kw in calls])]
    if mode == "transaction":
        with transaction.atomic():
            return [_task(kind).enqueue(token=t, **kw).id for kind, t, kw in calls]
    kind, token, kwargs = calls[0]
    return [_task(kind).enqueue(token=token, **kwargs).id]


def cancel_due(pending: list, record, *, now: float) -> None:
    """Cancel the jobs whose moment came: ``pending`` holds ``(at, token, job_id)``."""
    from django.db import connection

    import jobs

    for entry in [p for p in pending if p[0] <= now]:
        pending.remove(entry)
        _, token, job_id = entry
        record.write(json.dumps({"cancel": token, "id": job_id, "at": time.time()}) + "\n")
        try:
            said = jobs.cancel(job_id, reason="chaos")
        except Exception as exc:  # the database restarting: done or not, the checker allows both
            record.write(json.dumps({"cancel": token, "error": f"{type(exc).__name__}: {exc}"[:300]}) + "\n")
            connection.close()
        else:
            record.write(json.dumps({"cancel": token, "said": said}) + "\n")


def _drawn(rng: random.Random, weights: dict, k: int = 1) -> list:
    from .mix import BY_NAME

    return [BY_NAME[name] for name in rng.choices(list(weights), weights=list(weights.values()), k=k)]


def draw_batch(rng: random.Random) -> tuple[list, dict]:
    """A batch's member kinds (all fine for a third of them, else often with a doomed one), and how
    they are enqueued."""
    from .mix import BATCH_FINE, BATCH_MEMBERS, BATCH_SIZE, BY_NAME

    size = rng.randint(*BATCH_SIZE)
    fine = rng.random() < 0.35
    kinds = _drawn(rng, BATCH_FINE if fine else BATCH_MEMBERS, size)
    if not fine and rng.random() < 0.7:
        kinds[rng.randrange(size)] = BY_NAME["doomed"]
    return kinds, {"bulk": rng.random() < 0.5, "fine": fine}


def draw_chain(rng: random.Random) -> tuple[list, dict[int, list[int]]]:
    """A chain's kinds, its extra roots first, and each link's parents (by position): link i waits
    for link i-1; with a fan-in, one link also waits for 1-2 roots of its own; a broken chain has a
    doomed link (not the last) or a root the producer may cancel."""
    from .mix import BROKEN_CHAINS, BY_NAME, CHAIN_LENGTH, CHAIN_LINKS, FAN_IN

    length = rng.randint(*CHAIN_LENGTH)
    extra = rng.randint(1, 2) if rng.random() < FAN_IN else 0
    kinds = _drawn(rng, CHAIN_LINKS, extra + length)
    parents = {extra + i: [extra + i - 1] for i in range(1, length)}
    if extra:  # a link after the first: 2-3 parents
        parents[rng.randrange(extra + 1, extra + length)].extend(range(extra))
    if rng.random() < BROKEN_CHAINS:
        roots = [i for i in range(extra + length) if not parents.get(i)]
        if rng.random() < 0.25:  # a root that is cancelled 70 % of the time (chaos.mix "cancelled")
            kinds[rng.choice(roots)] = BY_NAME["cancelled"]
        else:  # anything but the last link
            kinds[rng.randrange(extra + length - 1)] = BY_NAME["doomed"]
    return kinds, {child: ps for child, ps in parents.items() if ps}


def produce(*, seconds: float, seed: int, rate: float, record) -> None:
    from django.db import connection

    from .mix import KINDS

    rng = random.Random(f"load-{seed}")
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    number = 0
    to_cancel: list[tuple[float, str, str]] = []
    while time.monotonic() < deadline:
        cancel_due(to_cancel, record, now=time.monotonic())
        mode = rng.choices(list(MODES), weights=list(MODES.values()))[0]
        weights = [k.weight for k in KINDS]
        extra, options = {}, {}
        if mode == "bulk":  # enqueue_many takes one task
            kind = rng.choices(KINDS, weights=weights)[0]
            kinds = [kind] * rng.randint(min(BULK_SIZE[0], kind.bulk), kind.bulk)
        elif mode == "batch":
            kinds, extra = draw_batch(rng)
            options["batch"] = dict(extra)
        elif mode == "chain":
            kinds, by_position = draw_chain(rng)
        else:
            kinds = rng.choices(KINDS, weights=weights, k=1 if mode == "one" else rng.randint(*TRANSACTION_SIZE))
        size = len(kinds)
        calls = [(kind, f"{seed}-{number}-{i}", kind.kwargs(rng)) for i, kind in enumerate(kinds)]
        if mode == "chain":
            extra = {"parents": {calls[child][1]: [calls[p][1] for p in ps] for child, ps in by_position.items()}}
            options["parents"] = extra["parents"]
        record.write(json.dumps({"call": number, "mode": mode, "at": time.time(), **extra,
                                 "jobs": [[token, kind.name, kwargs] for kind, token, kwargs in calls]}) + "\n")
        try:
            ids = enqueue_call(mode, calls, **options)
        except Exception as exc:  # the outcome is unknown: the checker reconciles by token
            record.write(json.dumps({"call": number, "error": f"{type(exc).__name__}: {exc}"[:300]}) + "\n")
            connection.close()  # a dead connection is not reused; the next call reconnects
            time.sleep(0.2)
        else:
            made = {"batch_id": options["batch"]["id"]} if mode == "batch" else {}
            record.write(json.dumps({"call": number, "ids": ids, **made}) + "\n")
            to_cancel += [(time.monotonic() + rng.uniform(0.1, 3.0), token, job_id)
                          for (kind, token, _), job_id in zip(calls, ids) if rng.random() < kind.cancels]
        number += 1
        next_at = max(next_at + size / rate, time.monotonic() - 1.0)  # steady, no catch-up burst
        time.sleep(max(0.0, min(next_at, deadline) - time.monotonic()))
    cancel_due(to_cancel, record, now=float("inf"))  # the last ones at once: every cancel is made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="jobs per second, on average")
    parser.add_argument("--record", required=True, help="JSON lines: each call, then its ids or its error")
    args = parser.parse_args()
    import django

    django.setup()
    with open(args.record, "a", buffering=1) as record:
        produce(seconds=args.seconds, seed=args.seed, rate=args.rate, record=record)


if __name__ == "__main__":
    main()
