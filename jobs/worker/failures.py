"""A job's outcome told to whoever watches: the fields of its log record, and ``job_failed``.

The worker's main loop (for the outcomes it writes) and its liveness thread (for the
lost workers' attempts it takes back) both report a job that failed for good the
same way: an ERROR record with the exception, so that Sentry's logging integration
and Django's ``AdminEmailHandler`` see it, then ``jobs.signals.job_failed``, once,
after the write (an outcome the database discarded reaches neither).
"""

from __future__ import annotations

import logging

from ..errors import exception_class_path, exception_message
from ..execution import attempt_limit
from ..framework import task_finished
from ..models import JobStatus
from ..signals import job_failed

logger = logging.getLogger("jobs.worker")

_UNKNOWN = object()


def job_fields(job, limit) -> dict:
    """A job's fields for a log record's ``extra``: JSON formatters and Sentry show them as keys."""
    return {"job_id": job.id, "task": job.task_path, "attempt": job.attempts, "max_attempts": limit}


def announce_failure(backend, job, *, error: dict, exception: BaseException | None, task_result=_UNKNOWN) -> None:
    """Send ``job_failed`` for ``job``, whose final failure is written. A receiver that
    raises is logged (Django logs its traceback on ``django.dispatch``) and the others
    still run; the worker goes on."""
    sender = type(backend)
    if not job_failed.has_listeners(sender):
        return
    if task_result is _UNKNOWN:
        task_result = _result(backend, job.id)
    try:
        responses = job_failed.send_robust(sender, backend=backend.alias, job_id=job.id, task_path=job.task_path,
                                           attempts=job.attempts, error=error, exception=exception,
                                           task_result=task_result)
    except BaseException:  # SystemExit from a receiver (send_robust catches Exception only): not the worker's end
        logger.exception("job_failed receiver raised id=%s task=%s; later receivers were not called", job.id,
                         job.task_path)
        return
    for receiver, response in responses:
        if isinstance(response, Exception):
            name = f"{getattr(receiver, '__module__', '?')}.{getattr(receiver, '__qualname__', repr(receiver))}"
            logger.warning("job_failed receiver raised id=%s task=%s receiver=%s error=%s: %s", job.id,
                           job.task_path, name, exception_class_path(response), exception_message(response)[:200])


def _result(backend, job_id: int):
    """The job's TaskResult as ``get_result`` says, or None when the row cannot be described."""
    try:
        return backend.get_result(job_id)
    except Exception:  # noqa: BLE001 - a path that is not a task, a damaged row: no TaskResult
        return None



def report_written(backend, outcomes, *, log: logging.Logger = logger, quiet: bool = False) -> None:
    """Each written ``(outcome, status)``: its log line, then, for a job that failed for good,
    ``job_failed`` (once per job). ``quiet`` (``jobs.testing``) logs every line at DEBUG,
    without the traceback: a test that makes a task fail on purpose prints nothing."""
    for outcome, status in outcomes:
        log_outcome(backend, outcome, status, log=log, quiet=quiet)
        # Failed for good, and written: once per job (not a retry that a queued unique job stands for).
        if status == JobStatus.FAILED and not (outcome.decision and outcome.decision.retry):
            announce_failure(backend, outcome.job, error=outcome.error, exception=outcome.exc)
            if outcome.still_running is not None:
                finish_given_up(backend, outcome.job)


def finish_given_up(backend, job) -> None:
    """``task_finished`` (FAILED) for an attempt the worker gave up on (its timeout) and wrote as
    failed for good; its thread, whenever its code returns, sends nothing (``jobs.execution``)."""
    result = _result(backend, job.id)
    if result is None:
        return
    try:
        task_finished.send(sender=type(backend), task_result=result)
    except Exception:  # noqa: BLE001 - a receiver's error is logged; the worker goes on
        logger.exception("task_finished receiver raised id=%s task=%s", job.id, job.task_path)


def log_outcome(backend, outcome, status: str | None, *, log: logging.Logger = logger, quiet: bool = False) -> None:
    """One line per outcome written: a final failure at ERROR with its exception (for
    Sentry and mail handlers), a retry or a discarded outcome at WARNING."""
    job = outcome.job
    limit = attempt_limit(job, backend)
    fields, extra = (job.id, job.task_path, job.attempts, limit, outcome.duration), job_fields(job, limit)
    if status is None:
        log.log(logging.DEBUG if quiet else logging.WARNING, "job outcome discarded id=%s task=%s attempt=%s/%s "
                'duration=%.3fs why="another worker had taken the attempt over"', *fields, extra=extra)
    elif status == JobStatus.SUCCESSFUL:
        log.log(logging.DEBUG if quiet else logging.INFO, "job finished id=%s task=%s attempt=%s/%s duration=%.3fs "
                "outcome=SUCCESSFUL", *fields, extra=extra)
    else:
        # outcome=FAILED retry_in=2.0s, or outcome=FAILED why="no attempts left (3 of 3)": words, not codes.
        decision, error = outcome.decision, outcome.error
        failed = status == JobStatus.FAILED and not decision.retry
        if status == JobStatus.READY:
            then = f"retry_in={decision.delay:.1f}s"
        elif status == JobStatus.CANCELLED and outcome.final != JobStatus.CANCELLED:
            then = 'why="not retried: a cancel was asked while it ran"'
        elif status == JobStatus.FAILED and decision.retry:
            then = 'why="not retried: a job with the same unique key is queued"'
        else:
            then = f'why="{decision.reason}"'
        level = logging.DEBUG if quiet else logging.ERROR if failed else logging.WARNING
        log.log(level, "job finished id=%s task=%s attempt=%s/%s duration=%.3fs outcome=%s %s error=%s: %s",
                *fields, JobStatus.FAILED if status == JobStatus.READY else status, then,
                error["exception_class_path"], error["message"][:200],
                exc_info=outcome.exc if failed and not quiet else None, extra=extra)
