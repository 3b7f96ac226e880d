"""The database of the fault test: one throwaway PostgreSQL (``tests.pgserver``) listening
on loopback (the producer and the checker) and on every host's address, restarted by
the fault injector; and the harness's own questions to it, asked across restarts.

It runs at PostgreSQL's default durability (fsync and synchronous_commit on), as in
production: the tests' own settings turn them off, and with synchronous_commit off an
immediate shutdown loses the last commits, which is no fault of the queue's. It has the
TCP keepalives and user timeout the README asks of a production server, so that the session of a client
that vanished inside a transaction (a partition past the client's tcp_user_timeout) is
ended, and its row locks released, within ~25 s rather than the kernel's two hours.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

from tests.pgserver import PostgresServer, PostgresUnavailable, find_bindir, start_server

__all__ = ["Database", "PostgresUnavailable", "holds_locks", "pids_running_jobs", "retrying", "status_counts",
           "stop_leftover"]

from .hosts import NETWORK, STATE, Host

SERVER_SETTINGS = ("tcp_keepalives_idle=10", "tcp_keepalives_interval=5", "tcp_keepalives_count=3",
                   "tcp_user_timeout=25000",  # keepalives wait while an answer is unacknowledged; this does not
                   "log_lock_waits=on")  # waits over 1 s are in .chaos/logs/postgresql.log
LEFTOVER = STATE / "server.json"  # a killed run's server, stopped by the next run


class Database:
    def __init__(self, hosts: list[Host]):
        listen = ("127.0.0.1", *sorted({h.server_address for h in hosts} - {"127.0.0.1"}))
        self.server: PostgresServer = start_server(settings=SERVER_SETTINGS, listen=listen,
                                                   trust=(str(NETWORK),))
        STATE.mkdir(exist_ok=True)
        LEFTOVER.write_text(json.dumps({"bindir": str(self.server.bindir), "datadir": str(self.server.datadir),
                                        "as_user": self.server.as_user}))
        self.restarts: list[dict] = []
        self._lock = threading.Lock()  # a restart and the final destroy never overlap
        self._destroyed = False

    def url(self, address: str = "127.0.0.1", name: str = "chaos-harness") -> str:
        """The URL from ``address``; ``name`` is the connections' application_name."""
        return f"postgres://postgres@{address}:{self.server.port}/postgres?application_name={name}"

    @property
    def log(self) -> Path:
        return self.server.datadir / "server.log"

    def restart(self, mode: str) -> dict | None:
        """Stop (``fast`` or ``immediate``) and start again; the timings go to the report.
        None when the run is already over (the server destroyed)."""
        with self._lock:
            if self._destroyed:
                return None
            began = time.time()
            self.server.stop(mode=mode)
            down = time.time()
            self.server.start()
            restart = {"mode": mode, "began": began, "down": down, "up": time.time()}
            self.restarts.append(restart)
            return restart

    def is_running(self) -> bool:
        return (self.server.datadir / "data" / "postmaster.pid").exists()

    def destroy(self) -> None:
        with self._lock:
            self._destroyed = True
            self.server.destroy()
            LEFTOVER.unlink(missing_ok=True)


def stop_leftover() -> str | None:
    """Stop and delete the server of a run that was killed before it could; returns its datadir."""
    try:
        state = json.loads(LEFTOVER.read_text())
    except (OSError, ValueError):
        return None
    bindir = Path(state["bindir"]) if Path(state["bindir"]).exists() else find_bindir()
    data = Path(state["datadir"]) / "data"
    if bindir and (data / "postmaster.pid").exists():
        subprocess.run([*state["as_user"], str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
    shutil.rmtree(state["datadir"], ignore_errors=True)
    LEFTOVER.unlink(missing_ok=True)
    return state["datadir"]

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


def holds_locks(label: str) -> bool:
    """Whether the worker named ``label`` is inside a transaction that wrote (so locked) job rows."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                       "AND backend_xid IS NOT NULL AND query LIKE %s)", [label, "%jobs_job%"])
        return cursor.fetchone()[0]
