"""The adapter interface every benchmarked queue implements, and the subprocess-driver adapter.

The harness only ever talks to an ``Adapter``; it never imports a queue.
``DriverAdapter`` is the implementation all peers use: it runs
``bench/peers/driver.py`` with the queue's own interpreter, against a small
Django project directory (``bench_settings.py`` + ``bench_hooks.py``). Our own
queue can use the same class with the main project's interpreter and a
project directory of its own, or implement ``Adapter`` directly.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DRIVER = Path(__file__).resolve().parents[1] / "peers" / "driver.py"


class AdapterError(RuntimeError):
    """A benchmark step failed; the message carries the tail of the step's output."""


@dataclass
class DrainResult:
    """One measured drain: ``seconds`` from worker spawn until all ``n`` jobs were finished."""

    n: int
    seconds: float
    first_done_s: float | None = None  # spawn -> first finished job seen (start-up cost)
    first_done_count: int | None = None
    failed: int = 0
    worker_tracebacks: int | None = None  # errors the worker logged but survived
    extra: dict = field(default_factory=dict)  # what else the step reported (e.g. W4 duplicates)

    @property
    def jobs_per_s(self) -> float:
        return self.n / self.seconds

    @property
    def steady_jobs_per_s(self) -> float | None:
        """Rate after the first completion, i.e. without the worker's start-up."""
        if self.first_done_s is None or self.seconds <= self.first_done_s:
            return None
        return (self.n - self.first_done_count) / (self.seconds - self.first_done_s)


class Adapter(ABC):
    """What the harness needs from a queue. One instance per queue; one database at a time.

    The call order per measured run is ``setup(url)`` on an empty database,
    ``enqueue(n)``, then ``drain(n)``; ``prepare()`` runs once beforehand.
    """

    name: str
    databases: tuple[str, ...] = ("sqlite", "postgres")  # kinds it supports

    def prepare(self) -> dict:
        """Make the queue runnable (e.g. build its venv); return facts for the report."""
        return {}

    @abstractmethod
    def setup(self, db_url: str) -> None:
        """Point at ``db_url`` (an empty database) and create the queue's tables."""

    @abstractmethod
    def enqueue(self, n: int) -> None:
        """Queue ``n`` no-op jobs, ideally in one transaction: enqueueing is not what drain measures."""

    @abstractmethod
    def drain(self, n: int, timeout: float, *, variant: str | None = None, processes: int = 1) -> DrainResult:
        """Start ONE worker process (or ``processes``; ``variant``: other worker arguments),
        time until all ``n`` queued jobs are finished, stop it."""

    def enqueue_modes(self, each: int, tx: int, bulk: int) -> dict:
        """W1: time enqueueing ``each`` jobs one by one, ``tx`` in one transaction, ``bulk`` in bulk.

        Modes the queue lacks come back as None (their jobs are still queued, untimed).
        """
        self.enqueue(each + tx + bulk)
        return {"each": None, "tx": None, "bulk": None, "total": each + tx + bulk}

    def latency(self, samples: int) -> list[float] | None:
        """Enqueue-to-start seconds of single jobs given to an idle worker (optional)."""
        return None


