"""The host project's database settings: connections that give up on a silent server."""

import socket

import pytest
from django.db import connection

from queue_project.settings import POSTGRES_OPTIONS, database_from_url


def test_postgres_urls_get_tcp_timeouts_and_the_url_wins():
    options = database_from_url("postgres://u@db.example:5432/site")["OPTIONS"]
    assert options == POSTGRES_OPTIONS
    assert options["connect_timeout"] == 10 and options["keepalives"] == 1 and options["tcp_user_timeout"] == 25000
    overridden = database_from_url("postgres://u@db.example/site?connect_timeout=3&application_name=web")["OPTIONS"]
    assert overridden["connect_timeout"] == 3 and overridden["application_name"] == "web"
    assert overridden["keepalives_idle"] == 10


def test_sqlite_urls_get_no_postgres_options():
    assert "keepalives" not in database_from_url("sqlite:////tmp/x.sqlite3")["OPTIONS"]


@pytest.mark.postgres_only
@pytest.mark.django_db
def test_a_postgres_connection_socket_has_keepalives_and_a_user_timeout():
    """Read the options back from the real socket: libpq applied them."""
    connection.ensure_connection()
    fd = connection.connection.pgconn.socket
    sock = socket.socket(fileno=socket.dup(fd))
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 25000
    finally:
        sock.close()
