"""``process_tasks --processes N``: a parent and its worker processes, with real signals."""

import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from django.db import transaction

from jobs.models import Job, JobStatus, WorkerProcess
from tests import tasks
from tests.conftest import subprocess_env, wait_for


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(p) for p in listing.read().split()]


def runs(path: Path) -> Counter:
    """How many times each token's task started and ended, from its record file."""
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(tuple(line.split()[:2]) for line in lines)


def start_parent(workers, *args, env=None):
    parent = workers.start("--processes", "2", *args, env=env)
    workers.wait_for_output(parent, "supervisor started")
    wait_for(lambda: WorkerProcess.objects.count() == 2, message="both worker processes registered")
    return parent


def test_a_killed_child_is_replaced_and_no_job_is_lost_or_run_twice(workers, record_dir):
    path = record_dir / "runs"
    parent = start_parent(workers, "--concurrency", "2")
    total = 40
    with transaction.atomic():
        for i in range(total):
            tasks.slow_then_record.enqueue(str(path), f"job-{i}", 0.2)
    wait_for(lambda: sum(n for (kind, _), n in runs(path).items() if kind == "end") >= 5, message="some jobs done")
    victim = children_of(parent.pid)[0]
    os.kill(victim, signal.SIGKILL)
    workers.wait_for_output(parent, "worker process died")
    wait_for(lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == total, timeout=90,
             message="every job to finish")
    ends = Counter(token for (kind, token), n in runs(path).items() if kind == "end" for _ in range(n))
    assert len(ends) == total, "a job was lost"
    # A second run only of a job that the killed process held, recorded as such (its task may have
    # got to its end before the kill and before its outcome was written: a crash can repeat that much).
    taken_back = {job.args[1]: job for job in Job.objects.filter(attempts=2)}
    for token, count in ends.items():
        if count > 1:
            job = taken_back.get(token)
            assert count == 2 and job is not None, f"{token} ran {count} times"
            assert [e["exception_class_path"] for e in job.errors] == ["jobs.exceptions.WorkerLost"], job.errors
            assert f":{victim}:" in job.errors[0]["worker_id"], job.errors
    assert Job.objects.exclude(status=JobStatus.SUCCESSFUL).count() == 0
    replaced = children_of(parent.pid)
    assert len(replaced) == 2 and victim not in replaced, replaced
    assert parent.poll() is None
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0, workers.output(parent)


def test_sigterm_to_the_parent_stops_every_child_and_exits_0(workers, record_dir):
    path = record_dir / "runs"
    parent = start_parent(workers)
    tasks.slow_then_record.enqueue(str(path), "t", 1.0)
    wait_for(lambda: runs(path)[("start", "t")] == 1, message="the job to start")
    children = children_of(parent.pid)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0, workers.output(parent)
    assert runs(path)[("end", "t")] == 1  # the running job finished within the grace period
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    assert Job.objects.get().status == JobStatus.SUCCESSFUL
    assert WorkerProcess.objects.count() == 0


def test_a_second_signal_ends_everything_at_once(workers, record_dir):
    path = record_dir / "runs"
    parent = start_parent(workers)
    tasks.slow_then_record.enqueue(str(path), "long", 600)
    wait_for(lambda: runs(path)[("start", "long")] == 1, message="the job to start")
    children = children_of(parent.pid)
    parent.send_signal(signal.SIGTERM)
    workers.wait_for_output(parent, "worker stopping")
    parent.send_signal(signal.SIGINT)
    assert parent.wait(5) == 128 + signal.SIGINT
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), timeout=5,
             message="every child gone")


def test_max_jobs_recycles_a_child_not_the_parent(workers, record_dir):
    path = record_dir / "runs"
    parent = start_parent(workers, "--max-jobs", "5")
    first = set(children_of(parent.pid))
    with transaction.atomic():
        for i in range(30):
            tasks.slow_then_record.enqueue(str(path), f"job-{i}", 0.01)
    wait_for(lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 30, timeout=90,
             message="every job to finish")
    assert parent.poll() is None
    assert "worker process recycled" in workers.output(parent)
    assert "worker process died" not in workers.output(parent)
    assert set(children_of(parent.pid)) - first, "no child was replaced"
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0, workers.output(parent)


def test_a_task_holding_the_gil_past_stale_after_is_not_taken_back_under_processes(workers, record_dir):
    """stale_after is 3 s in tests: a 10 s call holding the GIL starves the child's own heartbeat.
    Without a parent, the sibling worker takes the job back (the control below); with one, never."""
    path = record_dir / "runs"
    parent = start_parent(workers)
    result = tasks.holds_gil.enqueue(str(path), "gil", 10)
    job = wait_for(lambda: Job.objects.filter(pk=result.id, status=JobStatus.SUCCESSFUL).first(), timeout=60,
                   message="the GIL-holding job to finish")
    assert job.attempts == 1 and job.errors == [], job.errors
    assert runs(path) == Counter({("start", "gil"): 1, ("end", "gil"): 1})
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0, workers.output(parent)


