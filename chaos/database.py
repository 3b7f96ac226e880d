"""The database of the fault test: one throwaway server (PostgreSQL by default, MariaDB with
``--db mariadb``) listening on loopback (the producer and the checker) and on every host's
address, restarted by the fault injector; and the harness's own questions to it, asked
across restarts.

It runs at the server's default durability (PostgreSQL: fsync and synchronous_commit on;
MariaDB: the redo log flushed at every commit, the doublewrite buffer on), as in
production: the tests' own settings turn them off, and without them a crash loses the
last commits, which is no fault of the queue's. PostgreSQL has the TCP keepalives and
user timeout the README asks of a production server, so that the session of a client
that vanished inside a transaction (a partition past the client's tcp_user_timeout) is
ended, and its row locks released, within ~25 s rather than the kernel's two hours;
MariaDB has its keepalives, and the worker's own sessions end a transaction left idle
(``jobs.sessions``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.mariadbserver import MariadbServer, MariadbUnavailable
from tests.mariadbserver import start_server as start_mariadb
from tests.pgserver import PostgresServer, PostgresUnavailable, find_bindir, start_server

__all__ = ["KINDS", "Database", "MariadbDatabase", "MariadbUnavailable", "PostgresDatabase", "PostgresUnavailable",
           "pids_running_jobs", "retrying", "start_database", "status_counts", "stop_leftover"]

from .hosts import NETWORK, STATE, Host

SERVER_SETTINGS = ("tcp_keepalives_idle=10", "tcp_keepalives_interval=5", "tcp_keepalives_count=3",
                   "tcp_user_timeout=25000",  # keepalives wait while an answer is unacknowledged; this does not
                   "log_lock_waits=on")  # waits over 1 s are in .chaos/logs/postgresql.log
# MariaDB at its default durability (no --innodb-flush-log-at-trx-commit=0 as in the tests).
MARIADB_SETTINGS = ("--innodb-buffer-pool-size=256M", "--max-connections=500", "--character-set-server=utf8mb4",
                    "--collation-server=utf8mb4_unicode_ci", "--skip-name-resolve", "--skip-log-bin",
                    "--tcp-keepalive-time=10", "--tcp-keepalive-interval=5", "--tcp-keepalive-probes=3",
                    "--max-allowed-packet=64M")
LEFTOVER = STATE / "server.json"  # a killed run's server, stopped by the next run
KINDS = ("postgres", "mariadb")


def start_database(kind: str, hosts: list[Host]) -> Database:
    if kind not in KINDS:
        raise ValueError(f"CHAOS_DB must be one of {', '.join(KINDS)}, got {kind!r}")
    return (PostgresDatabase if kind == "postgres" else MariadbDatabase)(hosts)


class Database:
    """What the harness needs of its server, whichever it is: URLs from each host, restarts in
    two modes (``fast``: a clean shutdown; ``immediate``: a crash), its log, and whether a
    worker holds job rows locked."""

    kind = ""
    log_name = ""

    def __init__(self, hosts: list[Host]):
        self.hosts = hosts
        self.restarts: list[dict] = []
        self._lock = threading.Lock()  # a restart and the final destroy never overlap
        self._destroyed = False

    def restart(self, mode: str) -> dict | None:
        """Stop (``fast`` or ``immediate``) and start again; the timings go to the report.
        None when the run is already over (the server destroyed)."""
        with self._lock:
            if self._destroyed:
                return None
            began = time.time()
            self._stop(mode)
            down = time.time()
            self._start()
            restart = {"mode": mode, "began": began, "down": down, "up": time.time()}
            self.restarts.append(restart)
            return restart

    def destroy(self) -> None:
        with self._lock:
            self._destroyed = True
            self._destroy()
            LEFTOVER.unlink(missing_ok=True)

    def _remember(self, **state) -> None:
        STATE.mkdir(exist_ok=True)
        LEFTOVER.write_text(json.dumps({"kind": self.kind, **state}))

    def _listen(self) -> tuple[str, ...]:
        return ("127.0.0.1", *sorted({h.server_address for h in self.hosts} - {"127.0.0.1"}))

    def _address_of(self, label: str) -> str | None:
        """The address a worker's connections come from (None on loopback: every host shares it)."""
        host = next((h for h in self.hosts if label.split("-")[0] == h.name), None)
        return host.address if host is not None and host.namespace else None


