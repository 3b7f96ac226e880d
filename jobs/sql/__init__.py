"""The queue's SQL that is not plain ORM, as named statements, one module per database.

Everything a worker does per job, and every enqueue, goes through these: the claim
(the only statement that takes READY jobs), writing successes together with the
next claim, single and bulk inserts, the stale sweep's read. ``statements(connection)``
picks the vendor's set: ``postgresql``, ``sqlite``, ``mysql`` (MySQL and MariaDB);
``generic`` is the ORM version for any other database Django has a backend for, untested.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db import connections, router

from ..framework import DEFAULT_TASK_BACKEND_ALIAS
from ..models import Job
from .base import Statements


def statements(connection) -> Statements:
    """The named statements for ``connection``'s database."""
    cached = getattr(connection, "_jobs_statements", None)
    if cached is not None and cached.connection is connection:
        return cached
    if connection.vendor == "postgresql":
        from .postgresql import PostgresStatements as cls
    elif connection.vendor == "sqlite":
        from .sqlite import SqliteStatements as cls
    elif connection.vendor == "mysql":
        from .mysql import MysqlStatements as cls
    else:
        from .generic import GenericStatements as cls
    connection._jobs_statements = made = cls(connection)
    return made


def claim_sql(connection, *, worker_id: str, limit: int, now: datetime, queues, backend: str = "default",
              rooms: dict[str, int] | None = None) -> tuple[str, list]:
    """The claim statement the workers run (exposed so that tests can EXPLAIN it)."""
    return statements(connection).claim_sql(worker_id=worker_id, limit=limit, now=now, queues=queues,
                                            backend=backend, rooms=rooms or {})


def claim(*, worker_id: str, limit: int, now: datetime, queues: Sequence[str] | None = None,
          backend: str = DEFAULT_TASK_BACKEND_ALIAS, using: str | None = None):
    """Take up to ``limit`` due jobs of ``backend`` for ``worker_id`` (the statements' claim), on
    the database ``using`` (by default the one the router gives for writing jobs)."""
    if limit <= 0:
        return []
    return statements(connections[using or router.db_for_write(Job)]).claim(
        worker_id=worker_id, limit=limit, now=now, queues=queues, backend=backend)
