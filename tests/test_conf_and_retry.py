"""OPTIONS parsing, the system check that reports it, and the pure retry policy."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from jobs.conf import MAX_RETRY_DELAY, JobsOptions, OptionsError, parse_options
from jobs.retry import backoff_delay, decide


def test_defaults():
    assert parse_options({}) == JobsOptions()
    assert parse_options(None).max_attempts == 3


@pytest.mark.parametrize("raw", [
    {"max_attempts": 5, "retry_backoff": 0.5, "stale_after": 3, "poll_interval": 2},
    {"retry_backoff": 1, "stale_after": 60.5, "poll_interval": 0.01},
])
def test_valid_options_accept_int_and_float(raw):
    options = parse_options(raw)
    for key, value in raw.items():
        assert getattr(options, key) == value


@pytest.mark.parametrize("raw,key,words", [
    ({"max_attempts": 0}, "max_attempts", ">= 1"),
    ({"max_attempts": 2.5}, "max_attempts", "integer"),
    ({"max_attempts": True}, "max_attempts", "integer"),
    ({"max_attempts": "3"}, "max_attempts", "integer"),
    ({"retry_backoff": 0}, "retry_backoff", "> 0"),
    ({"retry_backoff": -1}, "retry_backoff", "> 0"),
    ({"stale_after": 2}, "stale_after", ">= 3"),
    ({"poll_interval": "1"}, "poll_interval", "number"),
    ({"poll_interval": 0}, "poll_interval", ">= 0.01"),
    ({"poll_interval": 1e-9}, "poll_interval", ">= 0.01"),
    ({"poll_interval": float("nan")}, "poll_interval", "finite"),
    ({"stale_after": float("inf")}, "stale_after", "finite"),
    ({"stale_after": 1e300}, "stale_after", "<= 86400"),
    ({"retry_backoff": float("nan")}, "retry_backoff", "finite"),
    ({"retain_successful": 1e300}, "retain_successful", "<= "),
    ({"retain_failed": float("-inf")}, "retain_failed", "finite"),
    ({"shutdown_grace": float("inf")}, "shutdown_grace", "finite"),
    ({"max_attempts": 2**31}, "max_attempts", "<= 2147483647"),
    ({"max_attempt": 3}, "max_attempt", "unknown key"),
])
def test_bad_options_name_the_key(raw, key, words):
    with pytest.raises(OptionsError) as info:
        parse_options(raw)
    assert info.value.key == key
    assert key in str(info.value) and words in str(info.value)


def bad_tasks(**options):
    return {"default": {"BACKEND": "jobs.backends.DatabaseBackend", "QUEUES": ["default"], "OPTIONS": options}}


@pytest.mark.parametrize("options,key", [
    ({"max_attempts": -1}, "max_attempts"),
    ({"stale_after": "30"}, "stale_after"),
    ({"colour": "blue"}, "colour"),
])
@pytest.mark.django_db
def test_manage_py_check_reports_bad_options_by_key(options, key):
    with override_settings(TASKS=bad_tasks(**options), SCHEDULED_JOBS={}):
        with pytest.raises(SystemCheckError) as info:
            call_command("check")
    message = str(info.value)
    assert "jobs.E001" in message and repr(key) in message


@pytest.mark.django_db
def test_manage_py_check_passes_with_good_options():
    with override_settings(TASKS=bad_tasks(max_attempts=2), SCHEDULED_JOBS={}):
        call_command("check")


@pytest.mark.parametrize("attempt,max_attempts,retry,delay_range", [
    (1, 3, True, (0.75, 1.25)),
    (2, 3, True, (1.5, 2.5)),
    (3, 3, False, None),
    (5, 3, False, None),
    (1, 1, False, None),
])
def test_decide_default_policy(attempt, max_attempts, retry, delay_range):
    decision = decide(attempt=attempt, max_attempts=max_attempts, base=1.0)
    assert decision.retry is retry
    if retry:
        assert delay_range[0] <= decision.delay <= delay_range[1]
    else:
        assert "no attempts left" in decision.reason


@pytest.mark.parametrize("rand,expected", [(0.0, 7.5), (0.5, 10.0), (1.0, 12.5)])
def test_backoff_jitter_is_quarter_either_side(rand, expected):
    assert backoff_delay(10, 1, rand=rand) == pytest.approx(expected)


def test_backoff_doubles_and_caps():
    assert backoff_delay(1, 4, rand=0.5) == pytest.approx(8)
    assert backoff_delay(1, 40, rand=1.0) == MAX_RETRY_DELAY


@pytest.mark.parametrize("custom,retry,delay", [(None, False, 0.0), (2, True, 2.0), (-5, True, 0.0),
                                               (10**9, True, MAX_RETRY_DELAY)])
def test_decide_with_task_backoff(custom, retry, delay):
    decision = decide(attempt=1, max_attempts=3, base=1.0, custom_delay=custom, custom_given=True)
    assert decision.retry is retry and decision.delay == delay


def test_task_backoff_cannot_exceed_max_attempts():
    assert decide(attempt=3, max_attempts=3, base=1, custom_delay=1, custom_given=True).retry is False


@pytest.mark.parametrize("attempt", [1025, 10**6, 2**31 - 1, 10**30])
def test_backoff_of_any_attempt_number_is_capped_not_an_overflow(attempt):
    assert backoff_delay(5.0, attempt, rand=1.0) == MAX_RETRY_DELAY
    decision = decide(attempt=attempt, max_attempts=attempt + 1, base=5.0, rand=0.0)
    assert decision.retry and decision.delay == MAX_RETRY_DELAY


@pytest.mark.parametrize("custom,expected", [
    (float("inf"), MAX_RETRY_DELAY), (1e300, MAX_RETRY_DELAY), (-5, 0.0), (float("nan"), 0.75),
])
def test_custom_delays_are_clamped_and_nan_falls_back_to_the_policy(custom, expected):
    decision = decide(attempt=1, max_attempts=3, base=1.0, custom_delay=custom, custom_given=True, rand=0.0)
    assert decision.retry and decision.delay == pytest.approx(expected)


def test_max_attempts_takes_any_count_the_column_holds(run_worker):
    """"Retry for a week" and more: OPTIONS' max_attempts up to the column's maximum, and a job
    there retries with the capped back-off, then fails for good, with nothing overflowing."""
    from django.conf import settings
    from django.db.models import F
    from django.utils import timezone

    from jobs.models import Job, JobStatus
    from tests import tasks

    most = 2**31 - 1
    assert parse_options({"max_attempts": most}).max_attempts == most
    options = {**settings.TASKS["default"]["OPTIONS"], "max_attempts": most, "retry_backoff": 3600}
    with override_settings(TASKS={"default": {**settings.TASKS["default"], "OPTIONS": options}}):
        call_command("check")
        retried, last = (int(tasks.always_fails.enqueue().id) for _ in range(2))
        Job.objects.filter(pk=retried).update(attempts=most - 2)
        Job.objects.filter(pk=last).update(attempts=most - 1)
        run_worker()
        retried, last = Job.objects.get(pk=retried), Job.objects.get(pk=last)
        assert (retried.status, retried.attempts) == (JobStatus.READY, most - 1)
        assert timezone.now() < retried.run_after <= timezone.now() + timedelta(seconds=MAX_RETRY_DELAY)
        assert (last.status, last.attempts) == (JobStatus.FAILED, most)
        assert Job.objects.filter(pk=last.pk, attempts=F("attempts")).exists()
