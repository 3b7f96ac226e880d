"""``make run``'s demo: within its first minute a worker shows a job that succeeds, one retried, one
failing for good with its traceback, and a schedule firing; the worker runs 4 jobs at once by default."""

import json
import re
import time

import pytest
from django.core.management import call_command

from tests.conftest import subprocess_env, wait_for

EXPECTED = {
    "a success": r"task=example\.tasks\.add attempt=1/3 .*outcome=SUCCESSFUL",
    "a retry": r"task=example\.tasks\.flaky_email attempt=1/4 .*outcome=FAILED retry_in=",
    "the retry's success": r"task=example\.tasks\.flaky_email attempt=2/4 .*outcome=SUCCESSFUL",
    "a final failure": r'ERROR jobs\.worker job finished id=\d+ task=example\.tasks\.charge_card attempt=2/2 '
                       r'.*why="no attempts left \(2 of 2\)"',
    "its traceback": r"example\.tasks\.PaymentDeclined: card declined for order 1042",
    "a schedule firing": r"schedule run enqueued schedule=add-every-15-seconds",
}


@pytest.mark.django_db(transaction=True)
def test_the_first_minute_of_make_run(workers):
    call_command("enqueue_examples")  # as make run does, then the worker with its scheduler
    started = time.monotonic()
    proc = workers.manage("process_tasks", env=subprocess_env(JOBS_TEST_OPTIONS=json.dumps({"retry_backoff": 5})))

    def seen():
        output = workers.output(proc)
        return all(re.search(pattern, output) for pattern in EXPECTED.values()) and output

    try:
        output = wait_for(seen, timeout=60, message="the demo's success, retry, final failure and schedule")
    except AssertionError:
        output = workers.output(proc)
        missing = [name for name, pattern in EXPECTED.items() if not re.search(pattern, output)]
        raise AssertionError(f"missing within 60 s: {missing}\n{output}") from None
    assert time.monotonic() - started < 60
    assert "concurrency=4" in output  # the default
    assert output.count("Traceback (most recent call last)") == 1, output  # the final failure's, once
