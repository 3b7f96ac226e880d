"""Shared fixtures: real worker processes, an in-process worker, waiting on conditions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

REPO = Path(__file__).resolve().parent.parent


def wait_for(condition, timeout: float = 30.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def on_postgres():
    return connection.vendor == "postgresql"


@pytest.fixture
def on_mysql():
    return connection.vendor == "mysql"


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child process that must use this test run's database."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings")
    env["JOBS_TEST_DB_NAME"] = str(connection.settings_dict["NAME"])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class WorkerProcesses:
    """Start real ``manage.py`` processes (workers, schedulers); kill leftovers at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        """A worker without the scheduler, so tests see only the jobs they enqueue; one job at a
        time unless the test asks for more (the command's default is 4)."""
        if not any(arg == "--concurrency" or arg.startswith("--concurrency=") for arg in args):
            args = ("--concurrency", "1", *args)
        return self.manage("process_tasks", "--no-scheduler", *args, env=env)

    def manage(self, *command: str, env: dict | None = None) -> subprocess.Popen:
        """Any ``manage.py`` command as a real process, its output kept in a log file.

        The process writes to it in append mode (O_APPEND, inherited by the processes it starts):
        every write lands at the end whatever the file's shared offset. ``output`` reads it through a
        file of its own. Opened "w+" and read through the same file (seek(0), read), the offset the
        writers share moved back to 0 under them, and a line written then overwrote the log's start
        (seen as a "reload: started the worker" line gone when the machine was loaded).
        """
        log = open(self.tmp_path / f"process-{len(self.procs)}.log", "a")
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), *command],
            cwd=REPO, env=env or subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
        )
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    @staticmethod
    def output(proc: subprocess.Popen) -> str:
        with open(proc.log.name) as log:
            return log.read()

    def wait_for_output(self, proc, text: str, timeout: float = 30.0) -> str:
        return wait_for(lambda: text in self.output(proc) and self.output(proc), timeout,
                        message=f"{text!r} in worker output")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            proc.log.close()


@pytest.fixture
def workers(tmp_path, transactional_db):
    manager = WorkerProcesses(tmp_path)
    yield manager
    manager.stop_all()


@pytest.fixture
def run_worker(transactional_db):
    """Run an in-process worker in burst mode (every due job, then return)."""
    from jobs.worker import Worker

    def run(**kwargs) -> Worker:
        kwargs.setdefault("burst", True)
        worker = Worker(**kwargs)
        assert worker.run() == 0
        return worker

    return run


@pytest.fixture
def record_dir(tmp_path) -> Path:
    """A folder where test tasks write one file line per run (readable across processes)."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


# Which databases a marked test is for (a test without one of these runs on every database).
VENDOR_MARKERS = {"sqlite_only": {"sqlite"}, "postgres_only": {"postgresql"}, "mysql_only": {"mysql"}}


def marked_vendors(item) -> set[str] | None:
    """The vendors ``item`` is for (``sqlite_only`` and the like, or ``vendors(...)``); None: all."""
    wanted = None
    for name, vendors in VENDOR_MARKERS.items():
        if item.get_closest_marker(name) is not None:
            wanted = (wanted or set()) | vendors
    for marker in item.iter_markers("vendors"):
        wanted = (wanted or set()) | set(marker.args)
    return wanted


def pytest_collection_modifyitems(config, items):
    """Deselect (not skip) the tests that are about another database."""
    from django.conf import settings
    from django.db.utils import load_backend

    vendor = load_backend(settings.DATABASES["default"]["ENGINE"]).DatabaseWrapper.vendor
    kept, deselected = [], []
    import django

    pooled = getattr(settings, "VIA_PGBOUNCER", False)
    for item in items:
        wanted = marked_vendors(item)
        fits = (wanted is None or vendor in wanted) and (pooled or item.get_closest_marker("pgbouncer_only") is None)
        fits = fits and all(django.VERSION[:2] >= tuple(m.args) for m in item.iter_markers("needs_django"))
        (kept if fits else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


class FakeClock:
    """A worker's clock that moves only when told (``jobs.clock.Clock``'s two faces)."""

    def __init__(self):
        from django.utils import timezone

        self._now, self._mono = timezone.now(), 1000.0

    def now(self):
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self._now += timedelta(seconds=seconds)
        self._mono += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def liveness(worker=None, backend_alias: str = "default"):
    """The liveness loop of ``worker`` (or of a worker that holds nothing), not started."""
    from jobs.clock import REAL
    from jobs.framework import task_backends
    from jobs.worker.liveness import Liveness
    from jobs.worker.loop import make_worker_id

    return Liveness(worker_id=worker.id if worker else make_worker_id(), backend=task_backends[backend_alias],
                    held=worker.pool.held_ids if worker else list, register=lambda: None,
                    clock=worker.clock if worker else REAL)


def sweep(now=None, backend_alias: str = "default") -> int:
    """What any other worker's liveness loop does next: take back stale jobs; how many."""
    from django.utils import timezone

    return liveness(backend_alias=backend_alias).take_back_stale(now or timezone.now())


def record_success(job, value) -> bool:
    """Write ``job``'s success as its worker would (fenced); whether it was still that worker's."""
    from django.utils import timezone

    from jobs.sql import statements

    written, _ = statements(connection).finish_and_claim([(job, value)], worker_id=job.worker_id,
                                                         now=timezone.now(), limit=0, queues=None,
                                                         backend=job.backend)
    return job.id in written


@pytest.fixture(scope="session", autouse=True)
def _pooler_lets_go_of_the_test_database(request, django_db_blocker):
    """Through PgBouncer, server connections to the test database outlive the workers that used
    them; end them before pytest-django drops the database (it fails while any is open)."""
    from django.conf import settings

    if not getattr(settings, "VIA_PGBOUNCER", False):
        yield
        return
    request.getfixturevalue("django_db_setup")
    yield
    from django.db import connection as conn

    with django_db_blocker.unblock(), conn.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
