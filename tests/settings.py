"""Settings for the test suite on SQLite (the embedded default).

Worker subprocesses started by the tests import these settings too; they find the
test database through ``JOBS_TEST_DB_NAME``, which the tests set for them.
"""

import json
import os
import tempfile

from queue_project.settings import *  # noqa: F403
from queue_project.settings import database_from_url

_db_name = os.environ.get("JOBS_TEST_DB_NAME")
if _db_name:  # a worker subprocess: use the test database itself
    DATABASES = {"default": database_from_url(f"sqlite:///{_db_name}")}
else:
    _tmp = os.environ.setdefault("JOBS_TEST_TMP", tempfile.mkdtemp(prefix="jobs-tests-"))
    DATABASES = {"default": database_from_url(f"sqlite:///{_tmp}/db.sqlite3")}
    DATABASES["default"]["TEST"] = {"NAME": f"{_tmp}/test.sqlite3"}

# The suite's task modules live outside any installed app: listed, so workers may import them.
JOBS_TASK_MODULES = ["tests.tasks", "tests.kit_tasks", "tests.bgtasks_tasks", "tests.test_admin_browser"]

TASKS = {
    "default": {
        "BACKEND": "jobs.backends.DatabaseBackend",
        "QUEUES": ["default", "emails", "reports", "other"],
        "OPTIONS": {
            "max_attempts": 3,
            "retry_backoff": 0.05,
            "stale_after": 3,
            "poll_interval": 0.05,
            "shutdown_grace": 5,
        },
    }
}

# Worker subprocesses of some tests need other OPTIONS (say, a long stale_after).
TASKS["default"]["OPTIONS"].update(json.loads(os.environ.get("JOBS_TEST_OPTIONS", "{}")))

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
LOGGING = {**LOGGING, "loggers": {**LOGGING["loggers"]}}  # noqa: F405

# The fault test's app (chaos/): its checker is tested here on made-up evidence.
INSTALLED_APPS = [*INSTALLED_APPS, "chaos"]  # noqa: F405

# tests/test_supervisor.py: the worker processes of a --processes parent die at start (not the parent).
if os.environ.get("JOBS_TEST_CHILDREN_CRASH") and os.environ.get("JOBS_WORKER_TAG"):
    raise SystemExit(3)
