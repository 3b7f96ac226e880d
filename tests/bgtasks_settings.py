"""Our test settings plus the shop app written for django-background-tasks.

What moving that project here takes in settings: ``INSTALLED_APPS`` loses
``background_task`` (ours has ``jobs`` already) and keeps the app, ``bgshop``.
The base is the settings module of the test run (SQLite or PostgreSQL), named in
``BGTASKS_BASE_SETTINGS``; ``BGTASKS_SOURCE_DB`` adds the real package's SQLite
file as the ``bgtasks`` database, for ``import_background_tasks --database bgtasks``.
"""

import importlib
import os

_base = importlib.import_module(os.environ.get("BGTASKS_BASE_SETTINGS", "tests.settings"))
globals().update({name: value for name, value in vars(_base).items() if name.isupper()})

INSTALLED_APPS = [*_base.INSTALLED_APPS, "bgshop"]

if os.environ.get("BGSHOP_ORDERING"):  # kept from the project's settings, as a user would keep it
    BACKGROUND_TASK_PRIORITY_ORDERING = os.environ["BGSHOP_ORDERING"]

if os.environ.get("BGTASKS_SOURCE_DB"):
    DATABASES = {**_base.DATABASES,
                 "bgtasks": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BGTASKS_SOURCE_DB"]}}
