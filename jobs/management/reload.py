"""``process_tasks --reload`` (alias ``--dev``): restart the worker when its code changes. For development.

Django's ``runserver`` reloader will not do for a worker as it is. It runs the
command in a thread of the process it restarts, where no signal handler can be
installed, and exits that process at once on a change; on Ctrl-C its parent kills
the child after a quarter of a second. A worker would leave its running jobs
RUNNING, to be taken back as lost (an attempt spent) once ``stale_after`` passed.

So here the process started with ``--reload`` only watches and supervises. It runs
the real worker as a child process, the same command line with ``JOBS_RELOAD_PARENT``
in its environment (which makes that process a plain worker: no argument is
rewritten, so nothing is lost or misparsed), in the main thread of its own process,
with its own signal handlers. On a change to a Python file that either process
imported, it stops the worker as SIGTERM does (running jobs finish within
``shutdown_grace``, the rest go back READY, the worker unregisters) and starts a new
one. Ctrl-C or SIGTERM stops the worker the same way and then the parent exits with
the worker's status, 0; a second one makes the worker exit at once.

The worker imports task modules only when their first job runs, so it tells the
parent what it imported: every second it appends the files of its new modules to a
file the parent named (``JOBS_RELOAD_FILES``). Files are watched by Django's
``StatReloader`` (their modification times, every second). The worker ignores the
terminal's SIGINT, which reaches the whole process group: the parent forwards
Ctrl-C to it as SIGTERM, once, instead of twice. If the parent dies, the worker
notices within a second and stops.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from django.core.management.base import CommandError
from django.utils import autoreload

logger = logging.getLogger("jobs.reload")

PARENT = "JOBS_RELOAD_PARENT"  # in the worker's environment: the pid of the process watching for changes
FILES = "JOBS_RELOAD_FILES"  # where the worker appends the paths of the Python files it imported
TICK = 1.0  # seconds between looks at the files (StatReloader's own pace)


def started_by_reloader() -> bool:
    return bool(os.environ.get(PARENT))


# -- the parent: watch, start, stop, start again --------------------------------------------


def run_with_reloader() -> int:
    """Run ``manage.py process_tasks`` (this command line) as a child, restarting it on code changes."""
    if sys.argv[1:2] != ["process_tasks"]:
        raise CommandError("--reload works from the command line only (python manage.py process_tasks --reload)")
    with tempfile.TemporaryDirectory(prefix="jobs-reload-") as folder:
        imported = Path(folder) / "imported"
        imported.touch()
        return Reloader(autoreload.get_child_arguments(), imported).run()


class Reloader:
    def __init__(self, command: list[str], imported: Path):
        self.command = command
        self.imported = imported  # the file the worker appends its imported files to
        self.read_up_to = 0
        self.watcher = autoreload.StatReloader()
        self.mtimes: dict[Path, float] = {}
        self.child: subprocess.Popen | None = None
        self.stop_requested = False
        self.wake = threading.Event()

    def run(self) -> int:
        self._install_signal_handlers()
        self._changed()  # the first look: every file's time as it is now
        logger.debug("reload: watching %d files", len(self.mtimes))
        while True:
            self.child = self._start()
            outcome = self._watch_child()
            if outcome == "changed":
                status = self._stop_child()
                if self.stop_requested:
                    return status
                continue
            if outcome == "stop":
                return self._stop_child()
            status = exit_status(self.child)
            if status == 0:  # it ended by itself as asked (--burst, --duration, --max-jobs...)
                logger.info("reload: the worker exited with status 0; exiting")
                return 0
            logger.error("reload: the worker exited with status %d; it restarts when a file changes", status)
            while not self._changed():
                if self.stop_requested:
                    return status
                self._pause()

    def _watch_child(self) -> str:
        """Until the worker must stop ("stop"), its code changed ("changed") or it exited ("exited")."""
        while True:
            if self.stop_requested:
                return "stop"
            if self.child.poll() is not None:
                return "exited"
            changed = self._changed()
            if changed:
                logger.info("reload: %s changed; restarting the worker (pid %d)", changed, self.child.pid)
                return "changed"
            self._pause()

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, PARENT: str(os.getpid()), FILES: str(self.imported)}
        child = subprocess.Popen(self.command, env=env)
        logger.info("reload: started the worker (pid %d); it restarts when its code changes", child.pid)
        return child

    def _stop_child(self) -> int:
        """SIGTERM, then wait for the worker to finish its running jobs and exit; its status."""
        child = self.child
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        while child.poll() is None:
            self._pause(0.1)
        return exit_status(child)

    def _pause(self, seconds: float = TICK) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    def _changed(self) -> Path | None:
        """The first watched file whose time moved since the last look (new files only get a time)."""
        new = [path for path in self._reported() if path not in self.mtimes]
        self.watcher.extra_files.update(new)
        changed = None
        for path, mtime in self.watcher.snapshot_files():
            before = self.mtimes.get(path)
            self.mtimes[path] = mtime
            if before is not None and mtime != before and changed is None:
                changed = path
        if new:  # said once their times are known: a change from now on restarts the worker
            logger.debug("reload: now also watching %s", ", ".join(map(str, new)))
        return changed

    def _reported(self) -> list[Path]:
        """The files the worker said it imported since the last look (whole lines only)."""
        with open(self.imported, "rb") as lines:
            lines.seek(self.read_up_to)
            text = lines.read()
        complete = text[: text.rfind(b"\n") + 1]
        self.read_up_to += len(complete)
        return [Path(os.fsdecode(line)) for line in complete.splitlines() if line]

    def _install_signal_handlers(self) -> None:
        """First SIGINT/SIGTERM: stop the worker gracefully (the main loop sends it SIGTERM). Later
        ones go on to the worker, which then exits at once."""

        def handle(signum, frame):
            child = self.child
            if self.stop_requested and child is not None and child.returncode is None:
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            self.stop_requested = True
            self.wake.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def exit_status(child: subprocess.Popen) -> int:
    """A child's status as a shell would say it (killed by signal N: 128 + N)."""
    return 128 - child.returncode if child.returncode < 0 else child.returncode


# -- the child: a worker that reports what it imported and follows its parent ---------------------


def follow_parent(worker) -> None:
    """In a worker started by the reloader: leave SIGINT to the parent, report imported files."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C comes from the parent, as SIGTERM
    parent = int(os.environ[PARENT])
    threading.Thread(target=_report_and_watch, args=(worker, parent, Path(os.environ[FILES])),
                     name="jobs-reload", daemon=True).start()


def _report_and_watch(worker, parent: int, imported: Path) -> None:
    reported: set[Path] = set()
    while not worker.stopping.wait(TICK):
        if os.getppid() != parent:
            worker.request_stop(grace=worker.options.shutdown_grace, reason="the reloading parent is gone")
            return
        try:
            new = sorted(set(autoreload.iter_all_python_module_files()) - reported)
            if new:
                with open(imported, "ab") as lines:
                    lines.write(b"".join(os.fsencode(path) + b"\n" for path in new))
                reported.update(new)
        except Exception:  # noqa: BLE001 - reloading is a convenience; the worker goes on
            logger.exception("reload: could not report the files this worker imported")
