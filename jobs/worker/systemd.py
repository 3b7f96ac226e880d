"""systemd's ``Type=notify`` and its watchdog, spoken with the socket module alone.

systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` in its environment:
an AF_UNIX datagram socket (a path, or an abstract name written with a leading '@')
to which the service sends ``KEY=value`` lines, as ``sd_notify(3)`` does. The worker
sends ``READY=1`` once it is started (registered, its slots, liveness and wake-up
listener running), so ``systemctl start`` returns when it really serves, and
``STOPPING=1`` when it shuts down. With ``WatchdogSec=``, systemd also sets
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the process it is meant for: another
process's watchdog is not ours) and restarts a service that sent no ``WATCHDOG=1``
for that long.

The pings come from the worker's main loop, never from a thread of their own: a
thread would go on pinging while the main loop hangs (a query that never returns,
a deadlock, a receiver that blocks), and the whole point is that such a worker stops
pinging and is restarted by systemd. The loop pings every ``WATCHDOG_USEC / 4``, and
wakes up for it, so a ping is never more than half the watchdog's time late even
when one turn of the loop is slow.

Without ``NOTIFY_SOCKET`` nothing is sent. A notification that cannot be sent (the
socket gone, its queue full) is logged once and never stops the worker.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

logger = logging.getLogger("jobs.worker")

ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# A watchdog shorter than a few turns of the loop cannot be kept; pinging faster would only spin it.
MIN_PING_EVERY = 0.05


def socket_address(text: str) -> str | bytes | None:
    """``NOTIFY_SOCKET`` as an address for ``sendto``: a path, or an abstract name; None if neither."""
    if text.startswith("@") and len(text) > 1:
        return b"\0" + text[1:].encode()
    if text.startswith("/"):
        return text
    return None  # vsock:..., a relative path: not ours to guess


def watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """The watchdog's time in seconds when it is meant for this process (as ``sd_watchdog_enabled``)."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            logger.warning("systemd: WATCHDOG_PID=%r is not a process id; no watchdog pings", pid)
            return None
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        logger.warning("systemd: WATCHDOG_USEC=%r is not a positive number of microseconds; no watchdog pings",
                       usec)
        return None
    return value / 1_000_000


class Notifier:
    """What the worker tells systemd. Without an address, every method does nothing."""

    def __init__(self, address: str | bytes | None = None, *, watchdog: float | None = None):
        self.address = address
        self.ping_every = max(watchdog / 4, MIN_PING_EVERY) if address is not None and watchdog else None
        self.last_ping = float("-inf")
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = False) -> Notifier:
        """A notifier for ``NOTIFY_SOCKET`` and the watchdog variables; ``unset`` removes them from
        ``environ`` (as ``sd_notify``'s ``unset_environment``), so that a job's subprocess does not
        speak for the worker."""
        environ = os.environ if environ is None else environ
        text = environ.get("NOTIFY_SOCKET", "")
        address = socket_address(text) if text else None
        if text and address is None:
            logger.warning("systemd: NOTIFY_SOCKET=%r is neither a path nor an abstract name; not notifying", text)
        watchdog = watchdog_seconds(environ) if address is not None else None
        if unset:
            for name in ENVIRONMENT:
                environ.pop(name, None)
        return cls(address, watchdog=watchdog)

    def ready(self, status: str = "") -> None:
        self._send("READY=1", status)

    def stopping(self, status: str = "") -> None:
        """``STOPPING=1``: from now on systemd's stop timeout applies, not the watchdog; no more pings."""
        self._send("STOPPING=1", status)
        self.ping_every = None

    def ping(self, now: float) -> None:
        """``WATCHDOG=1`` if one is due at ``now`` (monotonic). Call it from the main loop only."""
        if self.ping_every is not None and now - self.last_ping >= self.ping_every:
            self.last_ping = now
            self._send("WATCHDOG=1")

    def next_ping(self) -> float | None:
        """When the next ping is due (monotonic), for the main loop's waits; None without a watchdog,
        before the first ping (starting up) and after ``stopping``."""
        if self.ping_every is None or self.last_ping == float("-inf"):
            return None
        return self.last_ping + self.ping_every

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str, status: str = "") -> None:
        if self.address is None:
            return
        if status:
            message += "\nSTATUS=" + status.replace("\n", " ")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # not inherited (PEP 446)
                self._socket.setblocking(False)  # a full queue drops a message, it never blocks the loop
            self._socket.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failed:  # once: a socket that is gone stays gone
                logger.warning("systemd: could not notify %r: %s (%s)", self.address, exc, message.split("\n")[0])
            self._failed = True
        else:
            self._failed = False
