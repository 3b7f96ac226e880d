"""A database-backed job queue for Django: a Django Tasks backend and its worker.

``from jobs import task`` is Django's ``@task`` plus the queue's options (``max_attempts``,
``timeout``, ``backoff``, ``unique``, ``concurrency_key``, ``rate_limit``); ``cancel``,
``cancel_requested``, ``set_progress`` and ``get_progress`` control running jobs; ``batch``,
``get_batch``, ``enqueue_after`` and ``parent_results`` coordinate jobs.
Nothing here imports models at import time.
"""

from .batches import batch, get_batch
from .decorators import task
from .dependencies import enqueue_after, parent_results

# The one place the version lives: pyproject.toml reads it from here (hatchling, without importing).
__version__ = "0.1.0"


def enqueue_many(task, calls, *, batch_size: int = 1000):
    """Enqueue ``task`` once per ``(args, kwargs)`` pair in bulk; returns the TaskResults.

    Works for ``jobs.task`` and plain Django tasks alike. On ``jobs.backends.DatabaseBackend``
    it is a few INSERTs; on any other backend (Django's ImmediateBackend in tests, say) it
    is ``task.enqueue(*args, **kwargs)`` once per call.
    """
    backend = task.get_backend()
    if hasattr(backend, "enqueue_many"):
        return backend.enqueue_many(task, calls, batch_size=batch_size)
    calls = list(calls)
    for index, call in enumerate(calls):
        if not (isinstance(call, (tuple, list)) and len(call) == 2):
            raise TypeError(f"{task.module_path}: call {index} must be an (args, kwargs) pair, got {call!r}")
    return [task.enqueue(*args, **kwargs) for args, kwargs in calls]


def cancel(result_id, reason: str = "", *, by: str = "") -> str:
    """Cancel a job: READY ones at once, RUNNING ones by asking their worker (``jobs.control``).

    Returns ``"cancelled"``, ``"requested"`` or ``"finished"`` (a finished job is left as it was).
    """
    from .control import cancel

    return cancel(result_id, reason, by=by)


def cancel_requested() -> bool:
    """Inside a running task: whether someone asked to cancel its job."""
    from .control import cancel_requested

    return cancel_requested()


def set_progress(done, total=None, message: str = "") -> None:
    """Inside a running task: record how far it has got (written a few times a second at most)."""
    from .control import set_progress

    set_progress(done, total, message)


def get_progress(result_id) -> dict | None:
    """A job's latest progress, ``{"done", "total", "message", "updated_at"}``, or None."""
    from .control import get_progress

    return get_progress(result_id)


__all__ = ["__version__", "batch", "cancel", "cancel_requested", "enqueue_after", "enqueue_many", "get_batch",
           "get_progress", "parent_results", "set_progress", "task"]
