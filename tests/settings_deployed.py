"""The test run's settings as a deployment of the whole repository would have them: no
JOBS_TASK_MODULES, so the suite's own task modules (not an installed app) are not importable."""

import importlib
import os

_base = importlib.import_module(os.environ.get("JOBS_BASE_SETTINGS", "tests.settings"))
globals().update({name: value for name, value in vars(_base).items() if name.isupper()})
del JOBS_TASK_MODULES  # noqa: F821
