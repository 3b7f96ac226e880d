"""Waking an idle worker the moment a job is enqueued, instead of at its next poll.

PostgreSQL: enqueue runs ``pg_notify`` in the enqueueing transaction (delivered on
commit, dropped on rollback) and each worker LISTENs on its own connection.
SQLite: a probe reads ``PRAGMA data_version`` every few milliseconds on its own
connection; the number changes whenever another connection commits, which costs
no disk read. MySQL and MariaDB have neither: a probe reads the job table's highest
id every 10 ms on its own connection (the end of the primary key: the optimiser
answers it without reading a row), which changes when an enqueue commits. Either
way polling stays as the fallback (and finds retries and moved run times).

A cancel of a running job comes as a hint: on PostgreSQL a notification on its own
channel, on SQLite any commit, on MySQL/MariaDB every half second (no change it could
probe for cheaply says so). The worker then reads its rows' cancel flags (see
``jobs.worker.liveness``): anyone who can connect can NOTIFY, so a payload is never
trusted, nor even parsed, and no payload, however odd, can end this thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from .pooler import DIRECT_URL_SETTING, direct_url, transaction_pooled

logger = logging.getLogger(__name__)

CHANNEL = "jobs_enqueued"
CANCEL_CHANNEL = "jobs_cancel"  # PostgreSQL: the wake-up channel for cancels (a hint: the payload is not read)
SQLITE_PROBE_INTERVAL = 0.002  # seconds between data_version reads on SQLite (one costs ~5 µs)
POOLED_CANCEL_LOOK = 0.5  # seconds between looks for cancels behind a pooler without LISTEN
MYSQL_PROBE_INTERVAL = 0.01  # seconds between MAX(id) reads on MySQL/MariaDB (a round trip, ~0.1 ms)

# Keys of Django's OPTIONS for PostgreSQL that are not libpq connection parameters.
_DJANGO_ONLY_OPTIONS = {"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory",
                        "context", "prepare_threshold"}


def start_waker(connection, *, wake: Callable[[], None], stop: threading.Event, queues: Sequence[str] | None,
                on_cancel: Callable[[], None] = lambda: None) -> threading.Thread | None:
    """A daemon thread that calls ``wake()`` when new work may be there, and ``on_cancel()`` when a
    cancel may have been asked (a hint to read the rows); None if unsupported."""
    if connection.vendor == "postgresql":
        if transaction_pooled(connection.settings_dict) and not direct_url():
            logger.info("no wake-up listener: behind a transaction pooler without %s, new jobs are found by "
                        "polling, and cancels by a look at the held rows every %gs", DIRECT_URL_SETTING,
                        POOLED_CANCEL_LOOK)
            target, args = _look_for_cancels, (stop, on_cancel)
        else:
            target, args = _listen_postgres, (connection.settings_dict, wake, stop, queues, on_cancel)
    elif connection.vendor == "sqlite":
        target, args = _probe_sqlite, (connection.settings_dict, wake, stop, queues, on_cancel)
    elif connection.vendor == "mysql":
        from .models import Job

        target, args = _probe_mysql, (connection.get_connection_params(), connection.ops.quote_name(
            Job._meta.db_table), wake, stop, on_cancel)
    else:
        return None
    thread = threading.Thread(target=target, args=args, name="jobs-waker", daemon=True)
    thread.start()
    return thread


def _listen_postgres(settings: dict, wake, stop: threading.Event, queues, on_cancel) -> None:
    import psycopg

    params = {"dbname": settings["NAME"], "user": settings.get("USER") or None,
              "password": settings.get("PASSWORD") or None, "host": settings.get("HOST") or None,
              "port": settings.get("PORT") or None}
    params.update({k: v for k, v in settings.get("OPTIONS", {}).items() if k not in _DJANGO_ONLY_OPTIONS})
    if transaction_pooled(settings):  # LISTEN through the pooler hears nothing: the direct connection
        params = {"conninfo": direct_url(), "dbname": settings["NAME"]}
    wanted = set(queues) if queues else None
    backoff = 0.0
    checked = False
    while not stop.is_set():
        def connect():
            return psycopg.connect(**{k: v for k, v in params.items() if v is not None}, autocommit=True)

        try:
            with connect() as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                if not checked:  # once per worker: a pooler in between makes LISTEN hear nothing
                    checked = True
                    if not _hears_others(conn, connect):
                        logger.warning(
                            "LISTEN hears nothing on this connection (a transaction pooler such as PgBouncer in "
                            "between?): no wake-ups, new jobs and cancels are found by polling. Behind a pooler "
                            "set DATABASE_POOLER=transaction (the README's PgBouncer settings) and %s",
                            DIRECT_URL_SETTING)
                        return
                conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                backoff = 0.0
                wake()  # anything enqueued while we were not listening
                while not stop.is_set():
                    for notify in conn.notifies(timeout=0.5):
                        _heed(notify.channel == CANCEL_CHANNEL, notify.payload, wanted, wake, on_cancel)
        except Exception as exc:  # noqa: BLE001 - a lost connection, or a bug: this thread must go on
            backoff = min(max(backoff * 2, 0.2), 10.0)
            logger.warning("listen connection lost, retry_in=%.1fs error=%s: %s", backoff, type(exc).__name__,
                           str(exc).strip()[:200])
            stop.wait(backoff)


def _hears_others(conn, connect: Callable[[], object], timeout: float = 2.0) -> bool:
    """Whether a notification sent on another connection reaches this listening one. Through a
    transaction pooler it does not: the server session that ran LISTEN went back to the pool
    when that statement ended, and PgBouncer drops what arrives for an unlinked session."""
    token = f"probe-{uuid.uuid4().hex}"
    with connect() as sender:
        sender.execute("SELECT pg_notify(%s, %s)", [CHANNEL, token])
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for notify in conn.notifies(timeout=left):  # an enqueue's meanwhile: the caller wakes anyway
            if notify.channel == CHANNEL and notify.payload == token:
                return True
    return False


def _look_for_cancels(stop: threading.Event, on_cancel) -> None:
    """Behind a pooler with no direct connection to LISTEN on: no notification will come, so the
    held rows are read for cancel requests every POOLED_CANCEL_LOOK seconds (one small query)."""
    while not stop.wait(POOLED_CANCEL_LOOK):
        _heed(True, None, None, lambda: None, on_cancel)


def _heed(cancel: bool, payload, wanted, wake, on_cancel) -> None:
    """One notification: a cancel hint (payload ignored), or a wake-up for one of our queues."""
    try:
        if cancel:
            on_cancel()
        elif wanted is None or payload in wanted:
            wake()
    except Exception:  # noqa: BLE001 - one notification never ends the listener
        logger.exception("wake-up notification not handled")


def _probe_sqlite(settings: dict, wake, stop: threading.Event, queues, on_cancel) -> None:
    conn = sqlite3.connect(settings["NAME"], timeout=5, check_same_thread=False)
    try:
        last = None
        while not stop.wait(SQLITE_PROBE_INTERVAL):
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                continue
            if version != last:  # the first read too: anything enqueued before we looked
                _heed(False, None, None, wake, on_cancel)
                _heed(True, None, None, wake, on_cancel)
            last = version
    finally:
        conn.close()


def _probe_mysql(params: dict, table: str, wake, stop: threading.Event, on_cancel) -> None:
    import MySQLdb

    backoff, conn, last = 0.0, None, None
    next_cancel_look = time.monotonic() + POOLED_CANCEL_LOOK
    while not stop.wait(backoff or MYSQL_PROBE_INTERVAL):
        if time.monotonic() >= next_cancel_look:  # a cancel is an UPDATE: MAX(id) does not show it
            next_cancel_look = time.monotonic() + POOLED_CANCEL_LOOK
            _heed(True, None, None, wake, on_cancel)
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
