"""Cancelling jobs (READY, and RUNNING: cooperative, async, stubborn) and their progress (issue 12)."""

from __future__ import annotations

import signal
import time

import pytest
from django.utils import timezone

import jobs
from jobs import control
from jobs.models import Job, JobStatus
from tests import tasks
from tests.conftest import wait_for


def job(result) -> Job:
    return Job.objects.get(pk=int(result.id))


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_ready_job_is_cancelled_at_once_and_never_runs(run_worker, record_dir):
    path = record_dir / "runs"
    result = tasks.cooperative.enqueue(str(path))
    assert jobs.cancel(result.id, "not needed", by="ann") == control.CANCELLED
    run_worker()
    cancelled = job(result)
    assert cancelled.status == JobStatus.CANCELLED and cancelled.attempts == 0 and not path.exists()
    assert cancelled.meta["cancelled"]["reason"] == "not needed" and cancelled.meta["cancelled"]["by"] == "ann"


def test_a_finished_job_is_left_as_it_was(run_worker):
    result = tasks.add.enqueue(1, 2)
    run_worker()
    assert jobs.cancel(result.id) == control.FINISHED
    assert job(result).status == JobStatus.SUCCESSFUL


def test_cancel_of_no_job_says_so(db):
    from jobs.framework import TaskResultDoesNotExist

    for missing in ("99999", "not-an-id"):
        with pytest.raises(TaskResultDoesNotExist):
            jobs.cancel(missing)


@pytest.mark.parametrize("task,seen", [(tasks.cooperative, "saw the cancel"), (tasks.async_waits, "cancelled")])
def test_a_running_job_that_heeds_the_cancel_ends_cancelled_soon_and_is_not_retried(workers, record_dir, task, seen):
    path = record_dir / "runs"
    proc = workers.start()
    result = task.enqueue(str(path))
    wait_for(lambda: "started" in lines(path), message="the job to start")
    asked = time.monotonic()
    assert jobs.cancel(result.id, "changed my mind", by="bob") == control.REQUESTED
    wait_for(lambda: job(result).status == JobStatus.CANCELLED, timeout=15, message="the job to end CANCELLED")
    took = time.monotonic() - asked
    assert took < 5  # PostgreSQL: the wake-up channel; SQLite: the next heartbeat (1 s here)
    cancelled = job(result)
    assert cancelled.attempts == 1 and cancelled.errors[-1]["exception_class_path"] == "jobs.exceptions.JobCancelled"
    assert cancelled.meta["cancelled"]["reason"] == "changed my mind" and seen in lines(path)
    after = tasks.add.enqueue(2, 2)  # the worker goes on
    wait_for(lambda: job(after).status == JobStatus.SUCCESSFUL, message="the next job")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, workers.output(proc)


def test_a_running_job_that_ignores_the_cancel_is_interrupted_after_the_grace(workers, record_dir):
    path = record_dir / "runs"
    proc = workers.start()
    result = tasks.stubborn.enqueue(str(path))
    wait_for(lambda: "started" in lines(path), message="the job to start")
    asked = time.monotonic()
    jobs.cancel(result.id, "runaway")
    wait_for(lambda: job(result).status == JobStatus.CANCELLED, timeout=30, message="the stubborn job to end")
    took = time.monotonic() - asked
    assert control.CANCEL_GRACE <= took < control.CANCEL_GRACE + 6
    assert "interrupted" in job(result).errors[-1]["message"] and "ran to the end" not in lines(path)
    after = tasks.add.enqueue(2, 2)  # its slot was replaced: the worker goes on
    wait_for(lambda: job(after).status == JobStatus.SUCCESSFUL, message="the next job")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, workers.output(proc)


def test_progress_is_read_back_from_another_process_and_kept_after_the_end(workers, record_dir):
    gate = record_dir / "go"
    proc = workers.start()
    result = tasks.reports_progress.enqueue(str(gate), 1000)
    final = wait_for(lambda: (jobs.get_progress(result.id) or {}).get("done") == 1000 and jobs.get_progress(result.id),
                     timeout=30, message="the last progress to be written")
    assert final["total"] == 1000 and final["message"] == "step 1000" and final["updated_at"]
    gate.write_text("go")
    wait_for(lambda: job(result).status == JobStatus.SUCCESSFUL, message="the job to finish")
    assert jobs.get_progress(result.id)["done"] == 1000  # kept: it says how far it got
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, workers.output(proc)


def test_progress_writes_are_throttled_and_a_new_attempt_starts_without_it(transactional_db):
    result = tasks.add.enqueue(1, 2)
    (claimed,) = Job.objects.claim(worker_id="w", limit=1, now=timezone.now())
    now = [0.0]
    attempt = control.Attempt(job_id=claimed.id, attempts=claimed.attempts, worker_id="w", clock=lambda: now[0])
    for step in range(1000):  # a second of calls, one a millisecond
        now[0] += 0.001
        attempt.progress(step, 1000, "")
    attempt.flush()
    assert attempt.writes <= 1 / control.PROGRESS_EVERY + 2
    assert jobs.get_progress(result.id)["done"] == 999
    Job.objects.filter(pk=claimed.id).update(status=JobStatus.READY)
    Job.objects.claim(worker_id="w2", limit=1, now=timezone.now())
    assert jobs.get_progress(result.id) is None


def test_set_progress_outside_a_worker_does_nothing_and_bad_values_are_refused():
    jobs.set_progress(1, 2, "task.call(), ImmediateBackend: nothing to write to")  # contract: never raises
    for inside in (False, True):
        if inside:
            control.running(control.Attempt(job_id=1, attempts=1, worker_id="w"))
        try:
            for bad in (float("nan"), -1, "3", True):
                with pytest.raises(TypeError):
                    jobs.set_progress(bad)
        finally:
            control.running(None)
    assert jobs.cancel_requested() is False