@dataclass
class DriverAdapter(Adapter):
    """An adapter that runs ``driver.py`` with ``python`` against the project in ``project_dir``."""

    name: str
    project_dir: Path
    python: str = sys.executable
    databases: tuple[str, ...] = ("sqlite", "postgres")
    settings: str = "bench_settings"
    extra_pythonpath: tuple[str, ...] = ()  # e.g. the repo root, for our own queue
    extra_env: dict = field(default_factory=dict)  # set for every step
    db_url_env: tuple[str, ...] = ()  # further variables that get the database URL (DATABASE_URL)
    log_dir: Path | None = None
    # Called with (done, total) while a long step runs (the driver's @progress lines).
    on_progress: Callable[[int, int], None] | None = field(default=None, repr=False)
    _db_url: str | None = field(default=None, repr=False)
    _runs: int = field(default=0, repr=False)

    def _env(self) -> dict:
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONHOME", None)
        env.pop("DJANGO_SETTINGS_MODULE", None)
        env.update(self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join(self.extra_pythonpath)
        env["PYTHONUNBUFFERED"] = "1"
        if self._db_url:
            env["BENCH_DB_URL"] = self._db_url
            for name in self.db_url_env:
                env[name] = self._db_url
        return env

    def _log_path(self, step: str) -> str | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        kind = (self._db_url or "db").split(":", 1)[0]
        return str(self.log_dir / f"{self.name}-{self._runs:03d}-{kind}-{step}.log")

    def _call(self, *args: str, timeout: float | None = None) -> dict:
        """Run one driver step; its last stdout line is the JSON result.

        stderr is read as it comes: ``@progress`` lines go to ``on_progress``, the
        rest is kept for the error message. A step that overruns ``timeout`` gets
        SIGTERM (the driver then stops its workers), and SIGKILL if that is not enough.
        """
        cmd = [self.python, str(DRIVER), "--peer-dir", str(self.project_dir), "--settings", self.settings, *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, env=self._env())
        stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        stdout: list[str] = []

        def read_stderr():
            for line in proc.stderr:
                if line.startswith("@progress "):
                    if self.on_progress:
                        done, total = line.split()[1:3]
                        self.on_progress(int(done), int(total))
                else:
                    stderr_tail.append(line.rstrip("\n"))

        readers = [threading.Thread(target=read_stderr, daemon=True),
                   threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True)]
        for reader in readers:
            reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise AdapterError(f"{self.name}: {' '.join(args)} timed out after {timeout}s") from exc
        except BaseException:  # Ctrl-C: the driver got SIGINT too; give it time to stop its workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            for reader in readers:
                reader.join(timeout=5)
        lines = "".join(stdout).strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = "\n".join(([*lines[-5:]] + list(stderr_tail))[-15:])
            raise AdapterError(f"{self.name}: {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(lines[-1])

    def prepare(self) -> dict:
        return self._call("versions", timeout=120)

    def setup(self, db_url: str) -> None:
        self.use(db_url)
        self._call("setup", timeout=300)

    def use(self, db_url: str) -> None:
        """Point at a database that is already set up (W5 goes back and forth between two)."""
        self._db_url = db_url
        self._runs += 1

    def enqueue(self, n: int) -> None:
        self._call("enqueue", str(n), timeout=600)

    def enqueue_modes(self, each: int, tx: int, bulk: int) -> dict:
        return self._call("enqueue-modes", "--each", str(each), "--tx", str(tx), "--bulk", str(bulk), timeout=900)

    def _worker_args(self, step: str, n: int, timeout: float, variant: str | None, processes: int) -> list[str]:
        args = [step, str(n), "--timeout", str(timeout), "--processes", str(processes)]
        if variant:
            args += ["--variant", variant]
        log = self._log_path(step + (f"-{variant}" if variant else ""))
        if log:
            args += ["--log", log]
        return args

    def drain(self, n: int, timeout: float, *, variant: str | None = None, processes: int = 1) -> DrainResult:
        out = self._call(*self._worker_args("drain", n, timeout, variant, processes), timeout=timeout + 60)
        return _drain_result(n, out)

    def dupcheck(self, n: int, timeout: float, *, processes: int = 2, variant: str | None = None) -> DrainResult:
        """W4: ``n`` jobs that record their id, drained by ``processes`` workers at once (hooks permitting)."""
        out = self._call(*self._worker_args("dupcheck", n, timeout, variant, processes), timeout=timeout + 60)
        return _drain_result(n, out)

    def call(self, hook: str, *args, timeout: float = 900) -> dict:
        """A queue-specific extra of ``bench_hooks`` (e.g. our W5 steps); returns what it returned."""
        return self._call("call", hook, json.dumps(list(args)), timeout=timeout)["result"]

    def latency(self, samples: int) -> list[float] | None:
        args = ["latency", str(samples)]
        log = self._log_path("latency")
        if log:
            args += ["--log", log]
        return self._call(*args, timeout=600)["samples"]


def _drain_result(n: int, out: dict) -> DrainResult:
    known = {"seconds", "first_done_s", "first_done_count", "failed", "worker_tracebacks"}
    return DrainResult(
        n=n,
        seconds=out["seconds"],
        first_done_s=out["first_done_s"],
        first_done_count=out["first_done_count"],
        failed=out["failed"],
        worker_tracebacks=out.get("worker_tracebacks"),
        extra={k: v for k, v in out.items() if k not in known},
    )
