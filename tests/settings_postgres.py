"""Settings for the test suite on PostgreSQL.

The first process to import this starts a throwaway server (``tests.pgserver``) and
publishes its URL in ``JOBS_TEST_PG_URL``; worker subprocesses inherit it and join
the same server instead of starting their own.
"""

import os

from queue_project.settings import database_from_url
from tests.pgserver import start_server
from tests.settings import *  # noqa: F403

_url = os.environ.get("JOBS_TEST_PG_URL")
if not _url:
    _server = start_server()
    _url = os.environ["JOBS_TEST_PG_URL"] = _server.url
    os.environ["JOBS_TEST_PG_DATADIR"] = str(_server.datadir)

DATABASES = {"default": database_from_url(_url)}
_db_name = os.environ.get("JOBS_TEST_DB_NAME")
if _db_name:
    DATABASES["default"]["NAME"] = _db_name
