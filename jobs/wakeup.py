"""Waking an idle worker the moment a job is enqueued, instead of at its next poll.

PostgreSQL: enqueue runs ``pg_notify`` in the enqueueing transaction (delivered on
commit, dropped on rollback) and each worker LISTENs on its own connection.
A cancel of a running job comes the same way on PostgreSQL (its own channel, the
job id as payload); on SQLite the worker finds it at its next heartbeat.
SQLite: a probe reads ``PRAGMA data_version`` every few milliseconds on its own
connection; the number changes whenever another connection commits, which costs
no disk read. MySQL and MariaDB have neither: a probe reads the job table's highest
id every 10 ms on its own connection (the end of the primary key: the optimiser
answers it without reading a row), which changes when an enqueue commits. Either
way polling stays as the fallback (and finds retries and moved run times).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

CHANNEL = "jobs_enqueued"
SQLITE_PROBE_INTERVAL = 0.002  # seconds between data_version reads on SQLite (one costs ~5 µs)
MYSQL_PROBE_INTERVAL = 0.01  # seconds between MAX(id) reads on MySQL/MariaDB (a round trip, ~0.1 ms)

# Keys of Django's OPTIONS for PostgreSQL that are not libpq connection parameters.
_DJANGO_ONLY_OPTIONS = {"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory",
                        "context", "prepare_threshold"}


def start_waker(connection, *, wake: Callable[[], None], stop: threading.Event, queues: Sequence[str] | None,
                on_cancel: Callable[[int], None] = lambda job_id: None) -> threading.Thread | None:
    """A daemon thread that calls ``wake()`` when new work may be there, and on PostgreSQL
    ``on_cancel(job_id)`` when a running job is to be cancelled; None if unsupported."""
    if connection.vendor == "postgresql":
        target, args = _listen_postgres, (connection.settings_dict, wake, stop, queues, on_cancel)
    elif connection.vendor == "sqlite":
        target, args = _probe_sqlite, (connection.settings_dict, wake, stop, queues)
    elif connection.vendor == "mysql":
        from .models import Job

        target, args = _probe_mysql, (connection.get_connection_params(), connection.ops.quote_name(
            Job._meta.db_table), wake, stop)
    else:
        return None
    thread = threading.Thread(target=target, args=args, name="jobs-waker", daemon=True)
    thread.start()
    return thread


def _listen_postgres(settings: dict, wake, stop: threading.Event, queues, on_cancel) -> None:
    import psycopg

    from .control import CANCEL_CHANNEL

    params = {"dbname": settings["NAME"], "user": settings.get("USER") or None,
              "password": settings.get("PASSWORD") or None, "host": settings.get("HOST") or None,
              "port": settings.get("PORT") or None}
    params.update({k: v for k, v in settings.get("OPTIONS", {}).items() if k not in _DJANGO_ONLY_OPTIONS})
    wanted = set(queues) if queues else None
    backoff = 0.0
    while not stop.is_set():
        try:
            with psycopg.connect(**{k: v for k, v in params.items() if v is not None}, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                backoff = 0.0
                wake()  # anything enqueued while we were not listening
                while not stop.is_set():
                    for notify in conn.notifies(timeout=0.5):
                        if notify.channel == CANCEL_CHANNEL:
                            if notify.payload.isdigit():
                                on_cancel(int(notify.payload))
                        elif wanted is None or notify.payload in wanted:
                            wake()
        except psycopg.Error as exc:
            backoff = min(max(backoff * 2, 0.2), 10.0)
            logger.warning("listen connection lost, retry_in=%.1fs error=%s", backoff, str(exc).strip()[:200])
            stop.wait(backoff)


def _probe_sqlite(settings: dict, wake, stop: threading.Event, queues) -> None:
    conn = sqlite3.connect(settings["NAME"], timeout=5, check_same_thread=False)
    try:
        last = None
        while not stop.wait(SQLITE_PROBE_INTERVAL):
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                continue
            if version != last:  # the first read too: anything enqueued before we looked
                wake()
            last = version
    finally:
        conn.close()


def _probe_mysql(params: dict, table: str, wake, stop: threading.Event) -> None:
    import MySQLdb

    backoff, conn, last = 0.0, None, None
    while not stop.wait(backoff or MYSQL_PROBE_INTERVAL):
        try:
            if conn is None:
                conn = MySQLdb.connect(**params)
                conn.autocommit(True)
            cursor = conn.cursor()
            cursor.execute(f"SELECT MAX(id) FROM {table}")
            newest = cursor.fetchone()[0]
            cursor.close()
            backoff = 0.0
        except MySQLdb.Error as exc:
            backoff = min(max(backoff * 2, 0.2), 10.0)
            logger.warning("wake-up probe lost its connection, retry_in=%.1fs error=%s", backoff, str(exc)[:200])
            if conn is not None:
                try:
                    conn.close()
                except MySQLdb.Error:
                    pass
            conn, last = None, None
            continue
        if newest != last:  # the first read too: anything enqueued before we looked
            wake()
        last = newest
    if conn is not None:
        conn.close()
