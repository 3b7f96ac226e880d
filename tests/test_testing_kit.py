"""``jobs.testing``: drain() runs jobs through the worker's own code, in the test's thread and
transaction; enqueued()/assert_enqueued()/assert_not_enqueued() say what is queued."""

import logging
import threading
import time

import pytest
from django.contrib.auth.models import Group
from django.db import connection, connections
from django.utils import timezone

import jobs
from jobs import signals
from jobs.framework import TaskResultStatus
from jobs.models import Job, JobStatus
from jobs.testing import assert_enqueued, assert_not_enqueued, drain, enqueued
from tests import kit_tasks, tasks

pytestmark = pytest.mark.django_db  # TestCase-like: every test inside one transaction


def test_a_task_with_retries_runs_all_its_attempts_with_scheduled():
    result = kit_tasks.flaky.enqueue("ok", fails=2)
    first = drain()  # the retry waits for its back-off: not due yet
    assert (first.ran, first.retried, first.successful) == (1, 1, 0)
    assert_enqueued(kit_tasks.flaky, args=["ok"], kwargs={"fails": 2})
    rest = drain(with_scheduled=True)
    assert (rest.ran, rest.successful, rest.retried, rest.failed) == (2, 1, 1, 0)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3
    assert [e.exception_class_path for e in result.errors] == ["builtins.ConnectionError"] * 2
    assert len(result.worker_ids) == 3 and Group.objects.filter(name="ok").exists()


def test_max_attempts_is_held_and_the_final_failure_is_announced_once():
    failed = []

    def receiver(sender, **kwargs):
        failed.append((kwargs["job_id"], kwargs["attempts"]))

    signals.job_failed.connect(receiver)
    try:
        result = kit_tasks.flaky.enqueue("never", fails=99)
        drained = drain(with_scheduled=True)
    finally:
        signals.job_failed.disconnect(receiver)
    assert (drained.ran, drained.retried, drained.failed) == (3, 2, 1)
    assert failed == [(int(result.id), 3)]
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and len(result.errors) == 3
    assert_not_enqueued(kit_tasks.flaky)


def test_jobs_enqueued_by_jobs_run_too_and_a_queue_can_be_chosen():
    kit_tasks.fan_out.enqueue(["a", "b"])
    kit_tasks.send_mail.enqueue("x@example.com")
    only_mail = drain("emails")
    assert (only_mail.ran, only_mail.successful) == (1, 1)
    assert_enqueued(kit_tasks.fan_out, count=1)
    rest = drain()
    assert rest.ran == 3 and sorted(Group.objects.values_list("name", flat=True)) == ["a", "b"]
    assert enqueued() == []


def test_raise_errors_reraises_after_the_outcome_is_recorded():
    result = tasks.always_fails.enqueue()
    with pytest.raises(RuntimeError, match="this task always fails"):
        drain(raise_errors=True)
    assert Job.objects.get(pk=result.id).status == JobStatus.READY  # recorded: a retry, 1 of 3
    assert len(Job.objects.get(pk=result.id).errors) == 1


def test_a_database_error_inside_the_tests_transaction_is_recorded_and_the_test_goes_on():
    Group.objects.create(name="kept")
    result = kit_tasks.duplicate_group.enqueue("dup")
    drained = drain()
    assert drained.failed == 1
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and "IntegrityError" in result.errors[0].exception_class_path
    # The attempt's own writes are gone with it; the test's are not, and its transaction still works.
    assert list(Group.objects.values_list("name", flat=True)) == ["kept"]


def test_a_task_left_inside_atomic_is_failed_and_the_tests_transaction_survives():
    result = tasks.leaves_atomic_open.enqueue("left-open")
    drain()
    job = Job.objects.get(pk=result.id)
    assert job.status == JobStatus.FAILED and "TransactionLeftOpen" in job.errors[0]["exception_class_path"]
    assert connection.in_atomic_block and len(connection.atomic_blocks) == 1  # the test's own, as before


