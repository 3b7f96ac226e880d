"""Benchmark hooks for django-background-tasks (contract: bench/README.md).

Quirks: ``process_tasks`` sleeps a random 0-0.1 s after *every* task it runs
(``SignalManager.time_to_wait``), which caps one worker near 20 jobs/s, and
``--sleep`` (default 5 s) between polls of an empty queue. Both are left at
their defaults. A finished task's row moves from ``Task`` to ``CompletedTask``.
"""

from background_task.models import CompletedTask, Task
from bench_app.tasks import noop, stamp
from django.db import transaction

WORKER_ARGS = ["process_tasks"]
IDLE_POLL_SECONDS = 5.0  # process_tasks --sleep default


def enqueue_each(n: int) -> None:
    for _ in range(n):
        noop()


def enqueue_in_transaction(n: int) -> None:
    with transaction.atomic():
        for _ in range(n):
            noop()


enqueue = enqueue_in_transaction  # no bulk API


def enqueue_stamp(token: str) -> None:
    stamp(token)


def remaining() -> int:
    # Tasks are deleted once done (successfully or, after MAX_ATTEMPTS, not).
    return Task.objects.count()


def failed() -> int:
    return CompletedTask.objects.filter(failed_at__isnull=False).count()
