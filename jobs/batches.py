"""Batches: jobs enqueued together, with callbacks once every one of them has ended.

``with batch(on_success=..., on_failure=..., on_finish=...) as b:`` makes the batch's row
and marks every job the block's thread enqueues through the database backend as a
member (the column ``batch_id``, written by the INSERT itself: bulk enqueue pays
nothing more per job). When the block ends, its members are counted once and the batch
is sealed; from then on the member whose end is the last one counted finishes it
(``jobs.settle``). The block's own end finishes a batch whose members all ended before
it (or that has none).
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import connections, router, transaction
from django.utils import timezone

from .batch_scope import current_batch_id, join


@dataclass(frozen=True)
class Batch:
    """The batch a ``batch()`` block makes; ``id`` is what ``get_batch`` and callbacks take."""

    id: str


@dataclass(frozen=True)
class BatchState:
    """What ``get_batch`` reads: the members by outcome, and whether the batch has finished."""

    id: str
    total: int
    pending: int
    successful: int
    failed: int
    cancelled: int
    finished: bool


def _callback_path(name: str, task) -> str:
    if task is None:
        return ""
    from .backends import DatabaseBackend
    from .framework import Task

    if not isinstance(task, Task):
        raise TypeError(f"batch({name}=...) takes a task (a function decorated with @task), not {task!r}")
    if not isinstance(task.get_backend(), DatabaseBackend):
        raise TypeError(f"batch({name}={task.module_path}): a callback must be a task of "
                        "jobs.backends.DatabaseBackend (it is enqueued by a worker)")
    return task.module_path


@contextmanager
def batch(*, on_success=None, on_failure=None, on_finish=None):
    """Gather the jobs enqueued inside the block into one batch; yields its ``Batch``.

    Each callback is an optional task, enqueued exactly once with the one keyword argument
    ``batch_id`` when every member has ended: ``on_finish`` always, ``on_success`` when every
    member ended SUCCESSFUL, ``on_failure`` when any ended FAILED or CANCELLED. Inside
    ``transaction.atomic()`` the batch and its members commit or roll back with it.
    """
    from .models import Job, JobBatch

    if current_batch_id() is not None:
        raise RuntimeError("batch() blocks do not nest: this thread is inside batch "
                           f"{current_batch_id()} already")
    paths = dict(on_success=_callback_path("on_success", on_success),
                 on_failure=_callback_path("on_failure", on_failure),
                 on_finish=_callback_path("on_finish", on_finish))
    using = router.db_for_write(Job)
    made = JobBatch.objects.using(using).create(id=uuid.uuid4().hex, created_at=timezone.now(), **paths)
    join(made.id)
    try:
        yield Batch(made.id)
    except BaseException:
        join(None)
        if not connections[using].needs_rollback:  # a transaction being rolled back takes the batch with it
            seal(using, made.id)
        raise
    join(None)
    seal(using, made.id)


def seal(using: str, batch_id: str) -> None:
    """The block has ended: count the members once, and finish the batch if they all have."""
    from .models import Job, JobBatch
    from .settle import finish_if_done

    now = timezone.now()
    with transaction.atomic(using=using):
        # The row first (its lock orders this against members ending now), then the count.
        JobBatch.objects.using(using).filter(pk=batch_id).update(sealed_at=now)
        total = Job.objects.using(using).filter(batch_id=batch_id).count()
        JobBatch.objects.using(using).filter(pk=batch_id).update(total=total)
        finish_if_done(using, batch_id, now=now)


def get_batch(batch_id) -> BatchState:
    """The batch's counts; ``LookupError`` for an unknown id."""
    from .models import Job, JobBatch

    using = router.db_for_read(JobBatch)
    row = JobBatch.objects.using(using).filter(pk=str(batch_id)).values(
        "total", "successful", "failed", "cancelled", "sealed_at", "finished_at").first()
    if row is None:
        raise LookupError(f"no batch {batch_id!r}")
    total = row["total"] if row["sealed_at"] else Job.objects.using(using).filter(batch_id=str(batch_id)).count()
    done = row["successful"] + row["failed"] + row["cancelled"]
    return BatchState(id=str(batch_id), total=total, pending=max(total - done, 0), successful=row["successful"],
                      failed=row["failed"], cancelled=row["cancelled"], finished=row["finished_at"] is not None)
