"""Real worker processes: many at once, killed, terminated, and a database that restarts."""

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection, transaction

from jobs.models import Job, JobStatus
from tests import tasks
from tests.conftest import subprocess_env, wait_for


def status_counts() -> dict:
    return dict(Counter(Job.objects.values_list("status", flat=True)))


def test_several_workers_run_every_job_exactly_once(workers, record_dir):
    path = str(record_dir / "runs")
    total = 1500
    procs = [workers.start(), workers.start("--concurrency", "3"), workers.start()]
    for proc in procs:  # every worker listening before the jobs come, so that all take part
        workers.wait_for_output(proc, "worker started")
    # Jobs of a few ms: no-op jobs would be done by whichever worker holds SQLite's lock first.
    with transaction.atomic():
        ids = [tasks.slow_then_record.enqueue(path, f"job-{i}", 0.004).id for i in range(total)]
    wait_for(lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == total, timeout=180,
             message="every job to finish")
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(30) == 0, workers.output(proc)
    lines = [line for line in Path(path).read_text().splitlines() if line.startswith("start ")]
    counts = Counter(line.split()[1] for line in lines)
    assert len(counts) == total, "some jobs never ran"
    assert max(counts.values()) == 1, f"ran twice: {[t for t, n in counts.items() if n > 1][:5]}"
    assert status_counts() == {JobStatus.SUCCESSFUL: total}
    assert len(ids) == total
    # Every worker took part (no single process ran everything while the others idled).
    finished = [workers.output(p).count("job finished") for p in procs]
    assert all(n > 0 for n in finished), finished


def test_a_job_of_a_killed_worker_is_taken_back_and_retried(workers, record_dir):
    path = record_dir / "runs"
    result = tasks.slow_first_attempt.enqueue(str(path), 120)
    doomed = workers.start()
    wait_for(lambda: path.exists() and "attempt=1" in path.read_text(), message="attempt 1 to start")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    assert Job.objects.get().status == JobStatus.RUNNING  # nobody told the database
    rescuer = workers.start()
    job = wait_for(lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).first(), timeout=60,
                   message="the job to be rescued (stale_after is 3 s in tests)")
    assert job.attempts == 2 and job.return_value == 2
    assert [e["exception_class_path"] for e in job.errors] == ["jobs.exceptions.WorkerLost"]
    assert "was lost" in job.errors[0]["message"]
    assert str(job.pk) == result.id
    assert "job taken back" in workers.output(rescuer)


