"""How many database connections a worker command holds, against what the server allows.

Each worker process holds: its main loop's, its heartbeat's, on PostgreSQL its wake-up
listener's (none behind a pooler without a direct URL), and one per job thread that has
run a job (kept open across jobs: a new PostgreSQL connection costs more than a small
job). A ``--processes`` parent holds one more. So ``process_tasks --processes 8
--concurrency 4`` holds up to 8 x (3 + 4) + 1 = 57. Past ``max_connections`` less the
superuser reserve, the last workers to connect fail, in a loop, with "too many clients".

And how a worker's MySQL/MariaDB connections notice a server gone silent (``notice_silence``).
"""

from __future__ import annotations

import logging
import os
import socket

from django.db.backends.signals import connection_created

from ..pooler import direct_url, transaction_pooled

logger = logging.getLogger("jobs.worker")


def per_worker(connection, concurrency: int) -> int:
    """The connections one worker process may hold on ``connection``'s database."""
    listener = connection.vendor == "postgresql" and (not transaction_pooled(connection.settings_dict)
                                                      or bool(direct_url()))
    return 2 + int(listener) + concurrency


def server_allows(connection) -> tuple[int, int] | None:
    """(connections the server allows ordinary roles, connections open now), or None where
    there is no such limit (SQLite) or it cannot be read."""
    queries = {
        "postgresql": "SELECT current_setting('max_connections')::int "
                      "- current_setting('superuser_reserved_connections')::int, "
                      "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
        "mysql": "SELECT @@max_connections, (SELECT COUNT(*) FROM information_schema.PROCESSLIST)",
    }
    sql = queries.get(connection.vendor)
    if sql is None:
        return None
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            allowed, in_use = cursor.fetchone()
        return int(allowed), int(in_use)
    except Exception:  # noqa: BLE001 - no view of the server's limits (a pooler, no privilege): say nothing
        return None


def budget_warning(connection, *, processes: int, concurrency: int) -> str | None:
    """A warning when the worker processes a command starts may hold more connections than the
    server allows; None when they fit or nothing can be known. Behind a transaction pooler the
    server's limit is the pool's business, so nothing is said."""
    if transaction_pooled(connection.settings_dict):
        return None
    limits = server_allows(connection)
    if limits is None:
        return None
    allowed, in_use = limits
    need = processes * per_worker(connection, concurrency) + (1 if processes > 1 else 0)
    if need <= allowed:
        return None
    return (f"these workers may hold {need} database connections ({processes} process(es) x "
            f"{per_worker(connection, concurrency)}{' + 1 for the parent' if processes > 1 else ''}) but the server "
            f"allows {allowed} to ordinary roles ({in_use} open now): raise max_connections, or run fewer "
            "--processes/--concurrency, or put PgBouncer in front (README: PgBouncer)")


# On PostgreSQL the README puts libpq's keepalive and tcp_user_timeout parameters in OPTIONS. The
# MySQL drivers have no such options, so a worker sets them on the socket itself: a connection
# whose server has gone silent (a partition, a dead host, a frozen VM) fails within ~25 s and the
# worker reconnects, instead of waiting on TCP's retransmissions for up to ~15 minutes (and after
# a partition heals, for the next retransmission: up to two minutes more). They trip on silence
# only, never on a slow query: the server's kernel answers keepalives while a query runs.
SILENCE_OPTIONS = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 25_000}


def notice_silence() -> None:
    """From now on, every MySQL/MariaDB connection this process opens over TCP gets
    ``SILENCE_OPTIONS`` (a Unix socket needs none)."""
    connection_created.connect(_on_connect, dispatch_uid="jobs.worker.notice_silence")


def _on_connect(sender, connection, **kwargs) -> None:
    if connection.vendor != "mysql":
        return
    fileno = getattr(connection.connection, "fileno", None)  # mysqlclient's; PyMySQL shows no socket
    if fileno is None:
        return
    try:
        set_silence_options(fileno())
    except (OSError, ValueError) as exc:  # a kernel without one of the options: TCP's defaults, as before
        logger.debug("silence options not set on a database connection: %s", exc)


def set_silence_options(fd: int) -> bool:
    """Set SO_KEEPALIVE and SILENCE_OPTIONS on the TCP socket ``fd``; False when it is not one.
    The driver's descriptor is left as it was (blocking or not), whatever socket's defaults are."""
    blocking = os.get_blocking(fd)
    duplicate = os.dup(fd)
    try:
        sock = socket.socket(fileno=duplicate)  # our own descriptor of the driver's socket
    except OSError:
        os.close(duplicate)
        raise
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in SILENCE_OPTIONS.items():
            option = getattr(socket, name, None)  # all four on Linux
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        return True
    finally:
        sock.close()
        os.set_blocking(fd, blocking)  # socket.setdefaulttimeout() would have made it non-blocking


# The MySQL client's errors for a server it cannot reach or lost (CR_CONNECTION_ERROR,
# CR_CONN_HOST_ERROR, CR_SERVER_GONE_ERROR, CR_SERVER_LOST), as against one that refused it
# (1045 access denied, 1049 unknown database, ...).
MYSQL_UNREACHABLE = frozenset({2002, 2003, 2006, 2013})


def unreachable(exc: BaseException) -> bool:
    """Whether a database error says the server cannot be reached now (down, restarting, cut
    off), which a worker waits out, rather than that it refused us, which is a setting to fix."""
    cause = exc.__cause__ if isinstance(exc.__cause__, BaseException) else exc
    args = getattr(cause, "args", ())
    if args and isinstance(args[0], int):  # MySQLdb: (code, message)
        return args[0] in MYSQL_UNREACHABLE
    # psycopg: a failure to connect carries no SQLSTATE; a refusal does (28P01 password, 3D000 database).
    return type(cause).__module__.startswith("psycopg") and getattr(cause, "sqlstate", "") is None
