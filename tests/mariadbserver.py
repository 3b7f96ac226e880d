"""A throwaway MariaDB server for the test suite, the benchmark and the fault test.

The server lives in a temporary data directory on a free loopback port and is
removed when stopped. When we are root, ``mariadbd`` runs as the ``mysql`` OS user,
who owns the data directory. The tests connect over TCP as a user made at start
with every privilege (Django's test runner creates and drops databases). Nothing
here relies on a server that was already running.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import free_port

USER = "jobs"
# Durability off (a test server's data dies with it), utf8mb4 throughout; the isolation level
# stays the server's default (REPEATABLE READ): Django sets READ COMMITTED per connection.
TEST_SETTINGS = ("--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--sync-binlog=0",
                 "--innodb-buffer-pool-size=256M", "--innodb-log-file-size=64M", "--max-connections=400",
                 "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                 "--skip-name-resolve", "--skip-log-bin", "--innodb-lock-wait-timeout=20",
                 "--max-allowed-packet=256M")


class MariadbUnavailable(RuntimeError):
    """No MariaDB server binaries were found on this machine."""


def find_binaries() -> tuple[str, str] | None:
    """(mariadbd, mariadb-install-db): PATH first, then Debian's /usr/sbin."""
    server = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin")
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if server and install:
        return server, install
    return None


@dataclass
class MariadbServer:
    """One running throwaway server; ``url`` reaches its ``mysql`` database as a user with every privilege."""

    server: str
    datadir: Path
    port: int
    as_user: list[str]
    settings: tuple[str, ...] = TEST_SETTINGS
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mysql://{USER}@{self.host}:{self.port}/mysql"

    @property
    def socket_path(self) -> Path:
        return self.datadir / "mysqld.sock"

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.datadir / "server.log", "ab")
        self.process = subprocess.Popen(
            [*self.as_user, self.server, "--no-defaults", f"--datadir={self.datadir / 'data'}",
             f"--port={self.port}", f"--bind-address={self.host}", f"--socket={self.socket_path}",
             f"--pid-file={self.datadir / 'mysqld.pid'}", f"--tmpdir={self.datadir}", *self.settings],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mariadbd did not listen within {timeout}s: {self.log_tail()}") from None
                time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            return (self.datadir / "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def sql(self, statement: str) -> str:
        """Run SQL as root through the socket (the server's own client)."""
        client = shutil.which("mariadb") or shutil.which("mysql")
        out = subprocess.run([client, "--no-defaults", f"--socket={self.socket_path}", "-u", "root", "-N", "-B",
                              "-e", statement], check=True, capture_output=True, text=True)
        return out.stdout

    def stop(self, *, kill: bool = False) -> None:
        """Stop (``kill``: SIGKILL, dropping every client, as a crash would)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        import signal

        # The server may run as another user (runuser): signal its whole session, then wait for
        # mariadbd itself to be gone (a new one could not lock the data files before).
        server_pid = self._server_pid()
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        deadline = time.monotonic() + 30
        while server_pid and Path(f"/proc/{server_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _server_pid(self) -> int | None:
        try:
            return int((self.datadir / "mysqld.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def restart(self, *, kill: bool = True) -> None:
        """Stop (at once, by default) and start again on the same port."""
        self.stop(kill=kill)
        self.start()

    def destroy(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.datadir, ignore_errors=True)


def start_server(settings: tuple[str, ...] = TEST_SETTINGS) -> MariadbServer:
    """mariadb-install-db + start on a free port; the server is destroyed at interpreter exit."""
    binaries = find_binaries()
    if binaries is None:
        raise MariadbUnavailable("MariaDB server binaries (mariadbd, mariadb-install-db) not found; "
                                 "install Debian's 'mariadb-server'")
    server_bin, install_bin = binaries
    as_user = ["runuser", "-u", "mysql", "--"] if os.geteuid() == 0 else []
    datadir = Path(tempfile.mkdtemp(prefix="jobs-mariadb-"))
    if as_user:
        shutil.chown(datadir, "mysql", "mysql")
    subprocess.run([*as_user, install_bin, "--no-defaults", f"--datadir={datadir / 'data'}",
                    "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
                   check=True, capture_output=True, text=True)
    server = MariadbServer(server=server_bin, datadir=datadir, port=free_port(), as_user=as_user,
                           settings=settings)
    atexit.register(server.destroy)
    server.start()
    server.sql(f"CREATE USER '{USER}'@'127.0.0.1'; GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1' "
               f"WITH GRANT OPTION;")
    return server


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--available"]:
        sys.exit(0 if find_binaries() else 1)
    srv = start_server()
    print(srv.url)
    input("running; press Enter to stop\n")
