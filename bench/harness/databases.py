"""The databases a benchmark run can use: a temporary SQLite file, or a fresh PostgreSQL or MariaDB database.

Every run gets an empty database of its own, so no run sees another's rows,
indexes bloated by them, or a warm cache of them. PostgreSQL is one
throwaway server (``tests/pgserver.py``) at default durability (fsync and
synchronous_commit on, as in production) for the whole session, with a new
database created per run.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class SqliteDatabases:
    """A temporary SQLite file per run, deleted (with its journal) afterwards.

    Where the file lives matters more than anything else for SQLite: each
    commit in Django's default rollback-journal mode creates, syncs and
    deletes a journal file, which costs ~1.5 ms on an ext4 disk and next to
    nothing on tmpfs, and ``/tmp`` is a disk on some machines and tmpfs on
    others. So the default is a directory on the same disk as the checkout
    (``.bench/tmp``), as a deployed SQLite database would be, and the
    filesystem type is reported with the results.
    """

    kind = "sqlite"

    def __init__(self, parent: Path):
        parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="bench-sqlite-", dir=parent))
        self._counter = itertools.count(1)

    def describe(self) -> dict:
        return {"kind": self.kind, "directory": str(self._dir), "filesystem": _filesystem_type(self._dir)}

    @contextlib.contextmanager
    def fresh(self, label: str) -> Iterator[str]:
        path = self._dir / f"{next(self._counter):03d}-{label}.sqlite3"
        try:
            yield f"sqlite:///{path}"
        finally:
            for leftover in self._dir.glob(path.name + "*"):
                leftover.unlink()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _filesystem_type(path: Path) -> str | None:
    """The type (ext4, tmpfs, ...) of the filesystem holding ``path``, from /proc/mounts."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    path = path.resolve()
    best = None
    for fields in mounts:
        mount_point = Path(fields[1].replace("\\040", " "))
        if (path == mount_point or mount_point in path.parents) and (
            best is None or len(str(mount_point)) > len(str(best[0]))
        ):
            best = (mount_point, fields[2])
    return best[1] if best else None


class PostgresDatabases:
    """One throwaway PostgreSQL server at default durability; a new database per run."""

    kind = "postgres"

    def __init__(self):
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        from tests.pgserver import start_server

        # PostgreSQL's defaults: the helper's own settings turn fsync off, which is right for
        # tests and wrong for a benchmark. pg_stat_statements counts each system's statements
        # (W7's round trips per job); every system runs under it alike.
        self.server = start_server(settings=("shared_preload_libraries=pg_stat_statements",))
        self._counter = itertools.count(1)

    def _psql(self, sql: str) -> str:
        cmd = [
            str(self.server.bindir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.server.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def describe(self) -> dict:
        settings = self._psql(
            "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers')"
        )
        return {"kind": self.kind, "server_version": self._psql("SHOW server_version"), "settings": settings}

    @contextlib.contextmanager
    def fresh(self, label: str) -> Iterator[str]:
        name = f"bench_{next(self._counter):03d}_{''.join(c if c.isalnum() else '_' for c in label)}"[:63]
        self._psql(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgres://postgres@127.0.0.1:{self.server.port}/{name}"
        finally:
            self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self.server.destroy()


def mariadb_binaries() -> tuple[str, str] | None:
    """MariaDB's server and install binaries when they are on this machine (``tests/mariadbserver.py``)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.mariadbserver import find_binaries

    return find_binaries()


class MariadbDatabases:
    """One throwaway MariaDB server (``tests/mariadbserver.py``) at default durability; a new
    database per run, for ours and for the peers that support MySQL (django-tasks-db)."""

    kind = "mariadb"

    def __init__(self):
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        from tests.mariadbserver import TEST_SETTINGS, start_server

        # The test server's settings less the ones that trade durability for speed (a commit is
        # flushed to the log, as in production); the rest (utf8mb4, connections, buffer pool) stay.
        durability_off = ("--innodb-flush-log-at-trx-commit=", "--innodb-doublewrite=", "--sync-binlog=")
        self.server = start_server(settings=tuple(s for s in TEST_SETTINGS if not s.startswith(durability_off)))
        self._counter = itertools.count(1)

    def describe(self) -> dict:
        rows = self.server.sql(
            "SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@innodb_doublewrite, "
            "@@innodb_buffer_pool_size, @@tx_isolation").split("\t")
        version, flush, doublewrite, pool, isolation = (cell.strip() for cell in rows)
        return {"kind": self.kind, "server_version": version,
                "settings": f"innodb_flush_log_at_trx_commit={flush},innodb_doublewrite={doublewrite},"
                            f"innodb_buffer_pool_size={pool},server isolation={isolation}"}

    @contextlib.contextmanager
    def fresh(self, label: str) -> Iterator[str]:
        name = f"bench_{next(self._counter):03d}_{''.join(c if c.isalnum() else '_' for c in label)}"[:64]
        self.server.sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        try:
            yield f"mysql://jobs@127.0.0.1:{self.server.port}/{name}"
        finally:
            self.server.sql(f"DROP DATABASE IF EXISTS `{name}`")

    def close(self) -> None:
        self.server.destroy()
