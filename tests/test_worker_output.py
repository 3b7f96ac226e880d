"""What a worker prints with no LOGGING set, as in a new site: one traceback per failure, and a
cancelled job is not reported as a failure by Django's logger."""

import os

import pytest

import jobs
from jobs.models import Job, JobStatus
from tests import kit_tasks, tasks
from tests.conftest import subprocess_env, wait_for


@pytest.mark.django_db(transaction=True)
def test_one_traceback_per_failure_and_no_failed_line_for_a_cancel(workers, record_dir):
    failing = kit_tasks.retries_connection_errors.enqueue("value")  # not in retry_on: fails for good at once
    log = record_dir / "cancelled"
    running = tasks.cooperative.enqueue(str(log))
    base = os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings")
    proc = workers.start("--concurrency", "2", env=subprocess_env(DJANGO_SETTINGS_MODULE="tests.settings_no_logging",
                                                                 JOBS_TEST_BASE_SETTINGS=base))
    wait_for(lambda: Job.objects.get(pk=failing.id).status == JobStatus.FAILED, message="the failure")
    wait_for(lambda: log.exists() and "started" in log.read_text(), message="the job to start")
    jobs.cancel(running.id, "not needed")
    wait_for(lambda: Job.objects.get(pk=running.id).status == JobStatus.CANCELLED, message="the cancel")
    output = workers.wait_for_output(proc, f"id={running.id} ")
    assert output.count("Traceback (most recent call last)") == 1, output
    assert f"ERROR jobs.worker job finished id={failing.id} " in output, output
    assert "state=FAILED" not in output, output


@pytest.mark.django_db
def test_log_lines_say_what_happens_next_in_words(caplog):
    from jobs.testing import drain

    caplog.set_level("DEBUG", logger="jobs")
    result = tasks.always_fails.enqueue()
    drain(with_scheduled=True)  # the worker's own log lines, at DEBUG
    lines = [r.getMessage() for r in caplog.records if f"job finished id={result.id} " in r.getMessage()]
    assert len(lines) == 3, lines
    assert all("outcome=FAILED retry_in=" in line for line in lines[:2]), lines
    assert 'outcome=FAILED why="no attempts left (3 of 3)" error=builtins.RuntimeError' in lines[2], lines
    assert not [line for line in lines if "RETRY" in line or "next=" in line]


@pytest.mark.django_db  # inside the test's transaction, as in a TestCase
def test_a_worker_inside_a_tests_transaction_says_to_use_drain(caplog):
    from jobs.worker import Worker

    tasks.add.enqueue(1, 2)
    with pytest.raises(RuntimeError, match=r"cannot run inside a transaction .*jobs\.testing\.drain\(\)"):
        Worker(burst=True).run()
    assert not [r for r in caplog.records if "heartbeat failed" in r.getMessage()]


def test_a_cancelled_job_sends_no_task_finished(transactional_db, record_dir):
    import threading

    from django.db import connections

    from jobs.framework import task_finished
    from jobs.worker import Worker

    finished = []
    log = record_dir / "runs"
    running = tasks.cooperative.enqueue(str(log))

    def receiver(sender, task_result, **kwargs):
        if task_result.id == running.id:  # a thread an earlier test left may still finish its own job
            finished.append(task_result.id)

    worker = Worker(burst=True)
    thread = threading.Thread(target=lambda: (worker.run(), connections.close_all()))
    task_finished.connect(receiver)
    try:
        thread.start()
        wait_for(lambda: log.exists() and "started" in log.read_text(), message="the job to start")
        jobs.cancel(running.id, "not needed")
        thread.join(30)
    finally:
        task_finished.disconnect(receiver)
    assert not thread.is_alive() and Job.objects.get(pk=running.id).status == JobStatus.CANCELLED
    assert finished == []  # Django's receiver would have logged it at ERROR as state=FAILED


def test_an_attempt_given_up_on_sends_task_finished_failed_once_and_nothing_when_its_code_returns_later(
        transactional_db, record_dir):
    import threading

    from jobs.framework import TaskResultStatus, task_finished
    from jobs.worker import Worker

    log = record_dir / "runs"
    result = tasks.swallows_timeout.enqueue(str(log))
    sent = []

    def receiver(sender, task_result, **kwargs):
        if task_result.id == result.id:
            sent.append(task_result.status)

    before = set(threading.enumerate())
    task_finished.connect(receiver)
    try:
        Worker(burst=True).run()  # returns once the attempt is given up on and written
        assert Job.objects.get(pk=result.id).status == JobStatus.FAILED
        wait_for(lambda: log.exists() and "returned" in log.read_text(), message="the task's code to return")
        # the abandoned slot's thread ends right after its code returns (and would send then)
        wait_for(lambda: not [t for t in set(threading.enumerate()) - before if t.name.startswith("jobs-slot")],
                 message="the abandoned slot's thread to end")
    finally:
        task_finished.disconnect(receiver)
    assert sent == [TaskResultStatus.FAILED]
    assert Job.objects.get(pk=result.id).status == JobStatus.FAILED
