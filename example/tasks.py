"""Example tasks, so that ``make run`` shows, within its first minute, a job that succeeds, one
that fails and is retried, one that fails for good (with its traceback) and a schedule firing."""

import random
import time

from jobs import task


class PaymentDeclined(Exception):
    """What a payment provider answers now and then."""


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="reports", timeout=60)
def slow_report(seconds: float = 3.0) -> dict:
    """Takes a while, like a report would."""
    time.sleep(seconds)
    return {"rows": random.randint(100, 1000), "seconds": seconds}


@task(queue_name="emails", max_attempts=4, retry_on=(ConnectionError,), takes_context=True)
def flaky_email(context, address: str) -> str:
    """The mail server does not answer the first attempt; the retry gets it through."""
    if context.attempt == 1:
        raise ConnectionError(f"mail server did not answer for {address}")
    return f"sent to {address} on attempt {context.attempt}"


@task(max_attempts=2)
def charge_card(order_id: int) -> None:
    """Declined on every attempt: after its second one the job fails for good, with its traceback."""
    raise PaymentDeclined(f"card declined for order {order_id}")
