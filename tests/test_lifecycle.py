"""The worker's lifecycle: recycling (--max-jobs, --max-memory), --reload, systemd's notify and watchdog.

Real worker processes, real signals, a real datagram socket standing in for systemd's.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone

from jobs.models import Job, JobStatus, WorkerProcess
from jobs.signals import job_failed
from jobs.worker.systemd import Notifier, socket_address, watchdog_seconds
from tests import tasks
from tests.conftest import REPO, subprocess_env, wait_for


def statuses() -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Job.objects.values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def assert_left_clean() -> None:
    """Nothing RUNNING, every unfinished job READY as if never claimed, no worker row left."""
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()
    assert not Job.objects.filter(status=JobStatus.READY).exclude(attempts=0).exists()
    assert not WorkerProcess.objects.exists(), list(WorkerProcess.objects.values())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_beat_after_the_worker_left_does_not_bring_its_process_row_back(run_worker):
    """Liveness writes a process row anew when it was cleaned away, but not once the worker is
    stopping: a beat between the shutdown's unregister and the liveness thread's end did, leaving the
    row of a worker that had exited (counted alive by jobs_status and health for stale_after)."""
    worker = run_worker()  # registered, ran nothing, left
    assert not WorkerProcess.objects.exists()
    worker.liveness.beat_and_sweep(timezone.now())  # what its liveness thread could still do then
    assert not WorkerProcess.objects.exists()


# -- --max-jobs --------------------------------------------------------------------------------


def test_max_jobs_exits_0_after_n_jobs_letting_the_running_ones_finish(workers, record_dir):
    path = str(record_dir / "runs")
    for i in range(8):
        tasks.slow_then_record.enqueue(path, f"job-{i}", 0.2)  # slow enough that none is prefetched
    proc = workers.start("--max-jobs", "3", "--concurrency", "2")
    assert proc.wait(60) == 0, workers.output(proc)
    done = statuses().get(JobStatus.SUCCESSFUL, 0)
    # The third outcome stops the claiming; the one job still running beside it finishes.
    assert 3 <= done <= 4, statuses()
    assert statuses()[JobStatus.READY] == 8 - done
    assert_left_clean()
    assert "reason=max-jobs 3 reached" in workers.output(proc)


def test_max_jobs_hands_back_what_it_prefetched_and_loses_nothing(workers):
    total = 300
    for i in range(total):
        tasks.add.enqueue(i, i)  # fast: claimed many at a time, into the prefetch buffer
    proc = workers.start("--max-jobs", "5")
    assert proc.wait(60) == 0, workers.output(proc)
    counts = statuses()
    assert counts.get(JobStatus.SUCCESSFUL, 0) >= 5 and counts.get(JobStatus.READY, 0) > 0, counts
    assert sum(counts.values()) == total and set(counts) == {JobStatus.SUCCESSFUL, JobStatus.READY}
    assert_left_clean()


# -- --max-memory ------------------------------------------------------------------------------


def test_max_memory_stops_claiming_once_passed_lets_the_running_job_finish_and_exits_0(workers):
    # What a worker of this set-up holds after one job, measured by a worker itself.
    probe = tasks.worker_rss.enqueue()
    first = workers.start("--burst")
    assert first.wait(60) == 0, workers.output(first)
    baseline_mib = Job.objects.get(pk=int(probe.id)).return_value / 2**20
    Job.objects.all().delete()
    limit = int(baseline_mib) + 60
    leak = tasks.leaks_memory.using(priority=10).enqueue(120, 1.0)  # passes the limit, then runs on for 1 s
    later = [tasks.add.enqueue(i, i) for i in range(3)]
    proc = workers.start("--max-memory", str(limit))
    assert proc.wait(60) == 0, workers.output(proc)  # by itself: nobody signalled it
    assert Job.objects.get(pk=int(leak.id)).status == JobStatus.SUCCESSFUL
    assert [Job.objects.get(pk=int(r.id)).status for r in later] == [JobStatus.READY] * 3
    assert_left_clean()
    out = workers.output(proc)
    assert re.search(rf"reason=max-memory {limit} MiB passed \(resident \d+ MiB\)", out), out


@pytest.mark.parametrize("args", [("--max-jobs", "-1"), ("--max-jobs", "2.5"), ("--max-memory", "lots"),
                                  ("--max-memory", str(2**20 + 1))])
def test_bad_limits_are_errors_naming_the_option(workers, args):
    proc = workers.start(*args, "--burst")
    assert proc.wait(60) == 2
    out = workers.output(proc)
    assert f"argument {args[0]}:" in out and "Traceback" not in out, out


# -- --reload ----------------------------------------------------------------------------------


def child_pids(output: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"reload: started the worker \(pid (\d+)\)", output)]


RELOAD_TASKS = '''"""Tasks of one --reload test, in a folder of its own: touching this restarts that test's worker only."""

