"""Jobs that wait for other jobs: ``enqueue_after(parents, task, ...)`` and ``parent_results()``.

A child is stored WAITING with the number of its parents that have not yet ended
SUCCESSFUL (``waiting_for``); no claim reads a WAITING row. Each parent's success
lowers that number once, in the transaction that records it, and the success that
brings it to 0 makes the child READY (``jobs.settle``); a parent that fails or is
cancelled cancels the child, and its dependents after it, the same way.

The enqueue marks its parents first (``has_dependents``), an UPDATE that locks their
rows: a parent's end recorded at the same moment either commits first (and the child
sees it counted) or waits for this transaction and then finds the mark and the child.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import router, transaction
from django.utils import timezone

from .framework import TaskResult

MAX_PARENTS = 1000  # parents of one child (the position column, and one IN list)


def _parent_id(parent) -> int:
    value = parent.id if isinstance(parent, TaskResult) else parent
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise TypeError(f"enqueue_after(): a parent must be a TaskResult or a result id, not {parent!r}") from None
    if isinstance(value, bool) or number <= 0 or str(number) != str(value).strip():
        raise TypeError(f"enqueue_after(): {parent!r} is not a result id")
    return number


def enqueue_after(parents: Sequence, task, *args, **kwargs) -> TaskResult:
    """Enqueue ``task(*args, **kwargs)`` to run once every parent has ended SUCCESSFUL.

    ``parents``: TaskResults or result ids of jobs of the database backend. Until they
    have, Django's API reports the child READY and no worker claims it; when one ends
    FAILED or CANCELLED, the child ends CANCELLED without running, its error naming that
    parent. Parents already finished count at once. Returns the child's TaskResult.
    """
    from .backends import DatabaseBackend
    from .models import FINISHED_STATUSES, Job, JobDependency, JobStatus
    from .settle import cancel_children

    backend = task.get_backend()
    if not isinstance(backend, DatabaseBackend):
        raise TypeError(f"enqueue_after({task.module_path}): the child must be a task of "
                        "jobs.backends.DatabaseBackend")
    if getattr(task, "unique", False):
        raise TypeError(f"enqueue_after({task.module_path}): a unique task cannot wait for parents (two "
                        "children released at once could not both hold its key)")
    if isinstance(parents, (str, bytes, TaskResult)) or not isinstance(parents, Sequence):
        raise TypeError("enqueue_after(): parents must be a list of TaskResults or result ids")
    ids = [_parent_id(parent) for parent in parents]
    if not ids:
        raise ValueError("enqueue_after(): give at least one parent (or call task.enqueue())")
    if len(ids) > MAX_PARENTS:
        raise ValueError(f"enqueue_after(): {len(ids)} parents; at most {MAX_PARENTS}")
    using = router.db_for_write(Job)
    jobs = Job.objects.using(using)
    with transaction.atomic(using=using):
        jobs.filter(pk__in=set(ids)).update(has_dependents=True)  # locks the parents (see the module's docstring)
        found = {pk: (status, task_path) for pk, status, task_path in jobs.filter(pk__in=set(ids)).values_list(
            "pk", "status", "task_path")}
        missing = [pk for pk in ids if pk not in found]
        if missing:
            raise LookupError(f"enqueue_after(): no job {missing[0]} (a parent must exist when its child is enqueued)")
        ended = next((pk for pk in ids if found[pk][0] in FINISHED_STATUSES
                      and found[pk][0] != JobStatus.SUCCESSFUL), None)
        waiting = len({pk for pk in ids if found[pk][0] != JobStatus.SUCCESSFUL})
        status = JobStatus.WAITING if waiting or ended is not None else JobStatus.READY
        result = backend.enqueue(task, args, kwargs, meta={"parents": ids},
                                 initial=dict(status=status.value, waiting_for=waiting))
        child = int(result.id)
        JobDependency.objects.using(using).bulk_create([
            JobDependency(child_id=child, parent_id=pk, position=position,
                          satisfied=found[pk][0] == JobStatus.SUCCESSFUL)
            for position, pk in enumerate(ids)])
        if ended is not None:
            from .settle import settle

            now = timezone.now()
            cancelled = cancel_children(using, [(ended, found[ended][0], found[ended][1])], now=now)
            settle(using, cancelled, now=now)
            return backend.get_result(child)
    return result


def parent_results() -> list[TaskResult]:
    """Inside a child job: its parents' TaskResults, in the order given to ``enqueue_after``."""
    from . import control
    from .framework import task_backends
    from .models import Job, JobDependency

    attempt = control.current()
    if attempt is None:
        raise RuntimeError("parent_results() is for a task running as a job (a child of enqueue_after())")
    using = router.db_for_read(Job)
    parents = list(JobDependency.objects.using(using).filter(child_id=attempt.job_id).order_by("position")
                   .values_list("parent_id", "parent__backend"))
    return [task_backends[alias].get_result(pk) for pk, alias in parents]
