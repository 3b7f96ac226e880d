"""A settings module for the scheduler's subprocess tests, not a test module (it holds no tests).

It is the suite's settings (``SCHEDULER_TEST_BASE_SETTINGS``: ``tests.settings`` or
``tests.settings_postgres``) with ``SCHEDULED_JOBS`` read as JSON from
``SCHEDULER_TEST_JOBS``, so a test can give real ``manage.py`` processes its own schedules.
"""

import importlib
import json
import os

_base = importlib.import_module(os.environ.get("SCHEDULER_TEST_BASE_SETTINGS", "tests.settings"))
globals().update({name: value for name, value in vars(_base).items() if name.isupper()})

SCHEDULED_JOBS = json.loads(os.environ.get("SCHEDULER_TEST_JOBS", "{}"))
# Tasks that may be scheduled from the admin, for the processes that run those schedules.
SCHEDULER_ADMIN_TASKS = json.loads(os.environ.get("SCHEDULER_TEST_ADMIN_TASKS", "[]"))
