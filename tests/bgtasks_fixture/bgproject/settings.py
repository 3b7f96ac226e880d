"""Settings of the small project written for django-background-tasks.

Run by the compat tests on the real package (an older Django, in its own
virtualenv): the database file and the record file come from the environment.
"""

import os

SECRET_KEY = "bgtasks-fixture-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "background_task",
    "bgshop",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BGSHOP_DB"]}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
BACKGROUND_TASK_RUN_ASYNC = False
BACKGROUND_TASK_PRIORITY_ORDERING = os.environ.get("BGSHOP_ORDERING", "DESC")
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "root": {"handlers": ["console"], "level": "WARNING"},
           "handlers": {"console": {"class": "logging.StreamHandler"}}}
