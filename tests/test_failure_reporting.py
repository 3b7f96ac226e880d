"""A job's final failure: logged at ERROR with its exception, ``job_failed`` sent once after the write.

In-process workers (``run_worker``) and the liveness loop's take-back (``sweep``), with a
real logging handler on the ``jobs`` logger and real receivers.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from datetime import timedelta

import django
import pytest
from django.core import mail
from django.db import connections
from django.test import override_settings
from django.utils import timezone
from django.utils.log import AdminEmailHandler

from jobs.framework import TaskResultStatus
from jobs.models import Job, JobStatus
from jobs.signals import job_failed
from jobs.sql import claim
from jobs.worker import Worker
from tests import tasks
from tests.conftest import sweep, wait_for
from tests.test_hardening import damage, row


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def about(self, job_id, level=None) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "job_id", None) == job_id
                and (level is None or r.levelno == level)]


@pytest.fixture
def logged():
    """Every record of the ``jobs`` loggers while the test runs."""
    handler = Records()
    logger = logging.getLogger("jobs")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@contextmanager
def failures(*receivers):
    """The keyword arguments of every ``job_failed`` sent meanwhile (and the rows as they were then)."""
    seen = []

    def receiver(sender, **kwargs):
        job = Job.objects.only("status", "errors").get(pk=kwargs["job_id"])
        seen.append({**kwargs, "sender": sender, "status_then": job.status, "errors_then": len(job.errors)})

    for extra in (receiver, *receivers):
        job_failed.connect(extra, weak=False)
    try:
        yield seen
    finally:
        for extra in (receiver, *receivers):
            job_failed.disconnect(extra)


def run_until_finished(result, run_worker, rounds=10):
    for _ in range(rounds):
        job = Job.objects.get(pk=int(result.id))
        if job.status in (JobStatus.SUCCESSFUL, JobStatus.FAILED):
            return job
        Job.objects.filter(pk=job.pk, status=JobStatus.READY).update(run_after=timezone.now())  # skip the backoff
        run_worker()
    raise AssertionError(f"job {result.id} not finished after {rounds} workers")


def test_a_final_failure_is_an_error_with_its_traceback_and_each_retry_a_warning(run_worker, logged):
    with failures() as sent:
        result = tasks.always_fails.enqueue()  # 3 attempts (OPTIONS)
        job = run_until_finished(result, run_worker)
    assert job.status == JobStatus.FAILED and job.attempts == 3
    levels = [(r.levelname, r.attempt) for r in logged.about(job.pk) if "job finished" in r.getMessage()]
    assert levels == [("WARNING", 1), ("WARNING", 2), ("ERROR", 3)]
    retry, final = logged.about(job.pk, logging.WARNING)[0], logged.about(job.pk, logging.ERROR)[0]
    assert retry.exc_info is None and "outcome=FAILED retry_in=" in retry.getMessage()
    assert f"id={job.pk} task=tests.tasks.always_fails attempt=3/3" in final.getMessage()
    assert (final.job_id, final.task, final.attempt, final.max_attempts) == (job.pk, "tests.tasks.always_fails", 3, 3)
    exc_type, exc, tb = final.exc_info
    assert exc_type is RuntimeError and str(exc) == "this task always fails" and tb is not None
    text = logging.Formatter().format(final)
    assert "Traceback (most recent call last)" in text and 'raise RuntimeError("this task always fails")' in text
    # ... and the signal once, for the last attempt only, after its outcome was written.
    assert len(sent) == 1
    (failure,) = sent
    assert failure["status_then"] == JobStatus.FAILED and failure["errors_then"] == 3
    assert (failure["job_id"], failure["task_path"], failure["attempts"], failure["backend"]) == \
        (job.pk, "tests.tasks.always_fails", 3, "default")
    assert failure["sender"] is type(tasks.always_fails.get_backend())
    assert failure["error"] == job.errors[-1] and failure["exception"] is exc
    assert failure["task_result"].status == TaskResultStatus.FAILED and len(failure["task_result"].errors) == 3


def test_a_retried_then_successful_job_sends_nothing_and_logs_no_error(run_worker, logged):
    with failures() as sent:
        job = run_until_finished(tasks.fail_times.enqueue(2), run_worker)
    assert job.status == JobStatus.SUCCESSFUL and job.attempts == 3
    assert sent == []
    assert [r.levelname for r in logged.about(job.pk)] == ["WARNING", "WARNING", "INFO"]


@pytest.mark.parametrize("make,error_class,described", [
    (lambda: row("tests.tasks.no_such_task"), "TaskNotFound", False),  # no task: no TaskResult
    (lambda: row("tests.tasks.plain_function"), "NotATask", False),
    (lambda: damage_args(row()), "DamagedJob", True),  # arguments the worker refuses, the ORM reads
])
def test_a_refused_path_or_a_damaged_row_is_a_final_failure_too(run_worker, logged, make, error_class, described):
    bad = make()
    with failures() as sent:
        run_worker()
    (final,) = logged.about(bad.pk, logging.ERROR)
    assert type(final.exc_info[1]).__name__ == error_class and final.exc_info[2] is not None  # raised: a traceback
    assert f"id={bad.pk} " in final.getMessage() and "outcome=FAILED" in final.getMessage()
    assert [(s["job_id"], type(s["exception"]).__name__) for s in sent] == [(bad.pk, error_class)]
    result = sent[0]["task_result"]
    assert (result.status == TaskResultStatus.FAILED) if described else result is None


def damage_args(job: Job) -> Job:
    damage(job.pk, args='{"a": 1}')
    return job


def lost(result, *, attempts: int) -> None:
    """The job claimed by a worker that then vanished, on its ``attempts``-th attempt."""
    Job.objects.filter(pk=int(result.id)).update(attempts=attempts - 1)
    claim(worker_id="gone", limit=1, now=timezone.now())
    Job.objects.update(heartbeat_at=timezone.now() - timedelta(minutes=5))


def test_a_lost_workers_last_attempt_taken_back_is_an_error_and_sent_once(transactional_db, logged):
    result = tasks.add.enqueue(1, 2)
    lost(result, attempts=3)
    with failures() as sent:
        assert sweep() == 1
        assert sweep() == 0  # taken back once, reported once
    (final,) = logged.about(int(result.id), logging.ERROR)
    assert "job taken back" in final.getMessage() and "lost_worker=gone outcome=FAILED" in final.getMessage()
    assert type(final.exc_info[1]).__name__ == "WorkerLost" and "was lost" in str(final.exc_info[1])
    assert "WorkerLost: worker gone was lost" in logging.Formatter().format(final)
    (failure,) = sent
    assert failure["status_then"] == JobStatus.FAILED and failure["attempts"] == 3
    assert failure["error"]["exception_class_path"] == "jobs.exceptions.WorkerLost"
    assert failure["task_result"].status == TaskResultStatus.FAILED and failure["task_result"].id == result.id


def test_a_lost_workers_attempt_that_will_be_retried_is_a_warning_and_sends_nothing(transactional_db, logged):
    result = tasks.add.enqueue(1, 2)
    lost(result, attempts=1)
    with failures() as sent:
        assert sweep() == 1
    assert sent == []
    (retry,) = logged.about(int(result.id))
    assert retry.levelno == logging.WARNING and retry.exc_info is None and "outcome=FAILED retry_in=" in retry.getMessage()


def test_a_final_failure_fenced_out_sends_nothing_the_take_back_reports_it(transactional_db, logged, record_dir):
    """A worker whose attempt was taken back meanwhile (presumed lost) fails it: the database discards
    its write, so only the take-back (the write that happened) is reported, once."""
    log = record_dir / "runs"
    result = tasks.slow_then_fail.enqueue(str(log), 1.5)
    worker = Worker(burst=True)

    def run():
        try:
            worker.run()
        finally:
            connections.close_all()  # this thread's own

    thread = threading.Thread(target=run)
    with failures() as sent:
        thread.start()
        wait_for(lambda: log.exists() and "start" in log.read_text(), message="the job to start")
        # Another worker's sweep, as if this one had stopped beating long ago.
        assert sweep(now=timezone.now() + timedelta(minutes=10)) == 1
        thread.join(30)
    assert not thread.is_alive()
    job_id = int(result.id)
    assert [s["exception"].__class__.__name__ for s in sent] == ["WorkerLost"]
    discarded = [r for r in logged.about(job_id) if "job outcome discarded" in r.getMessage()]
    assert len(discarded) == 1 and discarded[0].levelno == logging.WARNING
    assert [r.getMessage().split(" id=")[0] for r in logged.about(job_id, logging.ERROR)] == ["job taken back"]
    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.FAILED and [e["exception_class_path"] for e in job.errors] == \
        ["jobs.exceptions.WorkerLost"]


def test_a_receiver_that_exits_does_not_end_the_worker(run_worker, logged):
    def exits(sender, **kwargs):
        raise SystemExit(3)  # send_robust lets it through: BaseException

    with failures(exits):
        bad = tasks.always_fails.using(priority=5).enqueue()
        Job.objects.filter(pk=int(bad.id)).update(attempts=2)
        good = tasks.add.enqueue(2, 2)
        run_worker()
    assert Job.objects.get(pk=int(good.id)).status == JobStatus.SUCCESSFUL
    assert Job.objects.get(pk=int(bad.id)).status == JobStatus.FAILED
    assert [r.levelname for r in logged.records if "job_failed receiver raised" in r.getMessage()] == ["ERROR"]


def test_a_receiver_that_raises_is_logged_and_neither_the_others_nor_the_worker_stop(run_worker, logged):
    def broken(sender, **kwargs):
        raise ValueError("receiver bug")

    with failures(broken) as sent:
        bad = tasks.always_fails.using(priority=5).enqueue()
        Job.objects.filter(pk=int(bad.id)).update(attempts=2)  # its last attempt next
        good = tasks.add.enqueue(2, 2)
        run_worker()
    assert [s["job_id"] for s in sent] == [int(bad.id)]  # the other receiver ran
    assert Job.objects.get(pk=int(good.id)).status == JobStatus.SUCCESSFUL  # the worker went on
    (warning,) = [r for r in logged.records if "job_failed receiver raised" in r.getMessage()]
    assert "receiver=tests.test_failure_reporting." in warning.getMessage()
    assert "error=builtins.ValueError: receiver bug" in warning.getMessage()


def test_admin_email_handler_on_the_jobs_logger_mails_the_final_failure_with_its_traceback(run_worker):
    """The LOGGING snippet of docs/howto/monitoring.md: ``AdminEmailHandler`` on the ``jobs`` logger."""
    admins = ["ops@example.com"] if django.VERSION >= (6, 0) else [("Ops", "ops@example.com")]
    # Django 6.1 mails through MAILERS (test runs turn every alias into locmem); before, EMAIL_BACKEND.
    mailers = {"MAILERS": {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}} \
        if django.VERSION >= (6, 1) else {}
    handler = AdminEmailHandler()
    handler.setLevel(logging.ERROR)
    logger = logging.getLogger("jobs")
    logger.addHandler(handler)
    try:
        with override_settings(ADMINS=admins, **mailers):
            result = tasks.always_fails.enqueue()
            Job.objects.filter(pk=int(result.id)).update(attempts=2)
            run_worker()
            retried = tasks.fail_times.enqueue(1)
            run_worker()  # its first attempt fails and will be retried: no mail
    finally:
        logger.removeHandler(handler)
    ours = [m for m in mail.outbox if "job finished" in m.subject]
    assert len(ours) == 1, [m.subject for m in mail.outbox]
    assert ours[0].to == ["ops@example.com"]
    assert f"ERROR: job finished id={result.id} task=tests.tasks.always_fails attempt=3/3" in ours[0].subject
    assert 'raise RuntimeError("this task always fails")' in ours[0].body
    assert f"id={retried.id} " not in "".join(m.subject for m in mail.outbox)


def test_a_cancelled_job_is_no_failure_a_warning_and_no_signal(transactional_db, logged, record_dir):
    """Cancelled on request (the worker ended it) or taken back while being cancelled (its worker
    was lost): CANCELLED, at WARNING, and ``job_failed`` is not sent: nobody is alerted of a cancel."""
    import jobs

    log = record_dir / "runs"
    running = tasks.cooperative.enqueue(str(log))
    worker = Worker(burst=True)
    thread = threading.Thread(target=lambda: (worker.run(), connections.close_all()))
    with failures() as sent:
        thread.start()
        wait_for(lambda: log.exists() and "started" in log.read_text(), message="the job to start")
        jobs.cancel(running.id, "not needed")
        thread.join(30)
        lost_one = tasks.add.enqueue(1, 2)
        lost(lost_one, attempts=1)
        Job.objects.filter(pk=int(lost_one.id)).update(cancel_requested_at=timezone.now())
        assert sweep() == 1
    assert not thread.is_alive() and sent == []
    for result in (running, lost_one):
        assert Job.objects.get(pk=int(result.id)).status == JobStatus.CANCELLED
        records = logged.about(int(result.id))
        assert records and all(r.levelno <= logging.WARNING and r.exc_info is None for r in records)
        assert "outcome=CANCELLED" in records[-1].getMessage()
