"""A database-backed job queue for Django: a Django Tasks backend and its worker.

``from jobs import task`` is Django's ``@task`` plus ``max_attempts``, ``timeout``
and ``backoff``. Nothing here imports models at import time.
"""

from .decorators import task

__all__ = ["task"]
