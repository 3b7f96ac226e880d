"""Waiting after a failure that may mend by itself (a database restarting, a lost connection).

One helper for the worker, its liveness loop, the wake-up listener and the scheduler:
each failure in a row doubles the wait, from ``first`` up to ``cap`` seconds; a
success starts again from the beginning.
"""

from __future__ import annotations


class Backoff:
    def __init__(self, first: float = 0.1, cap: float = 10.0):
        self.first, self.cap = first, cap
        self.delay = 0.0

    def failed(self) -> float:
        """One more failure: the seconds to wait before trying again."""
        self.delay = min(max(self.delay * 2, self.first), self.cap)
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0


def first_line(exc: BaseException) -> str:
    """An exception's message as one line for a log, whatever the driver put in it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
