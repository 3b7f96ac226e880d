"""Retry policy, pure: given an attempt's outcome, decide when (or whether) to run again.

The worker only persists the decision. Nothing here touches the database or the
clock; ``rand`` is a parameter so tests can pin the jitter.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .conf import MAX_RETRY_DELAY


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay: float = 0.0  # seconds until the next attempt, when retry is True
    reason: str = ""


def backoff_delay(base: float, attempt: int, rand: float | None = None) -> float:
    """Delay before attempt ``attempt + 1``: ``base * 2**(attempt-1)``, ±25 % jitter, capped.

    Jitter keeps a burst of jobs that failed together (a mail server went down) from
    retrying together; the cap keeps a job with many attempts from sleeping for days.
    """
    rand = random.random() if rand is None else rand
    # Past 2**64 times any base the cap applies anyway; a bigger exponent (a job past
    # attempt 1024, a damaged row) would overflow the float.
    nominal = base * 2.0 ** min(max(attempt - 1, 0), 64)
    return min(nominal * (0.75 + 0.5 * rand), MAX_RETRY_DELAY)


def decide(*, attempt: int, max_attempts: int, base: float, custom_delay=None, custom_given: bool = False,
           rand: float | None = None) -> RetryDecision:
    """Whether a failed attempt number ``attempt`` is retried, and after how long.

    ``custom_delay`` is what a task's own ``backoff`` callable returned (when
    ``custom_given``): a number of seconds, or None meaning do not retry.
    """
    if attempt >= max_attempts:
        return RetryDecision(False, reason=f"no attempts left ({attempt} of {max_attempts})")
    if custom_given:
        if custom_delay is None:
            return RetryDecision(False, reason="the task's backoff said not to retry")
        delay = float(custom_delay)
        if math.isnan(delay):  # the worker refuses NaN before it gets here; never sleep on it
            delay = backoff_delay(base, attempt, rand)
        return RetryDecision(True, min(max(delay, 0.0), MAX_RETRY_DELAY))
    return RetryDecision(True, backoff_delay(base, attempt, rand))