class PostgresDatabase(Database):
    kind = "postgres"
    log_name = "postgresql.log"

    def __init__(self, hosts: list[Host]):
        super().__init__(hosts)
        self.server: PostgresServer = start_server(settings=SERVER_SETTINGS, listen=self._listen(),
                                                   trust=(str(NETWORK),))
        self._remember(bindir=str(self.server.bindir), datadir=str(self.server.datadir),
                       as_user=self.server.as_user)

    def url(self, address: str = "127.0.0.1", name: str = "chaos-harness") -> str:
        """The URL from ``address``; ``name`` is the connections' application_name."""
        return f"postgres://postgres@{address}:{self.server.port}/postgres?application_name={name}"

    @property
    def log(self) -> Path:
        return self.server.datadir / "server.log"

    def _stop(self, mode: str) -> None:
        self.server.stop(mode=mode)

    def _start(self) -> None:
        self.server.start()

    def _destroy(self) -> None:
        self.server.destroy()

    def holds_locks(self, label: str) -> bool:
        """Whether the worker named ``label`` is inside a transaction that wrote (so locked) job rows."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                           "AND backend_xid IS NOT NULL AND query LIKE %s)", [label, "%jobs_job%"])
            return cursor.fetchone()[0]


class MariadbDatabase(Database):
    """MariaDB (``tests/mariadbserver.py``, as the ``mysql`` user) on every host's address. A
    connection cannot carry a name there, so a worker is told apart by the address it comes
    from: its host's (on loopback, where every host shares one address, no worker is ever
    seen holding locks, and stops and partitions are not aimed at transactions)."""

    kind = "mariadb"
    log_name = "mariadb.log"
    DATABASE = "chaos"

    def __init__(self, hosts: list[Host]):
        super().__init__(hosts)
        self.server: MariadbServer = start_mariadb(
            settings=(*MARIADB_SETTINGS, f"--bind-address={','.join(self._listen())}"))
        self._remember(datadir=str(self.server.datadir))
        self.server.sql(f"CREATE DATABASE {self.DATABASE}; CREATE USER 'jobs'@'{NETWORK.network_address}/"
                        f"{NETWORK.netmask}'; GRANT ALL PRIVILEGES ON *.* TO 'jobs'@'{NETWORK.network_address}/"
                        f"{NETWORK.netmask}';")

    def url(self, address: str = "127.0.0.1", name: str = "chaos-harness") -> str:
        return f"mysql://jobs@{address}:{self.server.port}/{self.DATABASE}"

    @property
    def log(self) -> Path:
        return self.server.datadir / "server.log"

    def _stop(self, mode: str) -> None:
        self.server.stop(kill=mode == "immediate")

    def _start(self) -> None:
        self.server.start()

    def _destroy(self) -> None:
        self.server.destroy()

    def holds_locks(self, label: str) -> bool:
        address = self._address_of(label)
        if address is None:
            return False
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT EXISTS (SELECT 1 FROM information_schema.innodb_trx t JOIN "
                           "information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
                           "WHERE p.host LIKE %s AND (t.trx_rows_locked > 0 OR t.trx_rows_modified > 0))",
                           [f"{address}:%"])
            return bool(cursor.fetchone()[0])


def stop_leftover() -> str | None:
    """Stop and delete the server of a run that was killed before it could; returns its datadir."""
    try:
        state = json.loads(LEFTOVER.read_text())
    except (OSError, ValueError):
        return None
    if state.get("kind") == "mariadb":
        _kill_server_of(Path(state["datadir"]) / "data")
    else:
        bindir = Path(state["bindir"]) if Path(state["bindir"]).exists() else find_bindir()
        data = Path(state["datadir"]) / "data"
        if bindir and (data / "postmaster.pid").exists():
            subprocess.run([*state["as_user"], str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                            "stop"], capture_output=True)
    shutil.rmtree(state["datadir"], ignore_errors=True)
    LEFTOVER.unlink(missing_ok=True)
    return state["datadir"]


def _kill_server_of(data: Path) -> None:
    """SIGKILL a killed run's MariaDB: every process started on its data directory (runuser and
    mariadbd say it on their command line), whatever its PID or process group is now."""
    needle = f"--datadir={data}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            pass


def retrying(fn, attempts: int = 60, default=None):
    """Run a query of the harness's own across a database restart; after ``attempts``
    failures, raise (or return ``default`` when one is given)."""
    from django.db import DatabaseError, connection

    for attempt in range(attempts):
        try:
            return fn()
        except DatabaseError:
            connection.close()
            if attempt == attempts - 1:
                if default is not None:
                    return default
                raise
            time.sleep(0.5)


def pids_running_jobs() -> set[int]:
    """The PIDs of the workers holding a RUNNING job: a --processes child's is its parent's."""
    from jobs.models import Job, WorkerProcess

    running = set(Job.objects.running().values_list("worker_id", flat=True).distinct())
    parents = dict(WorkerProcess.objects.filter(pk__in=running).exclude(parent="").values_list("pk", "parent"))
    return {int(parents.get(w, w).split(":")[1]) for w in running}


def status_counts() -> dict[str, int]:
    from django.db.models import Count

    from jobs.models import Job

    return dict(Job.objects.order_by().values_list("status").annotate(n=Count("id")))
