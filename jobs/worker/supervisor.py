"""``process_tasks --processes N``: one parent, N worker processes, one unit for systemd.

Why a parent at all, when systemd can start N units: liveness. A worker's heartbeat
is a thread of the worker, so a job that holds the GIL (a C call that never lets go
of it: a pathological regex, a C extension's long loop) starves it, and another
worker takes the job back and runs it again beside the first. The parent is a
process of its own, with its own GIL, that runs no job: it beats for every child it
knows to be alive, so no job of a live child is ever taken for lost. It beats only
for a child that is running: a child stopped by SIGSTOP (or frozen under a debugger)
is left to the ordinary take-back, and the fencing discards what it writes later.

The parent also:
- restarts a child that dies, with a growing delay (a child that keeps crashing at
  start must not spin), and takes its jobs back at once, since it knows the child
  is gone, rather than after ``stale_after``;
- restarts at once a child that ended by itself (``--max-jobs``, ``--max-memory``:
  a recycle), while the other children go on working;
- passes the first SIGTERM/SIGINT on to every child (each stops as one worker does)
  and exits 0 once all have stopped; a second signal kills them all and exits at
  once;
- speaks to systemd (``READY=1`` once its children are started, the watchdog from
  its own loop, which keeps turning only while the parent is healthy).

A child learns that its parent is gone (killed with SIGKILL, say) from a pipe whose
other end only the parent holds: it then stops as after SIGTERM.

Children are plain ``process_tasks`` processes, started with the same interpreter,
settings and options, less ``--processes``. Only the first runs the scheduler and
the other worker loops (they are exactly-once anyway; one copy is enough).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connections

from ..backoff import first_line
from ..clock import REAL, Clock
from ..framework import task_backends
from ..models import Job, JobStatus, WorkerProcess
from ..sessions import guarded_sessions, hold_limit
from ..store import unless_locked
from .liveness import Liveness
from .systemd import Notifier

logger = logging.getLogger("jobs.worker")

# The environment a child is started with: its worker id's random part (so the parent
# knows the id, ``host:pid:tag``), and the fd of the pipe that ends when the parent does.
WORKER_TAG = "JOBS_WORKER_TAG"
PARENT_FD = "JOBS_PARENT_FD"
RESTART_DELAY_MIN = 0.5  # seconds, after a child died; doubling up to the max
RESTART_DELAY_MAX = 30.0
HEALTHY_AFTER = 60.0  # a child that lived this long resets the delay
TURN = 0.2  # the longest the parent's loop sleeps without looking at its children


def worker_id_for(pid: int, tag: str) -> str:
    """A child's worker id, as ``jobs.worker.loop.make_worker_id`` makes it, known to both sides."""
    return f"{socket.gethostname()}:{pid}:{tag}"


def process_running(pid: int) -> bool:
    """False when ``pid`` is stopped (SIGSTOP, a debugger) or gone; True where /proc cannot tell."""
    if not os.path.exists("/proc/self/stat"):
        return True  # no /proc on this system: a child that has not exited is taken to run
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"T", b"t", b"Z", b"X")


@dataclass
class Child:
    slot: int  # 0..N-1; slot 0 runs the scheduler
    proc: subprocess.Popen | None = None
    tag: str = ""
    started: float = 0.0
    restart_at: float | None = None  # when a stopped child is started again (None: not to be)
    delay: float = RESTART_DELAY_MIN
    done: bool = False  # ended for good (stopping, or a --burst/--duration child's exit 0)
    exits: list[int] = field(default_factory=list)

    @property
    def worker_id(self) -> str | None:
        return worker_id_for(self.proc.pid, self.tag) if self.proc is not None else None


