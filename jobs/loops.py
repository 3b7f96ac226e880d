"""Extra loops that run inside every worker, registered by other apps.

The scheduler app registers its tick here in ``AppConfig.ready()``, so ``jobs``
never imports ``scheduler``. A loop is ``fn(stop: threading.Event) -> None``: it
runs in its own thread with its own database connection, and returns soon after
``stop`` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

WorkerLoop = Callable[[threading.Event], None]

_registry: dict[str, WorkerLoop] = {}


def register_worker_loop(name: str, loop: WorkerLoop) -> None:
    _registry[name] = loop


def worker_loops() -> dict[str, WorkerLoop]:
    return dict(_registry)
