"""Tasks of the testing kit's own tests (``jobs.testing``): state in the database, so that a
test inside ``TestCase``'s transaction sees what they did."""

import time

from django.contrib.auth.models import Group

from jobs import cancel_requested, set_progress, task
from jobs.framework import task as django_task


@task(takes_context=True, max_attempts=3)
def flaky(context, name, fails):
    """Fail the first ``fails`` attempts; then make a Group called ``name``."""
    if context.attempt <= fails:
        raise ConnectionError(f"attempt {context.attempt} failed on purpose")
    Group.objects.create(name=name)
    return context.attempt


@django_task
def make_group(name):
    Group.objects.create(name=name)
    return name


@django_task
def fan_out(names):
    """Enqueue one make_group per name: drain() runs those too."""
    for name in names:
        make_group.enqueue(name)
    return len(names)


@task(max_attempts=1)
def duplicate_group(name):
    """Writes, then fails with a database error inside the test's transaction."""
    Group.objects.create(name=f"{name}-before")
    Group.objects.create(name=name)
    Group.objects.create(name=name)


@task(timeout=0.5, max_attempts=1)
def sleeps(seconds):
    time.sleep(seconds)
    return seconds


@task
def reports(steps):
    for done in range(steps):
        set_progress(done + 1, steps, "step")
    return cancel_requested()


@task(queue_name="emails")
def send_mail(to):
    return to



BACKOFF_CALLS: list = []  # (exception class name, attempt) each time a backoff below is asked


def _record_backoff(exc, result):
    BACKOFF_CALLS.append((type(exc).__name__, result.attempts))
    return 60.0


def _raise(kind):
    raise {"connection": ConnectionError, "value": ValueError, "lookup": LookupError}[kind](f"{kind} on purpose")


@task(max_attempts=3, retry_on=(ConnectionError,), backoff=_record_backoff)
def retries_connection_errors(kind):
    _raise(kind)


@task(max_attempts=3, discard_on=(LookupError,), backoff=_record_backoff)
def discards_lookups(kind):
    _raise(kind)


@task(max_attempts=3, retry_on=(ConnectionError,), timeout=0.2)
def slow_with_retry_on(seconds):
    time.sleep(seconds)


# Django's own decorator: on 6.1 its extra keywords go to the backend's task_class.
@django_task(max_attempts=2, timeout=30, backoff=_record_backoff, retry_on=(ConnectionError, ValueError),
             discard_on=(ValueError,), unique=True, concurrency_key="kit", rate_limit="1000/s")
def declared_by_django(kind):
    _raise(kind)
