"""Which batch the calling thread's enqueues join: the state of a ``jobs.batch()`` block.

Kept apart from ``jobs.batches`` (which makes and seals batches, and reads models) so that
the backend's INSERT and ``jobs.settle`` can read it without importing either.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

_local = threading.local()


def current_batch_id() -> str | None:
    """The batch the calling thread's enqueues join, if it is inside a ``batch()`` block."""
    return getattr(_local, "batch", None)


def join(batch_id: str | None) -> None:
    """From now on the calling thread's enqueues join ``batch_id`` (None: no batch)."""
    _local.batch = batch_id


@contextmanager
def outside_batch():
    """Enqueues made inside are in no batch (a callback is not a member of the batch it reports on)."""
    saved = current_batch_id()
    join(None)
    try:
        yield
    finally:
        join(saved)
