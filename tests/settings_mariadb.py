"""Settings for the test suite on MariaDB.

The first process to import this starts a throwaway server (``tests.mariadbserver``) and
publishes its URL in ``JOBS_TEST_MARIADB_URL``; worker subprocesses inherit it and join
the same server instead of starting their own.
"""

import os

from queue_project.settings import database_from_url
from tests.mariadbserver import start_server
from tests.settings import *  # noqa: F403

_url = os.environ.get("JOBS_TEST_MARIADB_URL")
if not _url:
    _server = start_server()
    _url = os.environ["JOBS_TEST_MARIADB_URL"] = _server.url
    os.environ["JOBS_TEST_MARIADB_DATADIR"] = str(_server.datadir)

DATABASES = {"default": database_from_url(_url)}
DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
_db_name = os.environ.get("JOBS_TEST_DB_NAME")
if _db_name:
    DATABASES["default"]["NAME"] = _db_name
