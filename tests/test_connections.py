"""The connections a worker command may hold, against what the server allows."""

import pytest
from django.db import connection

from jobs.worker.connections import budget_warning, per_worker


@pytest.mark.postgres_only
def test_more_workers_than_the_server_allows_are_warned_of_naming_the_figures(db):
    # The test server allows 200 connections, 3 of them reserved for superusers.
    assert per_worker(connection, 4) == 7  # loop, heartbeat, listener, four job threads
    assert budget_warning(connection, processes=8, concurrency=4) is None  # 57
    warning = budget_warning(connection, processes=64, concurrency=4)
    assert "449 database connections (64 process(es) x 7 + 1 for the parent)" in warning
    assert "allows 197 to ordinary roles" in warning


@pytest.mark.sqlite_only
def test_sqlite_has_no_connection_limit_to_warn_of(db):
    assert budget_warning(connection, processes=64, concurrency=256) is None


@pytest.mark.postgres_only
def test_the_worker_command_says_it_at_start(workers):
    proc = workers.start("--concurrency", "256", "--burst")
    assert proc.wait(60) == 0, workers.output(proc)
    assert "may hold 259 database connections" in workers.output(proc)


@pytest.mark.sqlite_only  # plain sockets: the same everywhere
def test_setting_the_silence_options_leaves_a_descriptor_as_it_was_and_leaks_none():
    """The options go on a duplicate of the driver's descriptor: socket.setdefaulttimeout() would
    make that duplicate, and so the driver's own socket, non-blocking; a descriptor that is no socket
    must not leak the duplicate."""
    import os
    import socket

    from jobs.worker.connections import set_silence_options

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    left, right = socket.socketpair()  # AF_UNIX: no TCP options, False
    read_end, write_end = os.pipe()
    before = open_fds()
    socket.setdefaulttimeout(5)
    try:
        assert set_silence_options(left.fileno()) is False
        assert os.get_blocking(left.fileno())
        with pytest.raises(OSError):
            set_silence_options(read_end)
        assert open_fds() == before
    finally:
        socket.setdefaulttimeout(None)
        for end in (read_end, write_end):
            os.close(end)
        left.close()
        right.close()
