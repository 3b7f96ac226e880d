"""Real processes: three schedulers (two inside ``process_tasks``, one ``run_scheduler``) on one database.

An every-2-seconds schedule must come out as one job per tick: no duplicate, no
gap, each enqueued within a second of its fire time; and the processes stop on
SIGTERM/SIGINT with exit status 0.
"""

import json
import os
import signal
import subprocess
from datetime import timedelta
from itertools import pairwise

import pytest
from django.utils import timezone

from jobs.models import Job
from scheduler.models import ScheduleRun
from tests.conftest import subprocess_env, wait_for

NAME = "every-two-seconds"
TICKS = 5  # ~10 s of ticks with all three schedulers up


def scheduler_env(jobs: dict) -> dict:
    """This run's settings, with SCHEDULED_JOBS replaced by ``jobs``."""
    return subprocess_env(DJANGO_SETTINGS_MODULE="tests.test_scheduler_settings",
                          SCHEDULER_TEST_BASE_SETTINGS=os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings"),
                          SCHEDULER_TEST_JOBS=json.dumps(jobs))


class Processes:
    def __init__(self, workers):
        self.workers = workers
        self.output = workers.output

    def start(self, *command: str, jobs: dict) -> subprocess.Popen:
        return self.workers.manage(*command, env=scheduler_env(jobs))


@pytest.fixture
def processes(workers):
    return Processes(workers)


def test_three_schedulers_enqueue_every_tick_exactly_once(processes):
    jobs = {NAME: {"task": "tests.tasks.noop", "cron": "* * * * * */2"}}
    procs = [processes.start("process_tasks", jobs=jobs),
             processes.start("process_tasks", "--concurrency", "2", jobs=jobs),
             processes.start("run_scheduler", jobs=jobs)]
    wait_for(lambda: all("schedules synced from settings" in processes.output(p) for p in procs), timeout=30,
             message="every scheduler to start")
    all_up = timezone.now()
    wait_for(lambda: ScheduleRun.objects.filter(schedule__name=NAME, fire_time__gt=all_up).count() >= TICKS,
             timeout=TICKS * 2 + 15, message=f"{TICKS} ticks with all schedulers up")

    for proc, sig in zip(procs, (signal.SIGTERM, signal.SIGINT, signal.SIGTERM)):
        proc.send_signal(sig)
    for proc in procs:
        assert proc.wait(20) == 0, processes.output(proc)

    runs = list(ScheduleRun.objects.filter(schedule__name=NAME).order_by("fire_time"))
    fire_times = [run.fire_time for run in runs]
    assert len(fire_times) >= TICKS
    # No gap and no duplicate from the first tick to the last.
    assert [b - a for a, b in pairwise(fire_times)] == [timedelta(seconds=2)] * (len(fire_times) - 1)
    scheduled_jobs = Job.objects.filter(meta__schedule=NAME)
    assert scheduled_jobs.count() == len(runs)
    assert sorted(job.pk for job in scheduled_jobs) == sorted(run.job_id for run in runs)
    # Each job enqueued within one second of its fire time (the precision requirement).
    lateness = [(job.enqueued_at - run.fire_time).total_seconds()
                for run, job in ((run, scheduled_jobs.get(pk=run.job_id)) for run in runs)]
    assert all(0 <= late < 1 for late in lateness), lateness
    for proc in procs:
        assert "Traceback" not in processes.output(proc)


def test_run_scheduler_stops_at_once_on_sigterm_while_sleeping(processes):
    proc = processes.start("run_scheduler", jobs={"yearly": {"task": "tests.tasks.noop", "cron": "@yearly"}})
    wait_for(lambda: "schedules synced from settings" in processes.output(proc), timeout=30,
             message="the scheduler to start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
    assert "scheduler stopped" in processes.output(proc)