import time

from jobs.framework import task


def _record(path, line):
    with open(path, "a") as out:
        out.write(line + "\\n")


@task
def record(path, token):
    _record(path, token)


@task
def slow_then_record(path, token, seconds):
    _record(path, f"start {token}")
    time.sleep(seconds)
    _record(path, f"end {token}")
'''


class ReloadProject:
    """This run's settings and a task module, written into ``folder``: the files a ``--reload`` test
    touches. The checkout's own files are never touched, so the --reload workers of another suite
    running from the same checkout at the same time (make test's lanes) do not restart."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.settings = folder / "reload_settings.py"
        self.tasks = folder / "reload_tasks.py"
        base = os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings")
        self.settings.write_text(f"from {base} import *  # noqa: F403\n\n"
                                 "JOBS_TASK_MODULES = [*JOBS_TASK_MODULES, \"reload_tasks\"]  # noqa: F405\n")
        self.tasks.write_text(RELOAD_TASKS)

    def env(self) -> dict[str, str]:
        return subprocess_env(DJANGO_SETTINGS_MODULE="reload_settings",
                              PYTHONPATH=os.pathsep.join([str(self.folder), str(REPO)]))


@pytest.fixture
def reload_project(tmp_path, monkeypatch, settings) -> ReloadProject:
    folder = tmp_path.resolve() / "project"
    folder.mkdir()
    project = ReloadProject(folder)
    monkeypatch.syspath_prepend(str(folder))  # this process enqueues reload_tasks' tasks too
    monkeypatch.delitem(sys.modules, "reload_tasks", raising=False)
    settings.JOBS_TASK_MODULES = [*settings.JOBS_TASK_MODULES, "reload_tasks"]
    yield project
    sys.modules.pop("reload_tasks", None)


def touch_until_restarted(module: Path, workers, proc) -> None:
    """Move ``module``'s modification time a second on, wait for a second worker to start, move it back."""
    before = module.stat()
    try:
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        wait_for(lambda: workers.output(proc).count("worker started") == 2, message="a new worker")
    finally:
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_reload_restarts_the_worker_when_a_module_it_imported_changes_and_stops_cleanly(workers, record_dir,
                                                                                       reload_project):
    import reload_tasks

    runs = record_dir / "runs"
    proc = workers.start("--reload", "-v", "2", env=reload_project.env())
    workers.wait_for_output(proc, "worker started")
    reload_tasks.record.enqueue(str(runs), "before")  # the worker imports reload_tasks to run it
    wait_for(lambda: runs.exists() and "before" in runs.read_text(), message="the first job")
    wait_for(lambda: re.search(r"now also watching .*/reload_tasks\.py", workers.output(proc)),
             message="the parent to watch the module the worker imported")
    (first_child,) = child_pids(workers.output(proc))
    touch_until_restarted(reload_project.tasks, workers, proc)
    out = workers.output(proc)
    assert f"{reload_project.tasks} changed; restarting the worker (pid {first_child})" in out
    assert "reason=SIGTERM" in out  # stopped as systemctl stop would: gracefully
    wait_for(lambda: not alive(first_child), message="the first worker to be gone")
    _, second_child = child_pids(out)
    # Ctrl-C while a job runs: the job finishes, the worker leaves, the parent exits 0.
    result = reload_tasks.slow_then_record.enqueue(str(runs), "during", 1.0)
    wait_for(lambda: "start during" in runs.read_text(), message="the slow job to start")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0, workers.output(proc)
    assert "end during" in runs.read_text()
    assert Job.objects.get(pk=int(result.id)).status == JobStatus.SUCCESSFUL
    assert not alive(second_child)
    assert workers.output(proc).count("worker stopped") == 2
    assert_left_clean()


def test_a_worker_that_dies_under_reload_is_started_again_once_a_file_changes(workers, reload_project):
    proc = workers.start("--reload", "-v", "2", env=reload_project.env())
    workers.wait_for_output(proc, "worker started")
    (child,) = child_pids(workers.output(proc))
    os.kill(child, signal.SIGKILL)  # as a crash would end it
    workers.wait_for_output(proc, "reload: the worker exited with status 137; it restarts when a file changes")
    assert proc.poll() is None  # the parent waits for the fix
    # reload_settings.py: imported by the parent itself, so watched from the start
    touch_until_restarted(reload_project.settings, workers, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, workers.output(proc)


def test_reload_is_for_the_command_line(transactional_db):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--reload works from the command line only"):
        call_command("process_tasks", "--reload")


def test_a_worker_whose_reloading_parent_dies_stops_by_itself(workers):
    proc = workers.start("--reload")
    workers.wait_for_output(proc, "worker started")
    (child,) = child_pids(workers.output(proc))
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: not alive(child), timeout=30, message="the orphaned worker to stop")
    assert "reason=the reloading parent is gone" in workers.output(proc)
    assert_left_clean()


# -- systemd: READY, WATCHDOG, STOPPING ------------------------------------------------------------


class NotifySocket:
    """A datagram socket where systemd's would be: an abstract name, as systemd itself uses."""

    def __init__(self):
        self.name = f"@jobs-test-{uuid.uuid4().hex}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(socket_address(self.name))
        self.messages: list[tuple[float, str]] = []

    def receive(self, timeout: float) -> str | None:
        self.socket.settimeout(timeout)
        try:
            message = self.socket.recv(4096).decode()
        except TimeoutError:
            return None
        self.messages.append((time.monotonic(), message))
        return message

    def wait_for(self, prefix: str, timeout: float = 30.0) -> float:
        """Receive until a message starting with ``prefix`` arrives; when it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.receive(max(deadline - time.monotonic(), 0.01))
            if message is not None and message.startswith(prefix):
                return self.messages[-1][0]
        raise AssertionError(f"no {prefix!r} within {timeout}s; got {[m for _, m in self.messages][-5:]}")

    def close(self):
        self.socket.close()


@pytest.fixture
def notify_socket():
    sock = NotifySocket()
    yield sock
    sock.close()


def test_under_systemd_notify_it_says_ready_pings_the_watchdog_and_says_stopping(workers, notify_socket):
    watchdog = 2.0  # WatchdogSec=2: a ping at least every second, here every half second
    proc = workers.start(env=subprocess_env(NOTIFY_SOCKET=notify_socket.name, WATCHDOG_USEC=str(int(watchdog * 1e6))))
    notify_socket.wait_for("READY=1")
    assert "worker started" in workers.output(proc)  # ready once registered and listening
    ready = notify_socket.messages[-1][1]
    assert re.match(r"READY=1\nSTATUS=worker \S+: queues \*, concurrency 1$", ready), ready
    pings = [notify_socket.wait_for("WATCHDOG=1") for _ in range(4)]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < watchdog / 2, gaps
    # Frozen (as a hung main loop would be): no ping for longer than the watchdog's time.
    proc.send_signal(signal.SIGSTOP)
    try:
        notify_socket.receive(0.2)  # one sent just before the stop may still be on its way
        assert notify_socket.receive(watchdog * 1.5) is None, "a frozen worker still pinged"
    finally:
        proc.send_signal(signal.SIGCONT)
    notify_socket.wait_for("WATCHDOG=1", timeout=10)
    proc.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1")
    assert proc.wait(30) == 0


def test_the_watchdog_of_another_process_is_not_pinged(workers, notify_socket):
    env = subprocess_env(NOTIFY_SOCKET=notify_socket.name, WATCHDOG_USEC="400000", WATCHDOG_PID=str(os.getpid()))
    proc = workers.start(env=env)
    notify_socket.wait_for("READY=1")
    assert notify_socket.receive(1.0) is None  # four pings would have come by now were it ours
    proc.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1")
    assert proc.wait(30) == 0


def test_a_main_loop_that_hangs_stops_pinging_while_its_other_threads_run(run_worker, notify_socket):
    """The ping comes from the main loop: a slow ``job_failed`` receiver (run there) holds the pings
    back for as long as it blocks, although the job threads and the heartbeat go on."""
    received = threading.Thread(target=notify_socket.wait_for, args=("STOPPING=1",))
    received.start()

    def blocks(sender, **kwargs):
        time.sleep(1.5)

    job_failed.connect(blocks, weak=False)
    try:
        failing = tasks.always_fails.enqueue()
        Job.objects.filter(pk=int(failing.id)).update(attempts=2)  # its last attempt
        # Not a burst: it goes on turning (and pinging every 0.1 s) until its --duration.
        run_worker(burst=False, duration=3.0, run_loops=False,
                   notifier=Notifier(socket_address(notify_socket.name), watchdog=0.4))
    finally:
        job_failed.disconnect(blocks)
        received.join(10)
        connections.close_all()
    kinds = [message.split("\n")[0] for _, message in notify_socket.messages]
    assert kinds[0] == "READY=1" and kinds[-1] == "STOPPING=1" and "WATCHDOG=1" in kinds, kinds
    pings = [at for at, message in notify_socket.messages if message == "WATCHDOG=1"]
    gaps = sorted(b - a for a, b in zip(pings, pings[1:]))
    assert gaps[-1] >= 1.4, gaps  # nothing while it blocked
    assert len(gaps) >= 5 and gaps[len(gaps) // 2] < 0.2, gaps  # every 0.1 s otherwise


@pytest.mark.parametrize("text,address", [
    ("/run/systemd/notify", "/run/systemd/notify"),
    ("@abstract-name", b"\0abstract-name"),
    ("relative/path", None),
    ("vsock:2:1234", None),
    ("@", None),
])
def test_notify_socket_addresses(text, address):
    assert socket_address(text) == address


@pytest.mark.parametrize("environ,seconds", [
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
    ({}, None),
])
def test_watchdog_variables_are_read_as_sd_watchdog_enabled_reads_them(environ, seconds):
    assert watchdog_seconds(environ) == seconds


def test_without_notify_socket_nothing_is_sent_and_the_variables_are_removed_for_jobs():
    silent = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    silent.ready("x")
    silent.ping(0.0)
    assert silent.address is None and silent.next_ping() is None
    environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = Notifier.from_environ(environ, unset=True)
    assert notifier.address == b"\0x" and notifier.ping_every == 0.25
    assert environ == {"PATH": "/bin"}  # a job's subprocess does not speak for the worker


def test_a_notification_that_cannot_be_sent_is_logged_once_and_the_worker_goes_on(run_worker, caplog):
    notifier = Notifier(f"/tmp/jobs-test-{uuid.uuid4().hex}", watchdog=0.04)  # nobody listens there
    result = tasks.add.enqueue(1, 1)
    run_worker(notifier=notifier)
    assert Job.objects.get(pk=int(result.id)).status == JobStatus.SUCCESSFUL
    assert caplog.text.count("systemd: could not notify") == 1, caplog.text


def test_limits_count_attempts_and_read_memory_at_most_four_times_a_second():
    from jobs.worker.limits import Limits

    reads = []

    def rss():
        reads.append(1)
        return 100 * 2**20

    limits = Limits(max_jobs=3, max_memory=200, rss=rss)
    assert limits.reached(jobs_done=2, now=0.0) is None
    assert [limits.reached(jobs_done=2, now=t / 100) for t in range(1, 25)] == [None] * 24
    assert len(reads) == 1  # once in the first quarter of a second
    assert limits.reached(jobs_done=3, now=1.0) == "max-jobs 3 reached (3 finished)"
    small = Limits(max_memory=50, rss=rss)
    assert small.reached(jobs_done=0, now=0.0) == "max-memory 50 MiB passed (resident 100 MiB)"
