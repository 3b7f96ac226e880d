"""Benchmark hooks for django-tasks-db (contract: bench/README.md).

The worker is ``db_worker`` with its defaults (``--interval 1``: poll an empty
queue once a second) except ``--no-startup-delay``: by default it first sleeps
a random 0-1 s to spread a fleet of workers, which for a single measured
worker only adds noise to the start-up time.
"""

from bench_app.tasks import noop, stamp
from django.db import transaction
from django_tasks_db.models import DBTaskResult

WORKER_ARGS = ["db_worker", "--no-startup-delay"]
IDLE_POLL_SECONDS = 1.0


def enqueue_each(n: int) -> None:
    for _ in range(n):
        noop.enqueue()


def enqueue_in_transaction(n: int) -> None:
    with transaction.atomic():
        for _ in range(n):
            noop.enqueue()


enqueue = enqueue_in_transaction  # Django's Task API has no bulk enqueue


def enqueue_stamp(token: str) -> None:
    stamp.enqueue(token)


def remaining() -> int:
    return DBTaskResult.objects.filter(status__in=["READY", "RUNNING"]).count()


def failed() -> int:
    return DBTaskResult.objects.filter(status="FAILED").count()