@pytest.mark.vendors("postgresql", "mysql")
def test_without_a_parent_a_task_holding_the_gil_is_taken_back(workers, record_dir):
    """The control of the test above: two plain workers, the same task, and the job is taken back.
    Not on SQLite: there, when the task takes the GIL while its worker's heartbeat thread is inside
    its write transaction, the whole database stays locked until the task lets go, so the other
    worker cannot take the job back either (it failed so once in CI, under load): the danger is
    worse, not absent, and --processes is the answer all the same."""
    path = record_dir / "runs"
    first, second = workers.start(), workers.start()
    for proc in (first, second):
        workers.wait_for_output(proc, "worker started")
    result = tasks.holds_gil.enqueue(str(path), "gil", 10)
    wait_for(lambda: Job.objects.filter(pk=result.id, errors__icontains="was lost").exists(), timeout=60,
             message="the job to be taken back from its starved worker")


def test_processes_and_reload_do_not_go_together(workers):
    proc = workers.start("--processes", "2", "--reload")
    assert proc.wait(30) != 0
    assert "--processes and --reload" in workers.output(proc)


def test_a_job_holding_the_gil_past_its_timeout_ends_with_its_process_and_others_go_on(workers, record_dir):
    path, others = record_dir / "runs", record_dir / "others"
    # Liveness is not the subject here (the parent's beat is, above): a loaded machine must not let a
    # late beat turn the timeout under test into a take-back.
    parent = start_parent(workers, "--concurrency", "2", env=subprocess_env(JOBS_TEST_OPTIONS='{"stale_after": 15}'))
    stuck = tasks.holds_gil_past_timeout.enqueue(str(path), "gil", 60)
    job = wait_for(lambda: Job.objects.filter(pk=stuck.id, status=JobStatus.FAILED).first(), timeout=60,
                   message="both attempts to time out")
    assert job.attempts == 2
    assert [e["exception_class_path"] for e in job.errors] == ["jobs.exceptions.JobTimeout"] * 2, job.errors
    assert all("worker process was ended" in e["message"] for e in job.errors)
    starts = [line for line in path.read_text().splitlines() if line.startswith("start")]
    pids = [line.split("pid=")[1] for line in starts]
    assert len(starts) == 2 and pids[0] != pids[1] and "end gil" not in path.read_text()
    assert workers.output(parent).count("worker process ended") == 2
    with transaction.atomic():
        for i in range(10):
            tasks.slow_then_record.enqueue(str(others), f"job-{i}", 0.01)
    wait_for(lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 10, timeout=60,
             message="other jobs to run on the replaced processes")
    wait_for(lambda: len(children_of(parent.pid)) == 2, message="the second ended process replaced too")
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0, workers.output(parent)


def test_a_job_blocked_in_c_under_a_concurrency_limit_frees_its_key_only_when_its_process_ends(workers, record_dir):
    """``sleeps`` blocks in time.sleep (C) far past its 0.5 s timeout; the next job of the key starts
    only after the process running it has been ended."""
    path = record_dir / "runs"
    parent = start_parent(workers, "--concurrency", "2")
    first = tasks.sleeps_under_key.enqueue(str(path), "first", 600)
    wait_for(lambda: "start first" in (path.read_text() if path.exists() else ""), message="the first to start")
    second = tasks.sleeps_under_key.enqueue(str(path), "second", 0)
    wait_for(lambda: Job.objects.filter(pk=second.id, status=JobStatus.SUCCESSFUL).exists(), timeout=60,
             message="the second job to run once the first's process ended")
    lines = path.read_text().splitlines()
    first_pid = next(line for line in lines if line.startswith("start first")).split("pid=")[1]
    assert not os.path.exists(f"/proc/{first_pid}"), "the second ran while the first's code still could"
    assert Job.objects.get(pk=first.id).status == JobStatus.FAILED
    assert "worker process ended" in workers.output(parent)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0, workers.output(parent)


def test_python_code_past_its_timeout_is_interrupted_without_ending_its_process(workers, record_dir):
    path = record_dir / "runs"
    parent = start_parent(workers)
    result = tasks.spins_past_timeout.enqueue(str(path))
    job = wait_for(lambda: Job.objects.filter(pk=result.id, status=JobStatus.FAILED).first(), timeout=30,
                   message="the spinning job to time out")
    assert job.errors[0]["exception_class_path"] == "jobs.exceptions.JobTimeout"
    assert "worker process ended" not in workers.output(parent)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0, workers.output(parent)


