"""What a job's end sets off: its waiting children, and its batch's count and callbacks.

``settle`` runs in the transaction that records the end (a worker's outcome, the stale
sweep's take-back, a cancel, a delete), so a child's release and a callback's enqueue
commit or roll back with the outcome that completes them: a worker killed at any
moment loses neither, and none happens twice (the end is written once, fenced on its
attempt). Jobs that are in no batch and that nothing waits for cost one primary-key
read here, and the worker's common path does not call it for them at all
(``jobs.store``: only rows marked at claim or at write time come here).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from datetime import datetime

from django.db import connections, transaction
from django.db.models import Case, F, Q, Value, When

from .batch_scope import outside_batch
from .models import BATCH_COUNTS, FINISHED_STATUSES, Job, JobBatch, JobDependency, JobStatus, JSONMerge

logger = logging.getLogger("jobs.worker")

PARENT_ENDED = "jobs.exceptions.ParentDidNotSucceed"  # the error class a cancelled child shows


CHUNK = 500  # ids per IN list (SQLite's parameter limit; a parent may have 100,000 children)


def chunks(ids: list) -> list[list]:
    return [ids[start:start + CHUNK] for start in range(0, len(ids), CHUNK)] if ids else []


def settle_guarded(using: str, ends: dict[int, str], *, now: datetime) -> None:
    """``settle`` in a savepoint, for a worker recording outcomes: a row that what it sets off
    cannot write (a child or batch row damaged past the queue's code) is logged, naming the jobs,
    and the outcomes stand; a lost connection still raises."""
    from django.db import InterfaceError, OperationalError

    try:
        with transaction.atomic(using=using):
            settle(using, ends, now=now)
    except (OperationalError, InterfaceError):
        raise
    except Exception:  # noqa: BLE001 - logged; the outcome must not be lost for it
        logger.exception("what the end of jobs %s sets off (children, batch) could not be written; their "
                         "outcomes stand", sorted(ends)[:20])


def settle(using: str, ends: dict[int, str], *, now: datetime) -> None:
    """``ends``: job id -> the final status just written for it (or, for a job about to be
    deleted unfinished, CANCELLED). Children of a job that ended SUCCESSFUL count it (and
    become READY when it was the last); children of one that failed or was cancelled end
    CANCELLED, and so do theirs; each member's end is counted on its batch, which finishes
    when the last is."""
    while ends:
        rows = [row for ids in chunks(list(ends)) for row in Job.objects.using(using).filter(pk__in=ids).filter(
            Q(batch_id__isnull=False) | Q(has_dependents=True)).values_list("pk", "batch_id", "has_dependents",
                                                                            "task_path")]
        if not rows:
            return
        count_members(using, [(batch, ends[pk]) for pk, batch, _, _ in rows if batch], now=now)
        parents = [(pk, ends[pk], task_path) for pk, _, has_dependents, task_path in rows if has_dependents]
        release_children(using, [pk for pk, status, _ in parents if status == JobStatus.SUCCESSFUL], now=now)
        ends = cancel_children(using, [p for p in parents if p[1] != JobStatus.SUCCESSFUL], now=now)


def release_children(using: str, parents: list[int], *, now: datetime) -> list[int]:
    """The parents ended SUCCESSFUL: each child counts each once; those left waiting for none
    become READY. Returns the children released."""
    if not parents:
        return []
    links = [link for ids in chunks(parents) for link in JobDependency.objects.using(using).filter(
        parent_id__in=ids, satisfied=False).values_list("pk", "child_id")]
    if not links:
        return []
    for ids in chunks([pk for pk, _ in links]):
        JobDependency.objects.using(using).filter(pk__in=ids).update(satisfied=True)
    counts = Counter(child for _, child in links)
    by_count: dict[int, list[int]] = defaultdict(list)
    for child, count in counts.items():
        by_count[count].append(child)
    jobs = Job.objects.using(using)
    for count, children in by_count.items():
        for ids in chunks(children):
            # Never below 0 (an unsigned column on MySQL would refuse the subtraction itself).
            jobs.filter(pk__in=ids, status=JobStatus.WAITING).update(
                waiting_for=Case(When(waiting_for__gt=count, then=F("waiting_for") - count), default=Value(0)))
    released, queues = [], set()
    for ids in chunks(list(counts)):
        ready = jobs.filter(pk__in=ids, status=JobStatus.WAITING, waiting_for=0)
        found = list(ready.values_list("pk", "queue_name"))
        if found and ready.filter(pk__in=[pk for pk, _ in found]).update(status=JobStatus.READY):
            released += [pk for pk, _ in found]
            queues |= {queue for _, queue in found}
    wake(using, queues)
    return released


def cancel_children(using: str, parents: list[tuple[int, str, str]], *, now: datetime) -> dict[int, str]:
    """The parents (id, status, task path) failed, were cancelled or deleted: their waiting
    children end CANCELLED without running, the error naming the parent. Returns them, ended."""
    ended: dict[int, str] = {}
    for parent, status, task_path in parents:
        children = list(JobDependency.objects.using(using).filter(parent_id=parent).values_list("child_id", flat=True))
        outcome = "was deleted" if status not in FINISHED_STATUSES else f"ended {status}"
        message = f"not run: its parent job #{parent} ({task_path}) {outcome}"
        error = {"attempt": 0, "exception_class_path": PARENT_ENDED, "message": message, "traceback": "",
                 "worker_id": "", "at": now.isoformat()}
        for ids in chunks(children):
            changed = Job.objects.using(using).filter(pk__in=ids, status=JobStatus.WAITING).update_returning(
                status=JobStatus.CANCELLED, finished_at=now, errors=[error], error_class=PARENT_ENDED,
                meta=JSONMerge("meta", {"cancelled": {"at": now.isoformat(), "by": "", "reason": message}}))
            ended.update({job.pk: JobStatus.CANCELLED for job in changed})
    return ended


def count_members(using: str, ends: list[tuple[str, str]], *, now: datetime) -> None:
    """Each (batch id, status) is one member's end: counted on its batch (unless the batch has
    finished: a requeued member of a finished batch changes nothing), which may finish."""
    by_batch: dict[str, Counter] = defaultdict(Counter)
    for batch, status in ends:
        by_batch[batch][JobStatus.CANCELLED if status == DELETED else status] += 1
    for batch in sorted(by_batch, key=str):  # one lock order for every transaction: no deadlock between two
        counts = by_batch[batch]
        added = {field: F(field) + counts[status] for field, status in BATCH_COUNTS.items() if counts[status]}
        if added and JobBatch.objects.using(using).filter(pk=batch, finished_at__isnull=True).update(**added):
            finish_if_done(using, batch, now=now)


DELETED = "DELETED"  # a job deleted before it ended: cancelled, for what waits on it


def finish_if_done(using: str, batch: str, *, now: datetime) -> bool:
    """Finish the batch if its block has ended and every member is counted: mark it finished and
    enqueue its callbacks, in the caller's transaction (which holds, or now takes, its row lock)."""
    rows = JobBatch.objects.using(using).filter(pk=batch, finished_at__isnull=True, sealed_at__isnull=False)
    state = rows.values("total", "successful", "failed", "cancelled", "on_success", "on_failure",
                        "on_finish").first()
    if state is None or state["successful"] + state["failed"] + state["cancelled"] < state["total"]:
        return False
    if not rows.update(finished_at=now):
        return False
    succeeded = state["failed"] == 0 and state["cancelled"] == 0
    paths = [state["on_success"] if succeeded else state["on_failure"], state["on_finish"]]
    fired = [enqueue_callback(using, path, batch) for path in paths if path]
    if fired:
        JobBatch.objects.using(using).filter(pk=batch).update(callbacks=fired)
    logger.info("batch finished id=%s total=%d successful=%d failed=%d cancelled=%d callbacks=%s", batch,
                state["total"], state["successful"], state["failed"], state["cancelled"], fired)
    return True


def enqueue_callback(using: str, path: str, batch: str) -> dict:
    """Enqueue one callback (``batch_id=...``) in the caller's transaction. A callback that cannot
    be enqueued (its task is gone from the code) is logged and noted on the batch; it must not
    undo the member's outcome that finished the batch."""
    from .resolve import resolve_task

    try:
        with transaction.atomic(using=using), outside_batch():
            result = resolve_task(path).enqueue(batch_id=batch)
        return {"task": path, "job": int(result.id)}
    except Exception as exc:  # noqa: BLE001 - named in the log and on the batch
        logger.error("batch callback not enqueued id=%s task=%s: %s: %s", batch, path, type(exc).__name__, exc)
        return {"task": path, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}


def wake(using: str, queues) -> None:
    """Jobs became READY without an INSERT: tell PostgreSQL's listening workers (on commit)."""
    connection = connections[using]
    if connection.vendor != "postgresql" or not queues:
        return
    from .wakeup import CHANNEL

    with connection.cursor() as cursor:
        for queue in sorted(queues):
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, queue])
