"""The worker in-process (burst mode): outcomes, retries, timeouts, safety, fencing, take-back."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from jobs.framework import TaskResultStatus
from jobs.models import Job, JobStatus
from jobs.sql import claim
from jobs.worker import Worker
from tests import tasks
from tests.conftest import liveness, record_success, sweep


def job_of(result) -> Job:
    return Job.objects.get(pk=int(result.id))


def test_success_is_read_back_through_get_result(run_worker):
    result = tasks.add.enqueue(2, 3)
    run_worker()
    fetched = tasks.add.get_result(result.id)
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert fetched.return_value == 5 and fetched.errors == []
    assert fetched.attempts == 1 and fetched.started_at and fetched.finished_at
    assert fetched.finished_at >= fetched.started_at >= fetched.enqueued_at


def test_async_task_runs(run_worker):
    result = tasks.async_add.enqueue(4, 5)
    run_worker()
    assert tasks.async_add.get_result(result.id).return_value == 9


def test_failures_are_retried_and_every_error_is_kept(run_worker):
    result = tasks.fail_times.enqueue(2)
    # Retries wait retry_backoff (0.05 s in tests) and burst leaves jobs not yet due, so run until done.
    while job_of(result).status != JobStatus.SUCCESSFUL:
        run_worker()
    fetched = tasks.fail_times.get_result(result.id)
    assert fetched.return_value == 3 and fetched.attempts == 3
    assert [e.exception_class_path for e in fetched.errors] == ["builtins.ValueError"] * 2
    assert "failing on purpose, attempt 1" in fetched.errors[0].traceback
    assert "failing on purpose, attempt 2" in fetched.errors[1].traceback
    assert [e["attempt"] for e in job_of(result).errors] == [1, 2]


def test_max_attempts_then_failed(run_worker):
    result = tasks.always_fails.enqueue()
    while job_of(result).status != JobStatus.FAILED:
        run_worker()
    job = job_of(result)
    assert job.attempts == 3 and len(job.errors) == 3 and job.finished_at
    fetched = tasks.always_fails.get_result(result.id)
    assert fetched.status == TaskResultStatus.FAILED
    with pytest.raises(ValueError):
        fetched.return_value  # noqa: B018


def test_retry_waits_for_the_backoff(run_worker):
    result = tasks.always_fails.enqueue()
    before = timezone.now()
    run_worker()
    job = job_of(result)
    assert job.status == JobStatus.READY and job.attempts == 1
    # retry_backoff=0.05: attempt 2 waits 0.05 s ± 25 %
    assert before + timedelta(seconds=0.0375) <= job.run_after <= timezone.now() + timedelta(seconds=0.0625)


def test_burst_leaves_jobs_due_later(run_worker):
    later = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    now = tasks.add.enqueue(1, 2)
    run_worker()
    assert job_of(later).status == JobStatus.READY and job_of(later).attempts == 0
    assert job_of(now).status == JobStatus.SUCCESSFUL


def test_custom_backoff_none_means_no_retry(run_worker):
    not_retried = tasks.custom_backoff.enqueue("key")
    retried = tasks.custom_backoff.enqueue("value")
    while job_of(retried).status != JobStatus.FAILED:
        run_worker()
    assert job_of(not_retried).status == JobStatus.FAILED and job_of(not_retried).attempts == 1
    assert job_of(retried).attempts == 5


def test_sync_timeout_fails_the_attempt_without_waiting(run_worker):
    result = tasks.sleeps.enqueue(5)
    started = timezone.now()
    run_worker()
    job = job_of(result)
    assert job.status == JobStatus.FAILED
    assert job.errors[0]["exception_class_path"] == "jobs.exceptions.JobTimeout"
    assert "timed out after 0.5s" in job.errors[0]["message"]
    assert timezone.now() - started < timedelta(seconds=3)


def test_async_timeout_cancels_the_coroutine(run_worker):
    result = tasks.async_sleeps.enqueue(5)
    started = timezone.now()
    run_worker()
    job = job_of(result)
    assert job.status == JobStatus.FAILED and "timed out after 0.3s" in job.errors[0]["message"]
    assert timezone.now() - started < timedelta(seconds=3)


def test_fast_job_under_its_timeout_succeeds(run_worker):
    result = tasks.sleeps.enqueue(0.01)
    run_worker()
    assert job_of(result).return_value == "woke"


def make_job(task_path: str, **fields) -> Job:
    now = timezone.now()
    return Job.objects.create(task_path=task_path, run_after=now, enqueued_at=now, **fields)


@pytest.mark.parametrize("path,error_class,words", [
    ("tests.no_such_module.task", "jobs.exceptions.TaskNotAllowed", "outside every installed app"),
    ("tests.tasks.no_such_task", "jobs.exceptions.TaskNotFound", "does not import"),
    ("jobs.no_such_module.task", "jobs.exceptions.TaskNotFound", "does not import"),
    ("os.system", "jobs.exceptions.TaskNotAllowed", "outside every installed app"),
    ("venv.__main__.main", "jobs.exceptions.TaskNotAllowed", "__main__"),
    ("antigravity.fly", "jobs.exceptions.TaskNotAllowed", "outside every installed app"),
    ("tests.tasks.plain_function", "jobs.exceptions.NotATask", "not a task"),
])
def test_rows_that_do_not_name_a_task_fail_at_once_and_run_nothing(run_worker, tmp_path, monkeypatch, path,
                                                                    error_class, words):
    marker = tmp_path / "ran"
    monkeypatch.setenv("JOBS_TEST_MARKER", str(marker))
    job = make_job(path, args=["touch /tmp/owned"] if path == "os.system" else [])
    good = tasks.add.enqueue(1, 1)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempts == 1 and len(job.errors) == 1
    assert job.errors[0]["exception_class_path"] == error_class
    assert path in job.errors[0]["message"] and words in job.errors[0]["message"]
    assert not marker.exists() and not Path("/tmp/owned").exists()
    assert job_of(good).status == JobStatus.SUCCESSFUL  # the worker went on


def test_unserialisable_return_value_fails_the_attempt(run_worker):
    result = tasks.returns_object.enqueue()
    while job_of(result).status != JobStatus.FAILED:
        run_worker()
    assert job_of(result).errors[0]["exception_class_path"] == "jobs.exceptions.ResultNotSerialisable"


def test_system_exit_in_a_job_does_not_stop_the_worker(run_worker):
    bad = tasks.exits.enqueue()
    good = tasks.add.enqueue(1, 1)
    run_worker()
    assert job_of(bad).errors[0]["exception_class_path"] == "builtins.SystemExit"
    assert job_of(good).status == JobStatus.SUCCESSFUL


def test_each_job_starts_with_clean_connection_state(run_worker):
    broken = tasks.uses_database.using(priority=10).enqueue(True)
    after = tasks.uses_database.enqueue(False)
    run_worker()
    assert job_of(broken).status in (JobStatus.READY, JobStatus.FAILED)
    assert job_of(after).status == JobStatus.SUCCESSFUL


def test_claim_order_priority_then_run_after_then_enqueue(run_worker, record_dir):
    path = str(record_dir / "order")
    now = timezone.now()
    tasks.record.using(priority=0).enqueue(path, "p0-first")
    tasks.record.using(priority=0, run_after=now - timedelta(minutes=5)).enqueue(path, "p0-older-run-after")
    tasks.record.using(priority=0).enqueue(path, "p0-second")
    tasks.record.using(priority=50).enqueue(path, "p50")
    tasks.record.using(priority=-20).enqueue(path, "p-20")
    run_worker(concurrency=1)
    ran = [line.split()[0] for line in Path(path).read_text().splitlines()]
    assert ran == ["p50", "p0-older-run-after", "p0-first", "p0-second", "p-20"]


def test_queue_filter(run_worker):
    email = tasks.add.using(queue_name="emails").enqueue(1, 1)
    report = tasks.add.using(queue_name="reports").enqueue(1, 1)
    run_worker(queues=["emails"])
    assert job_of(email).status == JobStatus.SUCCESSFUL
    assert job_of(report).status == JobStatus.READY


def test_concurrency_runs_jobs_side_by_side(run_worker, record_dir):
    path = str(record_dir / "overlap")
    for i in range(4):
        tasks.slow_then_record.enqueue(path, str(i), 0.3)
    run_worker(concurrency=4)
    lines = Path(path).read_text().splitlines()
    # All four started before any ended: they ran at the same time.
    assert [line.split()[0] for line in lines[:4]] == ["start"] * 4


def test_a_late_outcome_from_a_lost_attempt_is_discarded(transactional_db):
    """Fencing: worker A was presumed lost, B took the job over; A's late success must not count."""
    result = tasks.add.enqueue(1, 2)
    now = timezone.now()
    (claimed_by_a,) = claim(worker_id="A", limit=1, now=now)
    Job.objects.filter(pk=claimed_by_a.pk).update(heartbeat_at=now - timedelta(seconds=60))
    assert sweep() == 1
    job = job_of(result)
    assert job.status == JobStatus.READY and job.errors[0]["exception_class_path"] == "jobs.exceptions.WorkerLost"
    (claimed_by_b,) = claim(worker_id="B", limit=1, now=timezone.now() + timedelta(seconds=1))
    assert claimed_by_b.attempts == 2
    assert record_success(claimed_by_a, 999) is False  # A wakes up: refused
    assert record_success(claimed_by_b, 3) is True
    job = job_of(result)
    assert job.return_value == 3 and job.worker_ids == ["A", "B"]


