"""A free TCP port on 127.0.0.1 for a throwaway server (PostgreSQL, MariaDB, PgBouncer, the web server).

The port is chosen below the kernel's ephemeral range (``ip_local_port_range``), where
``connect()`` takes the local ports of outgoing connections from. A port the kernel hands out
for ``bind(("127.0.0.1", 0))`` lies inside that range: between the test's look and the
server's own bind (seconds later, after ``initdb``; or across a restart on the same port) any
client connection on the machine, of this suite or of another running beside it, may take it
as its local port, and the server then fails to start with "address already in use". Below the
range only a server that chose the same port at random can take it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10000  # clear of the well-known and commonly configured ports below


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port that nothing is bound to now, outside the ephemeral range when there is room."""
    low, _ = _ephemeral_range()
    if low - LOWEST >= 1000:
        candidates = random.Random().sample(range(LOWEST, low), 200)
        for port in candidates:
            if _bindable(port):
                return port
    with socket.socket() as sock:  # no room below the range: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
