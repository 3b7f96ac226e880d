"""Benchmark hooks for django-q2 with the ORM broker (contract: bench/README.md).

``qcluster`` runs a sentinel that forks a pusher, a monitor and (here) one
worker process; the pusher polls the ``OrmQ`` table every ``poll`` (0.2 s)
when it is empty. A queued job's ``OrmQ`` row is deleted only once its
result has been saved, so the remaining ``OrmQ`` rows are the unfinished
jobs (the result table can't be counted: django-q2 keeps only the last
``save_limit`` = 250 successes).
"""

from django.db import transaction
from django_q.models import Failure, OrmQ
from django_q.tasks import async_task

WORKER_ARGS = ["qcluster"]
IDLE_POLL_SECONDS = 0.2


def enqueue_each(n: int) -> None:
    for _ in range(n):
        async_task("bench_app.tasks.noop")


def enqueue_in_transaction(n: int) -> None:
    with transaction.atomic():
        for _ in range(n):
            async_task("bench_app.tasks.noop")


enqueue = enqueue_in_transaction  # no bulk API for the ORM broker


def enqueue_stamp(token: str) -> None:
    async_task("bench_app.tasks.stamp", token)


def remaining() -> int:
    return OrmQ.objects.count()


def failed() -> int:
    return Failure.objects.count()
