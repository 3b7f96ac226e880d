"""The adapter interface every benchmarked queue implements, and the subprocess-driver adapter.

The harness only ever talks to an ``Adapter``; it never imports a queue.
``DriverAdapter`` is the implementation all peers use: it runs
``bench/peers/driver.py`` with the queue's own interpreter, against a small
Django project directory (``bench_settings.py`` + ``bench_hooks.py``). Our own
queue can use the same class with the main project's interpreter and a
project directory of its own, or implement ``Adapter`` directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from abc import ABC, abstractmethod
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
    def drain(self, n: int, timeout: float) -> DrainResult:
        """Start ONE worker process, time until all ``n`` queued jobs are finished, stop it."""

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
    log_dir: Path | None = None
    _db_url: str | None = field(default=None, repr=False)
    _runs: int = field(default=0, repr=False)

    def _env(self) -> dict:
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONHOME", None)
        env["PYTHONPATH"] = os.pathsep.join(self.extra_pythonpath)
        env["PYTHONUNBUFFERED"] = "1"
        if self._db_url:
            env["BENCH_DB_URL"] = self._db_url
        return env

    def _log_path(self, step: str) -> str | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        kind = (self._db_url or "db").split(":", 1)[0]
        return str(self.log_dir / f"{self.name}-{self._runs:03d}-{kind}-{step}.log")

    def _call(self, *args: str, timeout: float | None = None) -> dict:
        cmd = [self.python, str(DRIVER), "--peer-dir", str(self.project_dir), "--settings", self.settings, *args]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=self._env(), timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AdapterError(f"{self.name}: {' '.join(args)} timed out after {timeout}s") from exc
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise AdapterError(f"{self.name}: {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(lines[-1])

    def prepare(self) -> dict:
        return self._call("versions", timeout=120)

    def setup(self, db_url: str) -> None:
        self._db_url = db_url
        self._runs += 1
        self._call("setup", timeout=300)

    def enqueue(self, n: int) -> None:
        self._call("enqueue", str(n), timeout=600)

    def drain(self, n: int, timeout: float) -> DrainResult:
        args = ["drain", str(n), "--timeout", str(timeout)]
        log = self._log_path("drain")
        if log:
            args += ["--log", log]
        out = self._call(*args, timeout=timeout + 60)
        return DrainResult(
            n=n,
            seconds=out["seconds"],
            first_done_s=out["first_done_s"],
            first_done_count=out["first_done_count"],
            failed=out["failed"],
            worker_tracebacks=out.get("worker_tracebacks"),
        )

    def latency(self, samples: int) -> list[float] | None:
        args = ["latency", str(samples)]
        log = self._log_path("latency")
        if log:
            args += ["--log", log]
        return self._call(*args, timeout=600)["samples"]
