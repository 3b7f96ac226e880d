"""Example tasks, so that ``make run`` shows jobs flowing from the first minute."""

import random
import time

from jobs import task


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="reports", timeout=60)
def slow_report(seconds: float = 3.0) -> dict:
    """Takes a while, like a report would."""
    time.sleep(seconds)
    return {"rows": random.randint(100, 1000), "seconds": seconds}


@task(queue_name="emails", max_attempts=4)
def flaky_email(address: str) -> str:
    """Fails now and then, like a mail server does; the retries usually get it through."""
    if random.random() < 0.4:
        raise ConnectionError(f"mail server did not answer for {address}")
    return f"sent to {address}"