def test_jobs_status_shows_the_children_with_their_parent(workers):
    import json
    import re
    import subprocess
    import sys

    from tests.conftest import REPO, subprocess_env

    parent = start_parent(workers)
    parent_id = re.search(r"supervisor started worker=(\S+)", workers.output(parent)).group(1)
    assert set(WorkerProcess.objects.values_list("parent", flat=True)) == {parent_id}
    report = subprocess.run([sys.executable, str(REPO / "manage.py"), "jobs_status", "--json"], cwd=REPO,
                            env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert {w["parent"] for w in json.loads(report.stdout)["workers"]} == {parent_id}, report.stdout
    table = subprocess.run([sys.executable, str(REPO / "manage.py"), "jobs_status"], cwd=REPO,
                           env=subprocess_env(), capture_output=True, text=True, timeout=60).stdout
    assert table.count(parent_id) == 2, table
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0, workers.output(parent)


def test_under_systemd_the_parent_speaks_for_the_unit_and_stops_pinging_when_a_child_crash_loops(workers):
    from tests.test_lifecycle import NotifySocket

    notify = NotifySocket()
    try:
        watchdog = 2.0
        env = subprocess_env(NOTIFY_SOCKET=notify.name, WATCHDOG_USEC=str(int(watchdog * 1e6)))
        parent = workers.start("--processes", "2", env=env)
        notify.wait_for("READY=1")
        assert "STATUS=supervisor" in notify.messages[-1][1]
        pings = [notify.wait_for("WATCHDOG=1") for _ in range(4)]
        assert max(b - a for a, b in zip(pings, pings[1:])) < watchdog / 2
        assert not any("STATUS=worker" in message for _, message in notify.messages), "a child spoke for the unit"
        parent.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert parent.wait(30) == 0

        crashing = workers.start("--processes", "1", env={**env, "JOBS_TEST_CHILDREN_CRASH": "1"})
        notify.wait_for("READY=1")
        workers.wait_for_output(crashing, "worker process died", timeout=30)
        wait_for(lambda: workers.output(crashing).count("worker process died") >= 5, timeout=60,
                 message="five deaths in a row")
        while notify.receive(0.3) is not None:  # the pings sent so far (and one on its way)
            pass
        assert notify.receive(watchdog * 1.5) is None, "the parent still answered the watchdog"
        assert crashing.poll() is None
    finally:
        notify.close()


def test_a_job_its_parent_ended_follows_the_tasks_retry_on(workers, record_dir):
    path = record_dir / "runs"
    parent = start_parent(workers)
    result = tasks.blocks_past_timeout_retrying_only_connection_errors.enqueue(str(path), 600)
    job = wait_for(lambda: Job.objects.filter(pk=result.id, status=JobStatus.FAILED).first(), timeout=60,
                   message="the job to end after one attempt")
    assert job.attempts == 1 and job.errors[0]["exception_class_path"] == "jobs.exceptions.JobTimeout"
    assert "worker process ended" in workers.output(parent)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 0, workers.output(parent)


def test_an_attempt_its_parent_ended_is_recorded_as_timed_out_though_another_worker_sweeps_at_that_moment(
        transactional_db):
    """The parent takes the ended child's jobs back with the reason it knows (a timeout). Every other
    worker sweeps for stale jobs all the time: one that sweeps right then must not find them, or it
    takes the timed-out attempt back as a lost worker (seen in ``make chaos`` when the parent set
    their heartbeat back first), and the task's ``retry_on`` no longer sees a timeout."""
    import threading

    from django.db import connection
    from django.utils import timezone

    from jobs.exceptions import JobTimeout
    from jobs.sql import claim
    from jobs.worker.supervisor import Supervisor
    from tests.conftest import sweep

    result = tasks.add.enqueue(1, 2)
    (claimed,) = claim(worker_id="host:1:child", limit=1, now=timezone.now())
    parent = Supervisor(processes=1, child_args=lambda slot: [])
    take_back = parent.liveness.take_back_held
    swept = []

    def another_worker_sweeps_first(worker_id, now, because):
        def other():  # a thread: another worker's own connection
            try:
                swept.append(sweep())
            finally:
                connection.close()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(2)  # on SQLite it may wait for the parent's write: it then sweeps after it
        return take_back(worker_id, now, because=because)

    parent.liveness.take_back_held = another_worker_sweeps_first
    try:
        parent._take_back("host:1:child", because={(claimed.id, claimed.attempts): JobTimeout("ended")})
    finally:
        os.close(parent._parent_end)
        os.close(parent._child_end)
    wait_for(lambda: swept, message="the other worker's sweep to end")
    job = Job.objects.get(pk=result.id)
    assert [e["exception_class_path"] for e in job.errors] == ["jobs.exceptions.JobTimeout"], job.errors
