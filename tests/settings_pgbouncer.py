"""Settings for the suite's process tests with every worker behind PgBouncer in transaction pooling.

The test process itself (it creates and drops the test database, enqueues and looks)
talks to PostgreSQL directly. Every ``manage.py`` subprocess it starts, the workers,
reaches the same database through a throwaway PgBouncer (``pool_mode = transaction``),
with the settings ``queue_project/settings.py`` applies for ``DATABASE_POOLER=transaction``
and, unless a test says otherwise, ``DATABASE_DIRECT_URL`` for LISTEN.
"""

import os

from queue_project.settings import database_from_url
from tests.pgbouncer import start_pgbouncer
from tests.pgserver import start_server
from tests.settings import *  # noqa: F403

_url = os.environ.get("JOBS_TEST_PG_URL")
if not _url:
    _server = start_server()
    _url = os.environ["JOBS_TEST_PG_URL"] = _server.url
    os.environ["JOBS_TEST_PG_DATADIR"] = str(_server.datadir)
    _bouncer = start_pgbouncer(_server.port)
    os.environ["JOBS_TEST_PGBOUNCER_URL"] = _bouncer.url()

_db_name = os.environ.get("JOBS_TEST_DB_NAME")
if _db_name:  # a worker subprocess: through the pooler
    _pooled = os.environ["JOBS_TEST_PGBOUNCER_URL"].rsplit("/", 1)[0] + f"/{_db_name}"
    if os.environ.get("JOBS_TEST_POOLER_SETTINGS") == "off":  # a project that forgot them
        DATABASES = {"default": database_from_url(_pooled, pooler="")}
        JOBS_DIRECT_DATABASE_URL = ""
    else:
        DATABASES = {"default": database_from_url(_pooled, pooler="transaction")}
        _direct = os.environ.get("DATABASE_DIRECT_URL", _url.rsplit("/", 1)[0] + f"/{_db_name}")
        JOBS_DIRECT_DATABASE_URL = _direct if _direct != "none" else ""
else:
    DATABASES = {"default": database_from_url(_url)}

VIA_PGBOUNCER = True
