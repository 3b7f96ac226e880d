"""A worker's own PostgreSQL (and MySQL/MariaDB) sessions may not hold row locks for long once it
stops answering.

A worker paused (SIGSTOP, a long GC, a VM migration) or cut off by the network in
the middle of a transaction keeps every row that transaction locked until its
session ends. That includes rows it never wrote: PostgreSQL keeps a row locked that
``FOR UPDATE SKIP LOCKED`` locked and then let go because another worker had just
claimed it (``make chaos`` found it: a live worker blocked writing its own jobs for as
long as a frozen one stayed frozen). Most of a worker's writes are single statements,
whose locks end with them on the server whatever the client does; the few
transactions of several statements (a claim of jobs with limit keys, a batch with
failures, a hand-back) are what this guards.

The loop's and the liveness thread's sessions, and only theirs (the job threads run
the user's code, which may keep a transaction open on purpose), are started with
``idle_in_transaction_session_timeout`` and ``lock_timeout`` set to a fraction of
``stale_after``: the server ends a transaction left idle that long (the worker's next
step fails, reconnects and writes again; nothing it wrote half-way stays), and a
worker never waits longer than that for a lock, so a frozen peer cannot stall it past
the point where it would itself be taken for lost.

Behind PgBouncer in transaction pooling (``"prepare_threshold": None`` in OPTIONS, the
README's PgBouncer setting) session settings would leak to other clients, so none are
made: set the two on the worker's database role instead (``ALTER ROLE ... SET``). On MySQL and
MariaDB the two are ``innodb_lock_wait_timeout`` and (MariaDB only) ``idle_transaction_timeout``,
in whole seconds (at least 1).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DatabaseError, connections
from django.db.backends.signals import connection_created

from .pooler import transaction_pooled

_local = threading.local()
MAX_HOLD = 2.0  # seconds: the most a worker's transaction may sit idle, or wait for a lock


def hold_limit(stale_after: float) -> float:
    """A quarter of ``stale_after`` (at least three heartbeats fit in it), at most MAX_HOLD."""
    return min(MAX_HOLD, stale_after / 4)


@contextmanager
def guarded_sessions(seconds: float) -> Iterator[None]:
    """Meanwhile every PostgreSQL session this thread has open or opens ends a transaction left
    idle for ``seconds`` and waits at most ``seconds`` for a lock; afterwards, as before."""
    _local.seconds = seconds
    connection_created.connect(_on_connect, dispatch_uid="jobs.sessions")
    for connection in _open_connections():
        try:
            _apply(connection, seconds)
        except DatabaseError:  # broken: closed, so the next use opens a session with the settings
            connection.close()
    try:
        yield
    finally:
        _local.seconds = None
        for connection in _open_connections():
            try:
                _apply(connection, None)
            except DatabaseError:  # a broken connection is closed by whoever uses it next
                pass


def _open_connections():
    return [c for c in connections.all(initialized_only=True) if c.connection is not None and guarded(c)]


def _on_connect(sender, connection, **kwargs) -> None:
    seconds = getattr(_local, "seconds", None)
    if seconds:
        _apply(connection, seconds)


def guarded(connection) -> bool:
    """Whether this connection's sessions get the settings (PostgreSQL, not behind PgBouncer; MySQL
    and MariaDB)."""
    if connection.vendor == "mysql":
        return True
    return connection.vendor == "postgresql" and not transaction_pooled(connection.settings_dict)


def _apply(connection, seconds: float | None) -> None:
    """Set both (None: back to the server's defaults) on this session, outside any transaction."""
    if not guarded(connection) or connection.in_atomic_block:
        return
    if connection.vendor == "mysql":
        # Whole seconds, at least 1. MariaDB ends a transaction left idle (idle_transaction_timeout,
        # closing the session as PostgreSQL does); MySQL has only the lock wait's limit.
        value = "DEFAULT" if seconds is None else str(max(1, math.ceil(seconds)))
        idle = f", idle_transaction_timeout = {value}" if getattr(connection, "mysql_is_mariadb", False) else ""
        with connection.cursor() as cursor:
            cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {value}{idle}")
        return
    value = None if seconds is None else str(max(1, int(seconds * 1000)))
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config(name, COALESCE(%s, reset_val), false) FROM pg_settings "
                       "WHERE name IN ('idle_in_transaction_session_timeout', 'lock_timeout')", [value])