def test_live_workers_jobs_are_not_taken_back(transactional_db):
    tasks.add.enqueue(1, 2)
    claim(worker_id="alive", limit=1, now=timezone.now())
    assert sweep() == 0
    assert Job.objects.get().status == JobStatus.RUNNING


def test_take_back_past_max_attempts_ends_failed(transactional_db):
    result = tasks.add.enqueue(1, 2)
    Job.objects.filter(pk=int(result.id)).update(attempts=2)
    claim(worker_id="gone", limit=1, now=timezone.now())
    Job.objects.update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert sweep() == 1
    job = job_of(result)
    assert job.status == JobStatus.FAILED and job.attempts == 3 and "was lost" in job.errors[0]["message"]


def test_requeue_keeps_the_id_and_the_history(run_worker):
    result = tasks.always_fails.enqueue()
    while job_of(result).status != JobStatus.FAILED:
        run_worker()
    assert len(Job.objects.filter(pk=int(result.id)).requeue()) == 1
    job = job_of(result)
    assert job.status == JobStatus.READY and job.attempts == 0 and len(job.errors) == 3
    run_worker()
    assert job_of(result).attempts == 1 and len(job_of(result).errors) == 4


def test_heartbeat_covers_jobs_waiting_in_the_prefetch_buffer(transactional_db):
    """Claimed but not yet started jobs are held too: no other worker may take them back."""
    for i in range(3):
        tasks.add.enqueue(i, i)
    worker = Worker(burst=True)  # not started: its slots take nothing
    worker.pool.give(claim(worker_id=worker.id, limit=3, now=timezone.now()))
    Job.objects.update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    liveness(worker).beat_and_sweep(timezone.now())
    assert Job.objects.filter(status=JobStatus.RUNNING, heartbeat_at__gte=timezone.now() - timedelta(seconds=5)
                              ).count() == 3
    assert not any(job.errors for job in Job.objects.all())


