"""Benchmark hooks for procrastinate (contract: bench/README.md).

The worker is ``manage.py procrastinate worker --concurrency 1`` (1 is also
the default). It learns about new jobs through LISTEN/NOTIFY and otherwise
polls every 5 s; finished jobs stay in ``procrastinate_jobs`` with status
``succeeded`` (default ``--delete-jobs=never``). Deferring from Django code
goes through Django's own connection, so a batch joins ``transaction.atomic``.
"""

from bench_app.tasks import noop, stamp
from django.db import transaction
from procrastinate.contrib.django.models import ProcrastinateJob

WORKER_ARGS = ["procrastinate", "worker", "--concurrency", "1"]
IDLE_POLL_SECONDS = 1.0  # LISTEN/NOTIFY wakes it up; the 5 s poll is a fallback


def enqueue_each(n: int) -> None:
    for _ in range(n):
        noop.defer()


def enqueue_in_transaction(n: int) -> None:
    with transaction.atomic():
        for _ in range(n):
            noop.defer()


def enqueue_bulk(n: int) -> None:
    with transaction.atomic():
        noop.batch_defer(*({} for _ in range(n)))


enqueue = enqueue_bulk


def enqueue_stamp(token: str) -> None:
    stamp.defer(token=token)


def remaining() -> int:
    return ProcrastinateJob.objects.filter(status__in=["todo", "doing"]).count()


def failed() -> int:
    return ProcrastinateJob.objects.filter(status="failed").count()
