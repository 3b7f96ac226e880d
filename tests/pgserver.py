"""A throwaway PostgreSQL server for the test suite, the benchmark and the fault test.

The server lives in a temporary data directory on a free loopback port and is
removed when stopped. ``initdb`` and ``pg_ctl`` refuse to run as root, so when
we are root the server is run as the ``postgres`` OS user, who owns the data
directory. Nothing here relies on a server that was already running.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port

TEST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries were found on this machine."""


def find_bindir() -> Path | None:
    """Where initdb/pg_ctl live: pg_config first, then Debian's layout, then PATH."""
    candidates: list[str] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(os.path.realpath(initdb)).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


@dataclass
class PostgresServer:
    """One running throwaway server; ``url`` reaches its ``postgres`` database."""

    bindir: Path
    datadir: Path
    port: int
    as_user: list[str]
    settings: tuple[str, ...] = TEST_SETTINGS
    listen: tuple[str, ...] = ("127.0.0.1",)  # the first one is in ``url``

    @property
    def url(self) -> str:
        return f"postgres://postgres@{self.listen[0]}:{self.port}/postgres"

    def _run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *args], check=True, capture_output=True, text=True, **kwargs)

    def start(self) -> None:
        settings = self.settings
        options = " ".join(
            [f"-p {self.port}", f"-c listen_addresses={','.join(self.listen)}", f"-k {self.datadir}",
             "-c max_connections=200"]
            + [f"-c {setting}" for setting in settings]
        )
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir / "data"), "-w", "-t", "60",
                  "-l", str(self.datadir / "server.log"), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "data" / "postmaster.pid").exists():
            subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.datadir / "data"),
                            "-m", mode, "-w", "stop"], capture_output=True)

    def restart(self, mode: str = "immediate") -> None:
        """Stop (``immediate``: at once, dropping every client, as a crash would; ``fast``:
        roll back open transactions and disconnect) and start again on the same port."""
        self.stop(mode=mode)
        self.start()

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)


def start_server(settings: tuple[str, ...] = TEST_SETTINGS, *, listen: tuple[str, ...] = ("127.0.0.1",),
                 trust: tuple[str, ...] = ()) -> PostgresServer:
    """initdb + start on a free port; the server is destroyed at interpreter exit.

    ``listen``: the addresses to listen on; ``trust``: networks (CIDR) besides loopback
    whose clients may connect without a password.
    """
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's 'postgresql'")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    datadir = Path(tempfile.mkdtemp(prefix="jobs-pg-"))
    if as_user:
        shutil.chown(datadir, "postgres", "postgres")
    server = PostgresServer(bindir=bindir, datadir=datadir, port=free_port(), as_user=as_user, settings=settings,
                            listen=listen)
    server._run(str(bindir / "initdb"), "-D", str(datadir / "data"), "-U", "postgres", "-A", "trust",
                "--no-sync", "-E", "UTF8", "--locale=C")
    if trust:
        with open(datadir / "data" / "pg_hba.conf", "a") as hba:
            hba.writelines(f"host all all {network} trust\n" for network in trust)
    server.start()
    atexit.register(server.destroy)
    return server


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--available"]:
        sys.exit(0 if find_bindir() else 1)
    srv = start_server()
    print(srv.url)
    input("running; press Enter to stop\n")