def test_a_sync_task_past_its_timeout_is_interrupted_in_the_main_thread():
    result = kit_tasks.sleeps.enqueue(30)
    started = time.monotonic()
    drained = drain()
    assert time.monotonic() - started < 10 and drained.failed == 1
    error = Job.objects.get(pk=result.id).errors[0]
    assert error["exception_class_path"] == "jobs.exceptions.JobTimeout" and "timed out after 0.5s" in error["message"]


def test_an_async_task_past_its_timeout_fails_as_timed_out():
    result = tasks.async_sleeps.enqueue(30)
    started = time.monotonic()
    drain()
    assert time.monotonic() - started < 10
    error = Job.objects.get(pk=result.id).errors[0]
    assert error["exception_class_path"] == "jobs.exceptions.JobTimeout" and "after 0.3s" in error["message"]


@pytest.mark.django_db(transaction=True)  # the thread has a connection of its own: it must see the job
def test_outside_the_main_thread_a_late_attempt_fails_as_timed_out():
    result = kit_tasks.sleeps.enqueue(0.7)
    done = []

    def run():
        try:
            done.append(drain())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert done and done[0].failed == 1, done
    assert Job.objects.get(pk=result.id).errors[0]["exception_class_path"] == "jobs.exceptions.JobTimeout"


def test_progress_is_recorded_and_cancel_requested_is_false_inside_drain():
    result = kit_tasks.reports.enqueue(3)
    drain()
    result.refresh()
    assert result.return_value is False
    assert jobs.get_progress(result.id)["done"] == 3


def test_the_worker_rules_hold_a_path_that_is_not_a_task_fails_at_once():
    job = Job.objects.create(task_path="os.system", args=["true"], kwargs={}, queue_name="default",
                             run_after=timezone.now(), enqueued_at=timezone.now())
    drained = drain()
    job.refresh_from_db()
    assert drained.failed == 1 and job.status == JobStatus.FAILED
    assert "TaskNotAllowed" in job.errors[0]["exception_class_path"]


def test_a_failing_task_prints_nothing(caplog, capsys):
    caplog.set_level(logging.DEBUG)
    tasks.always_fails.enqueue()
    drain(with_scheduled=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("jobs")]
    assert "Traceback" not in capsys.readouterr().err


def test_assert_enqueued_lists_what_is_enqueued():
    kit_tasks.send_mail.enqueue("bob@example.com")
    tasks.add.enqueue(1, 2)
    with pytest.raises(AssertionError) as raised:
        assert_enqueued(kit_tasks.send_mail, args=["alice@example.com"])
    message = str(raised.value)
    assert "expected tests.kit_tasks.send_mail args=['alice@example.com'] to be enqueued, found 0" in message
    assert "tests.kit_tasks.send_mail(args=['bob@example.com'], kwargs={}) queue='emails'" in message
    assert "tests.tasks.add(args=[1, 2], kwargs={}) queue='default'" in message
    with pytest.raises(AssertionError, match=r"\(count=2\) to be enqueued, found 1"):
        assert_enqueued(tasks.add, count=2)
    with pytest.raises(AssertionError, match=r"expected no tests.tasks.add to be enqueued, found 1"):
        assert_not_enqueued(tasks.add)
    assert_not_enqueued(tasks.add, args=[2, 2])


def test_enqueued_compares_arguments_as_stored_and_returns_task_results_oldest_first():
    first = tasks.add.enqueue(1, 2)
    tasks.add.enqueue(3, 4)
    found = enqueued(tasks.add, args=(1, 2))  # a tuple matches the list JSON stores
    assert [r.id for r in found] == [first.id] and found[0].status == TaskResultStatus.READY
    assert [r.args for r in enqueued("tests.tasks.add")] == [[1, 2], [3, 4]]
    assert enqueued(queue_name="emails") == []


def test_a_backend_that_is_not_the_database_one_is_named():
    with pytest.raises(ValueError, match="TASKS has no usable backend 'nope'"):
        drain(backend="nope")
