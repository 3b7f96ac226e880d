"""A throwaway PgBouncer in transaction pooling, in front of a throwaway PostgreSQL server.

Like ``tests.pgserver``: a temporary directory, a free loopback port, removed at
interpreter exit. PgBouncer refuses to run as root, so as root it runs as the
``postgres`` OS user, who owns the directory. Every database name is routed to the
server (``* = ...``), so Django's test database is reached under its own name.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port


class PgBouncerUnavailable(RuntimeError):
    """Debian's ``pgbouncer`` is not installed."""


def find_pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.path.exists(p)), None)


@dataclass
class PgBouncer:
    proc: subprocess.Popen
    port: int
    directory: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_pgbouncer(server_port: int, *, pool_size: int = 20) -> PgBouncer:
    binary = find_pgbouncer()
    if binary is None:
        raise PgBouncerUnavailable("pgbouncer not found; install Debian's 'pgbouncer'")
    directory = Path(tempfile.mkdtemp(prefix="jobs-pgbouncer-"))
    port = free_port()
    (directory / "users.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(f"""\
[databases]
* = host=127.0.0.1 port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options
logfile = {directory}/pgbouncer.log
server_login_retry = 1
""")
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
        for name in ("users.txt", "pgbouncer.ini"):
            shutil.chown(directory / name, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    proc = subprocess.Popen([*as_user, binary, str(directory / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = directory / "pgbouncer.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"pgbouncer did not start: {tail}") from exc
            time.sleep(0.05)
    bouncer = PgBouncer(proc=proc, port=port, directory=directory)
    atexit.register(bouncer.stop)
    return bouncer


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--available"]:
        sys.exit(0 if find_pgbouncer() else 1)
