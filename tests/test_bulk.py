"""Bulk enqueue: one statement per batch, all or nothing, same rows as one-by-one."""

import pytest
from django.db import transaction

from jobs import enqueue_many
from jobs.models import Job, JobStatus
from tests import tasks


@pytest.mark.django_db
def test_enqueue_many_writes_one_row_per_call():
    results = enqueue_many(tasks.add.using(priority=3), [((i, i), {}) for i in range(2500)])
    assert len(results) == 2500 and len({r.id for r in results}) == 2500
    jobs = Job.objects.order_by("id")
    assert jobs.count() == 2500
    first = jobs.first()
    assert first.args == [0, 0] and first.priority == 3 and first.status == JobStatus.READY
    assert results[0].id == str(first.pk) and results[0].args == [0, 0]


@pytest.mark.django_db
def test_enqueue_many_checks_every_call_before_writing():
    calls = [((1, 2), {}), ((3,), {"b": object()}), ((5, 6), {})]
    with pytest.raises(TypeError, match=r"call 1: .*keyword argument 'b'"):
        enqueue_many(tasks.add, calls)
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_enqueue_many_rolls_back_with_the_caller():
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            enqueue_many(tasks.add, [((1, 2), {})] * 10)
            raise RuntimeError
    assert not Job.objects.exists()


def test_bulk_jobs_run(run_worker):
    results = enqueue_many(tasks.add, [((i, 1), {}) for i in range(50)])
    run_worker(concurrency=2)
    assert sorted(Job.objects.values_list("return_value", flat=True)) == list(range(1, 51))
    assert tasks.add.get_result(results[7].id).return_value == 8