def test_sigterm_lets_the_running_job_finish(workers, record_dir):
    path = record_dir / "runs"
    tasks.slow_then_record.enqueue(str(path), "t", 1.0)
    proc = workers.start()
    wait_for(lambda: path.exists() and "start t" in path.read_text(), message="the job to start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, workers.output(proc)
    assert "end t" in path.read_text()
    assert Job.objects.get().status == JobStatus.SUCCESSFUL


def test_sigterm_hands_back_a_job_that_outlives_the_grace_period(workers, record_dir):
    path = record_dir / "runs"
    tasks.slow_then_record.enqueue(str(path), "long", 600)
    proc = workers.start()
    wait_for(lambda: path.exists() and "start long" in path.read_text(), message="the job to start")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, workers.output(proc)
    assert time.monotonic() - sent < 15  # grace is 5 s in tests
    job = Job.objects.get()
    assert job.status == JobStatus.READY and job.attempts == 0 and job.errors == []
    assert "job handed back" in workers.output(proc)


def test_a_second_signal_exits_at_once(workers, record_dir):
    path = record_dir / "runs"
    tasks.slow_then_record.enqueue(str(path), "long", 600)
    proc = workers.start()
    wait_for(lambda: path.exists() and "start long" in path.read_text(), message="the job to start")
    proc.send_signal(signal.SIGTERM)
    workers.wait_for_output(proc, "worker stopping")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(5) == 128 + signal.SIGINT
    # Left RUNNING: its heartbeat stops, and any other worker will take it back.
    assert Job.objects.get().status == JobStatus.RUNNING


def test_an_idle_worker_stops_promptly_on_sigterm(workers):
    proc = workers.start("--sleep", "30")
    workers.wait_for_output(proc, "worker started")
    proc.send_signal(signal.SIGTERM)
    try:  # well under its 30 s poll: the signal ends the wait
        code = proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 10 s after SIGTERM; its output:\n{workers.output(proc)}")
    assert code == 0, workers.output(proc)


def test_duration_stops_claiming_then_exits(workers):
    proc = workers.start("--duration", "1")
    assert proc.wait(20) == 0
    assert "duration 1s reached" in workers.output(proc)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_after_its_duration_a_worker_waits_for_its_running_job_without_spinning(workers, record_dir):
    path = record_dir / "slow"
    tasks.slow_then_record.enqueue(str(path), "a", 3)
    proc = workers.start("--duration", "1")  # it claims the job at once, then reaches its duration
    workers.wait_for_output(proc, "duration 1s reached")
    cpu_at_stop = _cpu_seconds(proc.pid)
    wait_for(lambda: "end a" in (path.read_text() if path.exists() else ""), timeout=20, message="the job to end")
    cpu_while_waiting = _cpu_seconds(proc.pid) - cpu_at_stop
    assert proc.wait(20) == 0
    assert cpu_while_waiting < 0.5, f"{cpu_while_waiting:.2f} s of CPU while only waiting for its job"


def test_bad_queue_option_is_a_clear_error(workers):
    proc = workers.start("--queue", "nope")
    assert proc.wait(30) != 0
    assert "--queue 'nope' is not in" in workers.output(proc)


@pytest.mark.postgres_only
def test_worker_survives_a_postgres_restart(workers):
    import importlib

    settings_module = importlib.import_module(os.environ["DJANGO_SETTINGS_MODULE"])  # postgres or pgbouncer
    proc = workers.start()
    first = tasks.add.enqueue(1, 1)
    wait_for(lambda: Job.objects.filter(pk=int(first.id), status=JobStatus.SUCCESSFUL).exists(),
             message="the first job")
    settings_module._server.restart()
    connection.close()  # our own connection died with the server too
    if not getattr(settings_module, "VIA_PGBOUNCER", False):  # PgBouncer hides a restart from its clients
        workers.wait_for_output(proc, "database error")
    second = tasks.add.enqueue(2, 2)
    job = wait_for(lambda: Job.objects.filter(pk=int(second.id), status=JobStatus.SUCCESSFUL).first(),
                   timeout=60, message="a job enqueued after the restart")
    assert job.return_value == 4
    assert proc.poll() is None, "the worker died"


def test_an_idle_worker_wakes_on_enqueue_long_before_its_poll(workers):
    """LISTEN/NOTIFY on PostgreSQL, the data_version probe on SQLite, the MAX(id) probe on MySQL/MariaDB:
    no waiting for the 60 s poll."""
    env = subprocess_env(JOBS_TEST_OPTIONS='{"stale_after": 90}')  # heartbeats 30 s apart: no early wake
    proc = workers.start("--sleep", "60", env=env)
    workers.wait_for_output(proc, "worker started")
    for attempt in range(3):
        result = tasks.add.enqueue(attempt, 1)
        job = wait_for(lambda pk=int(result.id): Job.objects.filter(pk=pk, status=JobStatus.SUCCESSFUL).first(),
                       timeout=10, message="the idle worker to wake up")
        assert job.return_value == attempt + 1


def test_batched_outcomes_are_all_written(workers):
    with transaction.atomic():
        ids = [int(tasks.add.enqueue(i, i).id) for i in range(500)]
    proc = workers.start("--burst")
    assert proc.wait(120) == 0, workers.output(proc)
    values = dict(Job.objects.filter(status=JobStatus.SUCCESSFUL).values_list("id", "return_value"))
    assert values == {pk: 2 * i for i, pk in enumerate(ids)}
