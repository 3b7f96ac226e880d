"""``retry_on``/``discard_on``, and Django 6.1's own ``@task`` taking every option of ``jobs.task``."""

import pickle
import re

import pytest

from jobs import task
from jobs.decorators import JobTask
from jobs.framework import TaskResultStatus
from jobs.models import Job
from jobs.testing import drain
from tests import kit_tasks, tasks


@pytest.fixture(autouse=True)
def _backoff_calls():
    kit_tasks.BACKOFF_CALLS.clear()
    yield
    kit_tasks.BACKOFF_CALLS.clear()


def errors_of(result):
    return [e["exception_class_path"].rsplit(".", 1)[-1] for e in Job.objects.get(pk=result.id).errors]


@pytest.mark.django_db
def test_retry_on_retries_only_those_exceptions_with_the_tasks_backoff():
    retried = kit_tasks.retries_connection_errors.enqueue("connection")
    failed_at_once = kit_tasks.retries_connection_errors.enqueue("value")
    first = drain()
    assert (first.ran, first.retried, first.failed) == (2, 1, 1)
    job = Job.objects.get(pk=retried.id)
    assert job.status == "READY" and (job.run_after - job.last_attempted_at).total_seconds() == pytest.approx(60, abs=1)
    assert kit_tasks.BACKOFF_CALLS == [("ConnectionError", 1)]  # never asked for the ValueError
    assert Job.objects.get(pk=failed_at_once.id).status == "FAILED" and errors_of(failed_at_once) == ["ValueError"]
    drain(with_scheduled=True)
    assert errors_of(retried) == ["ConnectionError"] * 3 and Job.objects.get(pk=retried.id).status == "FAILED"


@pytest.mark.django_db
def test_discard_on_fails_at_once_and_other_exceptions_are_retried():
    discarded = kit_tasks.discards_lookups.enqueue("lookup")
    retried = kit_tasks.discards_lookups.enqueue("value")
    drain(with_scheduled=True)
    assert Job.objects.get(pk=discarded.id).status == "FAILED" and errors_of(discarded) == ["LookupError"]
    assert errors_of(retried) == ["ValueError"] * 3
    assert kit_tasks.BACKOFF_CALLS == [("ValueError", 1), ("ValueError", 2), ("ValueError", 3)]  # never LookupError


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_holds_retry_on_for_a_timeout_too(run_worker):
    result = kit_tasks.slow_with_retry_on.enqueue(1.0)  # JobTimeout is not a ConnectionError: no retry
    run_worker()
    assert Job.objects.get(pk=result.id).status == "FAILED" and errors_of(result) == ["JobTimeout"]


@pytest.mark.parametrize("options, culprit", [
    ({"retry_on": ConnectionError}, "retry_on must be a tuple of exception classes, got <class 'ConnectionError'>"),
    ({"retry_on": (ConnectionError, "ValueError")}, "retry_on must be a tuple of exception classes"),
    ({"discard_on": [KeyError]}, "discard_on must be a tuple of exception classes, got [<class 'KeyError'>]"),
    ({"discard_on": (int,)}, "discard_on must be a tuple of exception classes"),
])
def test_bad_retry_on_or_discard_on_is_a_type_error_at_declaration(options, culprit):
    with pytest.raises(TypeError, match=r"^tests\.test_task_options\..*\.declared: " + re.escape(culprit)):
        @task(**options)
        def declared():
            pass


needs_61 = pytest.mark.needs_django(6, 1)  # Django 6.1 forwards @task keywords to task_class


@needs_61
def test_djangos_own_task_decorator_takes_every_option():
    declared = kit_tasks.declared_by_django
    assert type(declared) is JobTask
    assert (declared.max_attempts, declared.timeout, declared.unique, declared.concurrency_key,
            declared.concurrency_limit, declared.rate_limit) == (2, 30, True, "kit", 1, "1000/s")
    assert declared.retry_on == (ConnectionError, ValueError) and declared.discard_on == (ValueError,)


@needs_61
@pytest.mark.django_db
def test_djangos_own_task_decorator_behaves_as_jobs_task():
    first = kit_tasks.declared_by_django.enqueue("connection")
    assert kit_tasks.declared_by_django.enqueue("connection").id == first.id  # unique
    discarded = kit_tasks.declared_by_django.enqueue("value")  # discard_on wins over retry_on
    drain(with_scheduled=True)
    assert errors_of(first) == ["ConnectionError"] * 2  # max_attempts=2
    assert errors_of(discarded) == ["ValueError"]
    assert kit_tasks.BACKOFF_CALLS == [("ConnectionError", 1), ("ConnectionError", 2)]  # never for ValueError


@needs_61
def test_an_unknown_keyword_of_djangos_decorator_is_a_type_error_at_declaration():
    from django.tasks import task as django_task

    with pytest.raises(TypeError, match="unexpected keyword argument 'retries'"):
        @django_task(retries=3)
        def declared():
            pass


@pytest.mark.django_db
def test_tasks_and_task_results_pickle():
    declared = kit_tasks.retries_connection_errors.using(priority=5, queue_name="emails")
    again = pickle.loads(pickle.dumps(declared))
    assert again == declared and again.backoff is kit_tasks._record_backoff and again.priority == 5
    with_lambda = pickle.loads(pickle.dumps(tasks.custom_backoff))  # its backoff is a lambda
    assert with_lambda == tasks.custom_backoff
    result = kit_tasks.send_mail.enqueue("a@example.com")
    drain()
    result.refresh()
    loaded = pickle.loads(pickle.dumps(result))
    assert (loaded.id, loaded.status, loaded.return_value, loaded.task) == (
        result.id, TaskResultStatus.SUCCESSFUL, "a@example.com", result.task)
