"""Our queue as deployed: the host project's settings, unchanged.

The adapter sets the environment a deployment would: ``DJANGO_DEBUG=0``,
``DJANGO_SECRET_KEY`` and ``DATABASE_URL`` (the run's database), so
``DATABASES`` comes from ``queue_project.settings.database_from_url`` with its
production options (kept-open connections; on SQLite WAL, ``synchronous=NORMAL``,
IMMEDIATE transactions). TASKS OPTIONS stay at their defaults (poll_interval 1 s).
"""

from queue_project.settings import *  # noqa: F403

# The benchmark's tasks live in a module of their own, outside any installed app.
JOBS_TASK_MODULES = ["bench_tasks"]