def test_prefetched_jobs_stuck_behind_a_slow_job_are_handed_back(transactional_db, clock):
    for i in range(3):
        tasks.add.enqueue(i, i)
    worker = Worker(burst=True, clock=clock)  # not started: it has no slot running to take them
    claimed = claim(worker_id=worker.id, limit=3, now=timezone.now())
    worker.pool.give(claimed[:1])
    clock.advance(4.5)
    worker.pool.give(claimed[1:])
    clock.advance(0.5)  # the first waited 5 s, the others 0.5 s
    worker.step()
    assert worker.pool.held_ids() == [job.id for job in claimed[1:]]
    assert list(Job.objects.filter(status=JobStatus.READY, attempts=0).values_list("pk", flat=True)) == [claimed[0].id]


def test_freshly_prefetched_jobs_are_kept(transactional_db, clock):
    tasks.add.enqueue(1, 1)
    worker = Worker(burst=True, clock=clock)
    (job,) = claim(worker_id=worker.id, limit=1, now=timezone.now())
    worker.pool.give([job])
    clock.advance(0.5)
    worker.step()
    assert worker.pool.held_ids() == [job.id]
    assert Job.objects.get().status == JobStatus.RUNNING


def test_job_threads_keep_their_connection_even_with_conn_max_age_0(run_worker):
    """Django's default CONN_MAX_AGE=0 must not cost every job a new connection."""
    from django.db import connections

    settings_dict = connections.settings["default"]
    saved = settings_dict.get("CONN_MAX_AGE")
    settings_dict["CONN_MAX_AGE"] = 0
    try:
        results = [tasks.connection_identity.enqueue() for _ in range(4)]
        run_worker(concurrency=1)
    finally:
        settings_dict["CONN_MAX_AGE"] = saved
    identities = {tasks.connection_identity.get_result(r.id).return_value for r in results}
    assert len(identities) == 1