class Supervisor:
    def __init__(self, *, processes: int, child_args: Callable[[int], Sequence[str]], backend_alias: str = "default",
                 final_exit: bool = False, notifier: Notifier | None = None, clock: Clock = REAL,
                 spawn: Callable[..., subprocess.Popen] = subprocess.Popen):
        self.children = [Child(slot=i) for i in range(processes)]
        self.child_args = child_args  # slot -> the child's command line
        self.backend = task_backends[backend_alias]
        self.options = self.backend.jobs_options
        self.final_exit = final_exit  # --burst/--duration: a child's exit 0 means it is done
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.spawn = spawn
        self.id = worker_id_for(os.getpid(), uuid.uuid4().hex[:8])
        # Taking back a dead child's jobs is the ordinary take-back, run here at once.
        self.liveness = Liveness(worker_id=self.id, backend=self.backend, held=list, register=lambda: None,
                                 clock=clock)
        self.stopping = threading.Event()
        self.signals = 0
        self._parent_end, self._child_end = os.pipe()  # the children hold the read end; EOF = parent gone
        os.set_inheritable(self._child_end, False)
        self._next_beat = 0.0

    # -- signals (from the handlers: flags only) -------------------------------------------

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        if self.signals > 1:
            self._kill_all()
            os._exit(128 + signum)
        self.stopping.set()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                try:
                    child.proc.send_signal(signal.SIGTERM)
                except OSError:
                    pass

    def _kill_all(self) -> None:
        for child in self.children:
            if child.proc is not None:
                try:
                    child.proc.kill()
                except OSError:
                    pass

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        with guarded_sessions(hold_limit(self.options.stale_after)):
            try:
                return self._run()
            finally:
                self._kill_all()  # only children already stopped, unless we are leaving on an error
                os.close(self._parent_end)
                os.close(self._child_end)
                connections.close_all()

    def _run(self) -> int:
        for child in self.children:
            self._start(child)
        logger.info("supervisor started worker=%s processes=%d", self.id, len(self.children))
        self.notifier.ready(f"supervisor {self.id}: {len(self.children)} worker processes")
        while not all(child.done for child in self.children):
            now = self.clock.monotonic()
            self.notifier.ping(now)
            self._reap(now)
            for child in self.children:
                if child.restart_at is not None and self.stopping.is_set():
                    child.done, child.restart_at = True, None  # stopping: a dead child stays dead
                elif child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
            if now >= self._next_beat:
                self._beat()
            time.sleep(TURN)
        self.notifier.stopping(f"supervisor {self.id}: stopped")
        logger.info("supervisor stopped worker=%s", self.id)
        self.notifier.close()
        return 0

    def _start(self, child: Child) -> None:
        child.tag = uuid.uuid4().hex[:8]
        child.restart_at = None
        env = dict(os.environ, **{WORKER_TAG: child.tag, PARENT_FD: str(self._parent_end)})
        child.proc = self.spawn(list(self.child_args(child.slot)), env=env, pass_fds=(self._parent_end,))
        child.started = self.clock.monotonic()
        logger.info("worker process started slot=%d pid=%d worker=%s", child.slot, child.proc.pid, child.worker_id)

    def _reap(self, now: float) -> None:
        for child in self.children:
            if child.proc is None or child.done or child.restart_at is not None:
                continue
            code = child.proc.poll()
            if code is None:
                continue
            child.exits.append(code)
            lived = now - child.started
            gone = child.worker_id
            if code != 0:
                self._take_back(gone)
            if self.stopping.is_set() or (code == 0 and self.final_exit):
                child.done = True
                logger.info("worker process ended slot=%d pid=%d exit=%d", child.slot, child.proc.pid, code)
                continue
            if code == 0:  # it ended by itself: --max-jobs or --max-memory, a recycle
                delay = 0.0
                logger.info("worker process recycled slot=%d pid=%d", child.slot, child.proc.pid)
            else:
                if lived >= HEALTHY_AFTER:
                    child.delay = RESTART_DELAY_MIN
                delay, child.delay = child.delay, min(child.delay * 2, RESTART_DELAY_MAX)
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
                logger.error("worker process died slot=%d pid=%d %s after %.1fs; restarting in %.1fs",
                             child.slot, child.proc.pid, how, lived, delay)
            child.restart_at = now + delay

    def _take_back(self, worker_id: str | None) -> None:
        """A child that died holds jobs nobody runs: take them back now, not after ``stale_after``.
        Their heartbeat is set back past the cutoff, then the one take-back path runs."""
        if worker_id is None:
            return
        try:
            now = self.clock.now()
            alias = self.liveness.store.alias
            past = now - timedelta(seconds=self.options.stale_after * 2)
            Job.objects.using(alias).filter(worker_id=worker_id, status=JobStatus.RUNNING,
                                             backend=self.backend.alias).update(heartbeat_at=past)
            WorkerProcess.objects.using(alias).filter(pk=worker_id).delete()
            self.liveness.take_back_stale(now)
        except Exception as exc:  # noqa: BLE001 - the children's own sweeps take them back later
            logger.warning("supervisor could not take back a dead worker's jobs worker=%s error=%s: %s",
                           worker_id, type(exc).__name__, first_line(exc))
            self.liveness.store.close()

    def _beat(self) -> None:
        """Beat for every running child: its process row and every job it holds."""
        self._next_beat = self.clock.monotonic() + self.options.heartbeat_interval
        ids = [child.worker_id for child in self.children
               if child.proc is not None and child.proc.poll() is None and process_running(child.proc.pid)]
        if not ids:
            return
        try:
            now, alias = self.clock.now(), self.liveness.store.alias
            WorkerProcess.objects.using(alias).filter(pk__in=ids).update(heartbeat_at=now)
            held = Job.objects.using(alias).filter(worker_id__in=ids, status=JobStatus.RUNNING,
                                                   backend=self.backend.alias)
            unless_locked(held, alias).update(heartbeat_at=now)
        except Exception as exc:  # noqa: BLE001 - the children beat for themselves meanwhile
            logger.warning("supervisor heartbeat failed worker=%s error=%s: %s", self.id, type(exc).__name__,
                           first_line(exc))
            self.liveness.store.close()
            self._next_beat = self.clock.monotonic() + 1.0


def watch_parent(fd: int, on_gone: Callable[[], None]) -> threading.Thread:
    """In a child: call ``on_gone`` once the parent's end of the pipe is closed (the parent ended)."""

    def wait() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        on_gone()

    thread = threading.Thread(target=wait, name="jobs-parent-watch", daemon=True)
    thread.start()
    return thread


def child_command(prefix: Sequence[str], options: dict, *, slot: int) -> list[str]:
    """The command line of child ``slot``: ``prefix`` (interpreter and ``process_tasks``) and the
    parent's options, less ``--processes``; only slot 0 runs the scheduler."""
    args = [*prefix, "--concurrency", str(options["concurrency"]), "--backend", options["backend"],
            "--verbosity", str(options["verbosity"])]
    for queue in options["queues"] or []:
        args += ["--queue", queue]
    for flag in ("burst", "log_std"):
        if options[flag]:
            args.append("--" + flag.replace("_", "-"))
    if options["no_scheduler"] or slot != 0:
        args.append("--no-scheduler")
    for name in ("duration", "sleep", "max_jobs", "max_memory"):
        if options[name]:
            args += ["--" + name.replace("_", "-"), repr(options[name])]
    return args


def command_prefix() -> list[str]:
    """How this process was started, up to and including ``process_tasks``, so that a child runs
    with the same interpreter, options and entry point (``manage.py``, ``django-admin``, ``-m``)."""
    argv = list(getattr(sys, "orig_argv", []))
    if "process_tasks" in argv:
        return [sys.executable, *argv[1:argv.index("process_tasks") + 1]]
    return [sys.executable, "-m", "django", "process_tasks"]
