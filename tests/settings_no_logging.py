"""The settings of this test run as a new site has them: no LOGGING, DEBUG on (``django-admin
startproject``). ``JOBS_TEST_BASE_SETTINGS`` names the run's settings (the database under test)."""

import importlib
import os

_base = importlib.import_module(os.environ.get("JOBS_TEST_BASE_SETTINGS", "tests.settings"))
globals().update({name: value for name, value in vars(_base).items() if name.isupper()})

LOGGING: dict = {}
DEBUG = True
