"""The Django Tasks API on the database backend: enqueue, results, validation, transactions."""

import threading
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connections, transaction
from django.utils import timezone

from jobs.execution import attempt_limit
from jobs.framework import InvalidTask, TaskResultDoesNotExist, TaskResultStatus, default_task_backend
from jobs.models import Job, JobStatus
from tests import tasks


def count_from_another_connection() -> int:
    """Count jobs through a different connection (another thread), as a worker would see them."""
    seen = []

    def look():
        try:
            seen.append(Job.objects.count())
        finally:
            connections.close_all()

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    return seen[0]


def test_capabilities():
    backend = default_task_backend
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority


@pytest.mark.django_db
def test_enqueue_writes_a_ready_row():
    result = tasks.add.using(priority=5, queue_name="emails").enqueue(2, b=3)
    job = Job.objects.get(pk=int(result.id))
    assert job.task_path == "tests.tasks.add"
    assert (job.args, job.kwargs) == ([2], {"b": 3})
    assert (job.queue_name, job.priority, job.status) == ("emails", 5, JobStatus.READY)
    assert job.max_attempts is None and job.attempts == 0  # no limit of its own: OPTIONS' applies (3)
    assert attempt_limit(job, default_task_backend) == 3
    assert result.status == TaskResultStatus.READY
    assert job.run_after == job.enqueued_at  # due at once


@pytest.mark.django_db
def test_max_attempts_from_the_task_overrides_options():
    result = tasks.always_fails_five.enqueue()
    assert Job.objects.get(pk=int(result.id)).max_attempts == 5


@pytest.mark.django_db
def test_run_after_is_stored():
    when = timezone.now() + timedelta(hours=1)
    result = tasks.add.using(run_after=when).enqueue(1, 1)
    assert Job.objects.get(pk=int(result.id)).run_after == when


@pytest.mark.django_db
def test_unknown_queue_is_an_error_at_enqueue():
    with pytest.raises(InvalidTask, match="nope"):
        tasks.add.using(queue_name="nope").enqueue(1, 2)
    assert not Job.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("args,kwargs,culprit", [
    ((object(),), {}, "positional argument 0"),
    ((1, {"when": timezone.now()}), {}, "positional argument 1"),
    ((), {"a": 1, "b": {1, 2}}, "keyword argument 'b'"),
    ((float("nan"),), {}, "positional argument 0"),
])
def test_non_json_arguments_raise_and_write_nothing(args, kwargs, culprit):
    with pytest.raises(TypeError) as info:
        tasks.add.enqueue(*args, **kwargs)
    assert culprit in str(info.value) and "tests.tasks.add" in str(info.value)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_tuples_become_lists():
    result = tasks.add.enqueue((1, 2), [3])
    assert result.args == [[1, 2], [3]]


@pytest.mark.django_db(transaction=True)
def test_enqueue_in_a_transaction_is_seen_only_after_commit():
    with transaction.atomic():
        tasks.add.enqueue(1, 2)
        assert Job.objects.count() == 1  # this connection sees its own write
        assert count_from_another_connection() == 0
    assert count_from_another_connection() == 1


@pytest.mark.django_db(transaction=True)
def test_enqueue_rolled_back_vanishes():
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            tasks.add.enqueue(1, 2)
            raise RuntimeError("roll back")
    assert Job.objects.count() == 0
    assert count_from_another_connection() == 0


@pytest.mark.django_db
def test_get_result_of_a_ready_job():
    result = tasks.add.enqueue(1, 2)
    fetched = tasks.add.get_result(result.id)
    assert fetched.id == result.id and fetched.status == TaskResultStatus.READY
    assert fetched.args == [1, 2] and fetched.errors == [] and fetched.attempts == 0
    with pytest.raises(ValueError):
        fetched.return_value  # noqa: B018  (not finished yet)


@pytest.mark.django_db
@pytest.mark.parametrize("result_id", ["999999", "not-a-number", ""])
def test_get_result_of_unknown_id(result_id):
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(result_id)


@pytest.mark.django_db(transaction=True)
def test_async_enqueue_and_get_result():
    result = async_to_sync(tasks.async_add.aenqueue)(1, 2)
    fetched = async_to_sync(tasks.async_add.aget_result)(result.id)
    assert fetched.status == TaskResultStatus.READY and fetched.args == [1, 2]


def test_invalid_task_options_are_rejected_at_declaration():
    from jobs import task

    f = tasks.noop.func
    with pytest.raises(InvalidTask, match="max_attempts"):
        task(max_attempts=0)(f)
    with pytest.raises(InvalidTask, match="timeout"):
        task(timeout=-1)(f)
    with pytest.raises(InvalidTask, match="backoff"):
        task(backoff=3)(f)


@pytest.mark.django_db
def test_priority_out_of_range_is_rejected():
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=101).enqueue(1, 2)


def test_a_project_without_tasks_setting_gets_this_backend(tmp_path):
    """Adding "jobs" to INSTALLED_APPS is enough: TASKS defaults to the database backend."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import django; django.setup(); from jobs.framework import task_backends; b = task_backends[\"default\"]; "
            "print(type(b).__name__, sorted(b.queues))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "tests.settings_without_tasks",
                               "JOBS_TEST_TMP": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "DatabaseBackend []"
