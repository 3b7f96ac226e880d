"""A worker wired for alerts as docs/howto/monitoring.md says: its LOGGING snippet (read from the
page itself, so that the two cannot drift apart), mail to ADMINS, and Sentry.

The mail goes to files and Sentry's events to a JSON-lines file, both in the folder
``JOBS_TEST_ALERTS``, for the test (``tests/test_alerts.py``) to read.
"""

import json
import os
import re
from pathlib import Path

import django
import sentry_sdk
from sentry_sdk.transport import Transport

if os.environ.get("JOBS_TEST_PG_URL"):  # started by the PostgreSQL suite
    from tests.settings_postgres import *  # noqa: F403
elif os.environ.get("JOBS_TEST_MARIADB_URL"):  # started by the MariaDB suite
    from tests.settings_mariadb import *  # noqa: F403
else:
    from tests.settings import *  # noqa: F403

_folder = Path(os.environ["JOBS_TEST_ALERTS"])
_page = (Path(__file__).resolve().parent.parent / "docs" / "howto" / "monitoring.md").read_text()
_snippet = re.search(r"<!-- alerts-logging -->\n(?:%[^\n]*\n)?```python\n(.*?)```", _page, re.S).group(1)
exec(_snippet)  # defines LOGGING, as in the reader's settings.py

DEBUG = False
SECRET_KEY = "alerts-test"
ADMINS = ["ops@example.com"] if django.VERSION >= (6, 0) else [("Ops", "ops@example.com")]
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.filebased.EmailBackend",
                           "OPTIONS": {"file_path": str(_folder / "mail")}}}
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = str(_folder / "mail")


class _FileTransport(Transport):
    """Sentry's events into a file instead of over HTTP."""

    def capture_envelope(self, envelope):
        event = envelope.get_event()
        if event is not None:
            with open(_folder / "sentry.jsonl", "a") as events:
                events.write(json.dumps(event, default=str) + "\n")


# Sentry as the page's snippet sets it up (read from the page too), its events into the
# file: the transport writes each event inside the logging call, so the file is complete
# when the worker exits, however loaded the machine.
os.environ["SENTRY_DSN"] = "https://key@sentry.invalid/1"
_init = sentry_sdk.init
sentry_sdk.init = lambda *args, **kwargs: _init(*args, transport=_FileTransport, **kwargs)
try:
    exec(re.search(r"<!-- alerts-sentry -->\n(?:%[^\n]*\n)?```python\n(.*?)```", _page, re.S).group(1))
finally:
    sentry_sdk.init = _init
ignore_events("django_tasks")  # noqa: F405 - the snippet's; the backport's logger, on Django 5.2
