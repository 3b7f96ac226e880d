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
  its own loop while no child is crash-looping, see CRASH_LOOP);
- enforces timeouts that a thread cannot: each child's slots tell it (on a pipe)
  when a job's timeout, or a cancel's grace, runs out. At that moment the child
  raises ``JobTimeout`` in the job, which stops Python code; a job still RUNNING
  ``HARD_GRACE`` seconds later is in a C call (a blocking socket, a regex, a call
  that holds the GIL), so the parent ends the child's process with SIGKILL. Only
  then is the attempt recorded (timed out, or cancelled) and its concurrency key
  freed, and so the retry can never run beside the code of the attempt before it.
  The child's other jobs are taken back as lost, and the child is replaced at once.

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

from django.db import connections

from ..backoff import first_line
from ..clock import REAL, Clock
from ..control import CANCEL_GRACE
from ..exceptions import JobCancelled, JobTimeout, WorkerLost
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
PARENT_ID = "JOBS_PARENT_ID"  # the parent's id, which a child's process row shows
REPORT_FD = "JOBS_REPORT_FD"  # the pipe on which a child's slots tell the parent their deadlines
# A job still running this long after its deadline (its timeout, or a cancel's grace) was not
# stopped by the interrupt its worker sent: the parent ends its process.
HARD_GRACE = 2.0
RESTART_DELAY_MIN = 0.5  # seconds, after a child died; doubling up to the max
RESTART_DELAY_MAX = 30.0
HEALTHY_AFTER = 60.0  # a child that lived this long resets the delay
# A child that died this many times in a row, each before HEALTHY_AFTER, is crash-looping: the
# parent stops answering systemd's watchdog, which restarts the whole unit (a fresh start, and
# the failure shows in ``systemctl status``).
CRASH_LOOP = 5
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
    quick_deaths: int = 0  # deaths in a row, each before HEALTHY_AFTER
    done: bool = False  # ended for good (stopping, or a --burst/--duration child's exit 0)
    exits: list[int] = field(default_factory=list)
    reports: int | None = None  # the read end of the child's report pipe
    partial: bytes = b""
    deadlines: dict[tuple[int, int], tuple[float, str]] = field(default_factory=dict)  # (job, attempt) -> when, kind
    ended_by_parent: bool = False
    told: int = 0  # the pid last sent the parent's SIGTERM

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
        self._pass_stop_on()

    def _pass_stop_on(self) -> None:
        """SIGTERM to every live child not yet told. Also called from the loop: a signal that came
        while a child was being started (between the spawn and ``child.proc``) missed that child."""
        for child in self.children:
            proc = child.proc
            if proc is not None and proc.poll() is None and child.told != proc.pid:
                child.told = proc.pid
                try:
                    proc.send_signal(signal.SIGTERM)
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
                for child in self.children:
                    self._close_reports(child)
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
            if self.healthy():
                self.notifier.ping(now)
            self._reap(now)
            if self.stopping.is_set():
                self._pass_stop_on()
            for child in self.children:
                if child.restart_at is not None and self.stopping.is_set():
                    child.done, child.restart_at = True, None  # stopping: a dead child stays dead
                elif child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
            if now >= self._next_beat:
                self._beat()
            for child in self.children:
                self._read_reports(child)
                self._enforce_deadlines(child, now)
            next_ping = self.notifier.next_ping()
            time.sleep(TURN if next_ping is None else min(TURN, max(next_ping - self.clock.monotonic(), 0.01)))
        self.notifier.stopping(f"supervisor {self.id}: stopped")
        logger.info("supervisor stopped worker=%s", self.id)
        self.notifier.close()
        return 0

    def healthy(self) -> bool:
        """No child is crash-looping (see CRASH_LOOP): the watchdog is answered only then."""
        return all(child.quick_deaths < CRASH_LOOP for child in self.children)

    def _start(self, child: Child) -> None:
        child.tag = uuid.uuid4().hex[:8]
        child.restart_at, child.ended_by_parent, child.partial = None, False, b""
        child.deadlines.clear()
        reports, report_end = os.pipe()
        os.set_blocking(reports, False)
        env = dict(os.environ, **{WORKER_TAG: child.tag, PARENT_FD: str(self._parent_end),
                                  REPORT_FD: str(report_end), PARENT_ID: self.id})
        try:
            child.proc = self.spawn(list(self.child_args(child.slot)), env=env,
                                    pass_fds=(self._parent_end, report_end))
        finally:
            os.close(report_end)
        child.reports = reports
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
            self._close_reports(child)
            if code != 0 and not child.ended_by_parent:
                self._take_back(gone, bystander=WorkerLost(
                    f"worker {gone} died (exit {code}); its --processes parent took this attempt back at once"))
            if self.stopping.is_set() or (code == 0 and self.final_exit):
                child.done = True
                logger.info("worker process ended slot=%d pid=%d exit=%d", child.slot, child.proc.pid, code)
                continue
            if code == 0:  # it ended by itself: --max-jobs or --max-memory, a recycle
                delay = 0.0
                logger.info("worker process recycled slot=%d pid=%d", child.slot, child.proc.pid)
            elif child.ended_by_parent:
                delay = 0.0  # logged when it was ended
            else:
                if lived >= HEALTHY_AFTER:
                    child.delay, child.quick_deaths = RESTART_DELAY_MIN, 0
                child.quick_deaths += 1
                delay, child.delay = child.delay, min(child.delay * 2, RESTART_DELAY_MAX)
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
                logger.error("worker process died slot=%d pid=%d %s after %.1fs; restarting in %.1fs",
                             child.slot, child.proc.pid, how, lived, delay)
            child.restart_at = now + delay

    # -- deadlines the children report ------------------------------------------------------

    def _read_reports(self, child: Child) -> None:
        """Take in what the child's slots said: ``deadline <job> <attempt> <monotonic> <kind>``
        when a timeout or a cancel's grace is armed, ``end <job> <attempt>`` when its code returned."""
        if child.reports is None:
            return
        try:
            data = os.read(child.reports, 65536)
            while data:
                child.partial += data
                data = os.read(child.reports, 65536)
        except BlockingIOError:
            pass
        except OSError:
            return
        *lines, child.partial = child.partial.split(b"\n")
        for line in lines:
            words = line.decode(errors="replace").split()
            try:
                key = (int(words[1]), int(words[2]))
                if words[0] == "deadline":
                    when = float(words[3])
                    if when == when:  # not NaN
                        child.deadlines[key] = (when, words[4])
                elif words[0] == "end":
                    child.deadlines.pop(key, None)
            except (IndexError, ValueError):
                logger.warning("supervisor: unreadable report from worker=%s: %r", child.worker_id, line[:200])

    def _close_reports(self, child: Child) -> None:
        if child.reports is not None:
            os.close(child.reports)
            child.reports = None
        child.deadlines.clear()

    def _enforce_deadlines(self, child: Child, now: float) -> None:
        overdue = [(key, kind) for key, (when, kind) in child.deadlines.items() if now >= when + HARD_GRACE]
        if not overdue or child.proc is None or child.proc.poll() is not None:
            return
        alias, worker_id = self.liveness.store.alias, child.worker_id
        for key, kind in overdue:
            try:  # the row says whether that attempt is still this child's: an "end" may have been lost
                still = Job.objects.using(alias).filter(pk=key[0], attempts=key[1], worker_id=worker_id,
                                                        status=JobStatus.RUNNING).exists()
            except Exception as exc:  # noqa: BLE001 - look again next turn
                logger.warning("supervisor could not read job %s error=%s: %s", key[0], type(exc).__name__,
                               first_line(exc))
                self.liveness.store.close()
                return
            if not still:
                child.deadlines.pop(key, None)
                continue
            self._end_child_for(child, key, kind)
            return

    def _end_child_for(self, child: Child, key: tuple[int, int], kind: str) -> None:
        """End the process whose job ``key`` would not stop, then record that attempt (timed out, or
        cancelled) and take back the process's other jobs: only now is its key freed."""
        job_id, attempt = key
        why = "its timeout" if kind == "timeout" else f"the {CANCEL_GRACE:g}s a cancelled job has to stop"
        logger.error("worker process ended slot=%d pid=%d: job id=%s attempt=%s still ran %gs after %s",
                     child.slot, child.proc.pid, job_id, attempt, HARD_GRACE, why)
        child.ended_by_parent = True
        child.proc.kill()
        child.proc.wait()
        if kind == "timeout":
            reason: Exception = JobTimeout(f"attempt {attempt} timed out and did not stop when interrupted; its "
                                           f"worker process was ended {HARD_GRACE:g}s later")
        else:
            reason = JobCancelled(f"attempt {attempt} was cancelled and had not returned {CANCEL_GRACE:g}s "
                                  "later; its worker process was ended")
        self._take_back(child.worker_id, because={key: reason}, bystander=WorkerLost(
            f"worker {child.worker_id} was ended by its --processes parent because job {job_id} "
            f"ran past {why}; this attempt was running beside it"))

    def _take_back(self, worker_id: str | None, because: dict | None = None, bystander: Exception | None = None):
        """A child that died holds jobs nobody runs: take them back now, not after ``stale_after``,
        each for the reason known here (a timeout, a cancel not heeded; ``bystander`` for the others),
        through the one take-back path. Their rows are not stale yet, so another worker's sweep cannot
        take them meanwhile as a lost worker's (``make chaos`` saw it when they were set back first)."""
        if worker_id is None:
            return
        try:
            now = self.clock.now()
            alias = self.liveness.store.alias
            reasons = dict(because or {})
            if bystander is not None:
                held = Job.objects.using(alias).filter(worker_id=worker_id, status=JobStatus.RUNNING,
                                                       backend=self.backend.alias)
                for key in held.values_list("pk", "attempts"):
                    reasons.setdefault(key, bystander)
            WorkerProcess.objects.using(alias).filter(pk=worker_id).delete()
            self.liveness.take_back_held(worker_id, now, because=reasons)
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


def reporter(fd: int) -> Callable[..., None]:
    """In a child: the slots' ``report`` (see ``SlotPool``), writing lines on the parent's pipe.
    Each line is one write under PIPE_BUF bytes, so lines from several threads never mix; a
    write that would block (a parent that stopped reading) is dropped: the parent checks the
    job's row before it acts, and a lost deadline only means the thread-based timeout."""
    os.set_blocking(fd, False)

    def report(event: str, job, when: float | None = None, kind: str = "") -> None:
        line = f"{event} {job.id} {job.attempts}" + (f" {when!r} {kind}" if event == "deadline" else "")
        try:
            os.write(fd, (line + "\n").encode())
        except OSError:
            pass

    return report


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
