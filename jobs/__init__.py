"""A database-backed job queue for Django: a Django Tasks backend and its worker.

``from jobs import task`` is Django's ``@task`` plus ``max_attempts``, ``timeout``
and ``backoff``. Nothing here imports models at import time.
"""

from .decorators import task

# The one place the version lives: pyproject.toml reads it from here (hatchling, without importing).
__version__ = "0.1.0"


def enqueue_many(task, calls, *, batch_size: int = 1000):
    """Enqueue ``task`` once per ``(args, kwargs)`` pair in bulk; returns the TaskResults.

    Works for ``jobs.task`` and plain Django tasks alike, as long as their backend is
    ``jobs.backends.DatabaseBackend``.
    """
    backend = task.get_backend()
    if not hasattr(backend, "enqueue_many"):
        raise TypeError(f"{task.module_path}: backend {type(backend).__name__} has no bulk enqueue")
    return backend.enqueue_many(task, calls, batch_size=batch_size)


__all__ = ["__version__", "enqueue_many", "task"]
