"""The worker: ``Worker`` (the loop, ``loop.py``), its job threads (``pool.py``) and its
liveness (``liveness.py``); the database verbs are ``jobs.store``'s."""

from .loop import Worker, make_worker_id

__all__ = ["Worker", "make_worker_id"]
