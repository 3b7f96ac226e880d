"""Settings of the fault test: the host project's, plus the ``chaos`` app and OPTIONS
short enough that faults bite within a short run.

``DATABASE_URL`` comes from the harness (each host reaches the server at its own
address), so ``DATABASES`` is built by ``queue_project.settings.database_from_url``
exactly as in production.
"""

import faulthandler
import signal

from queue_project.settings import *  # noqa: F403
from queue_project.settings import INSTALLED_APPS

# SIGUSR1 writes every thread's stack to the worker's log: the harness asks a hung worker for it.
faulthandler.register(signal.SIGUSR1, all_threads=True)

INSTALLED_APPS = [*INSTALLED_APPS, "chaos"]
DEBUG = False  # no query log growing in long-running workers

STALE_AFTER = 3.0  # seconds; the smallest the queue allows, so that a 5 s fault loses a worker

TASKS = {
    "default": {
        "BACKEND": "jobs.backends.DatabaseBackend",
        "QUEUES": ["default", "hard"],  # hard: only the --processes hosts serve it (chaos.hosts)
        "OPTIONS": {
            "max_attempts": 5,
            "retry_backoff": 0.2,
            "stale_after": STALE_AFTER,
            "poll_interval": 0.5,
            "shutdown_grace": 2,  # shorter than the slow jobs: SIGTERM hands some back
        },
    }
}
SCHEDULED_JOBS = {}
