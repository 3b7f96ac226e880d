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
from django.db.models import F, Q

from .batch_scope import outside_batch
from .exceptions import ParentDidNotSucceed
from .models import BATCH_COUNTS, FINISHED_STATUSES, Job, JobBatch, JobDependency, JobStatus, JSONMerge

logger = logging.getLogger("jobs.worker")

PARENT_ENDED = f"{ParentDidNotSucceed.__module__}.{ParentDidNotSucceed.__qualname__}"  # a cancelled child's error


CHUNK = 500  # ids per IN list (SQLite's parameter limit; a parent may have 100,000 children)


def chunks(ids: list) -> list[list]:
    return [ids[start:start + CHUNK] for start in range(0, len(ids), CHUNK)] if ids else []


def settle_guarded(using: str, ends: dict[int, str], *, now: datetime, known: dict[int, tuple] | None = None) -> None:
    """``settle`` in a savepoint, for a worker recording outcomes: a row that what it sets off
    cannot write (a child or batch row damaged past the queue's code) is logged, naming the jobs,
    and the outcomes stand; a lost connection still raises."""
    from django.db import InterfaceError, OperationalError

    try:
        with transaction.atomic(using=using):
            settle(using, ends, now=now, known=known)
    except (OperationalError, InterfaceError):
        raise
    except Exception:  # noqa: BLE001 - logged; the outcome must not be lost for it
        logger.exception("what the end of jobs %s sets off (children, batch) could not be written; their "
                         "outcomes stand", sorted(ends)[:20])


def settle(using: str, ends: dict[int, str], *, now: datetime, known: dict[int, tuple] | None = None) -> None:
    """``ends``: job id -> the final status just written for it (or, for a job about to be
    deleted unfinished, CANCELLED). Children of a job that ended SUCCESSFUL count it (and
    become READY when it was the last); children of one that failed or was cancelled end
    CANCELLED, and so do theirs; each member's end is counted on its batch, which finishes
    when the last is. ``known``: id -> (batch id, task path) of jobs known to be parents (the
    mark never goes away), whose row need not be read again."""
    known = known or {}
    while ends:
        unknown = [pk for pk in ends if pk not in known]
        rows = [(pk, batch, True, task_path) for pk, (batch, task_path) in known.items() if pk in ends]
        rows += [row for ids in chunks(unknown) for row in Job.objects.using(using).filter(pk__in=ids).filter(
            Q(batch_id__isnull=False) | Q(has_dependents=True)).values_list("pk", "batch_id", "has_dependents",
                                                                            "task_path")]
        known = {}
        if not rows:
            return
        count_members(using, [(batch, ends[pk]) for pk, batch, _, _ in rows if batch], now=now)
        parents = [(pk, ends[pk], task_path) for pk, _, has_dependents, task_path in rows if has_dependents]
        release_children(using, [pk for pk, status, _ in parents if status == JobStatus.SUCCESSFUL], now=now)
        ends = cancel_children(using, [p for p in parents if p[1] != JobStatus.SUCCESSFUL], now=now)


def release_children(using: str, parents: list[int], *, now: datetime) -> list[int]:
    """The parents ended SUCCESSFUL: each child counts each once; those left waiting for none
    become READY (PostgreSQL: and the listening workers are told, on commit). Returns the
    children released. On PostgreSQL and SQLite two statements, whatever the fan-out within a
    chunk: the links marked (handing back their children), then the children counted and
    released in one UPDATE; MySQL reads what it cannot have handed back."""
    connection = connections[using]
    returning = connection.vendor in ("postgresql", "sqlite")
    children: list[int] = []
    for ids in chunks(parents):
        children += satisfy_links(connection, ids, returning=returning)
    if not children:
        return []
    by_count: dict[int, list[int]] = defaultdict(list)
    for child, count in Counter(children).items():
        by_count[count].append(child)
    released: list[tuple[int, str]] = []
    for count, waiting in by_count.items():
        for ids in chunks(waiting):
            released += count_down(connection, ids, count, returning=returning)
    if connection.vendor != "postgresql":
        wake(using, {queue for _, queue in released})
    return [pk for pk, _ in released]


def satisfy_links(connection, parents: list[int], *, returning: bool) -> list[int]:
    """Mark the unsatisfied links of ``parents`` satisfied; the child of each (once per link)."""
    qn = connection.ops.quote_name
    table = qn(JobDependency._meta.db_table)
    child, parent, satisfied = (qn(JobDependency._meta.get_field(name).column)
                                for name in ("child", "parent", "satisfied"))
    marks = ", ".join(["%s"] * len(parents))
    where = f"{parent} IN ({marks}) AND NOT {satisfied}"
    with connection.cursor() as cursor:
        if returning:
            cursor.execute(f"UPDATE {table} SET {satisfied} = TRUE WHERE {where} RETURNING {child}", parents)
            return [row[0] for row in cursor.fetchall()]
        cursor.execute(f"SELECT {child} FROM {table} WHERE {where} FOR UPDATE", parents)
        found = [row[0] for row in cursor.fetchall()]
        if found:
            cursor.execute(f"UPDATE {table} SET {satisfied} = TRUE WHERE {where}", parents)
        return found


def count_down(connection, children: list[int], count: int, *, returning: bool) -> list[tuple[int, str]]:
    """``count`` more parents of each WAITING child succeeded: lower its count, never below 0 (an
    unsigned column on MySQL refuses the subtraction itself), and make it READY when that was the
    last. ``status`` is set first: MySQL evaluates the assignments in order, the others on the row
    as it was. Returns (id, queue) of the children released."""
    qn = connection.ops.quote_name
    col = {name: qn(Job._meta.get_field(name).column) for name in ("id", "status", "waiting_for", "queue_name")}
    table = qn(Job._meta.db_table)
    marks = ", ".join(["%s"] * len(children))
    ready, waiting = JobStatus.READY.value, JobStatus.WAITING.value
    update = (f"UPDATE {table} SET {col['status']} = CASE WHEN {col['waiting_for']} <= %s THEN '{ready}' "
              f"ELSE {col['status']} END, {col['waiting_for']} = CASE WHEN {col['waiting_for']} > %s "
              f"THEN {col['waiting_for']} - %s ELSE 0 END "
              f"WHERE {col['id']} IN ({marks}) AND {col['status']} = '{waiting}'")
    params = [count, count, count, *children]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # the wake-up in the same statement, delivered on commit
            from .wakeup import CHANNEL

            cursor.execute(f"WITH r AS ({update} RETURNING {col['id']} AS id, {col['queue_name']} AS queue, "
                           f"{col['status']} AS status) SELECT id, queue, status, CASE WHEN status = '{ready}' "
                           f"THEN pg_notify('{CHANNEL}', queue) END FROM r", params)
            return [(pk, queue) for pk, queue, status, _ in cursor.fetchall() if status == ready]
        if returning:
            cursor.execute(f"{update} RETURNING {col['id']}, {col['queue_name']}, {col['status']}", params)
            return [(pk, queue) for pk, queue, status in cursor.fetchall() if status == ready]
        cursor.execute(update, params)
        cursor.execute(f"SELECT {col['id']}, {col['queue_name']} FROM {table} WHERE {col['id']} IN ({marks}) "
                       f"AND {col['status']} = '{ready}' AND {col['waiting_for']} = 0", children)
        return [tuple(row) for row in cursor.fetchall()]


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
