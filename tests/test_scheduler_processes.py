"""Real processes: three schedulers (two inside ``process_tasks``, one ``run_scheduler``) on one database.

An every-2-seconds schedule must come out as one job per tick: no duplicate, no
gap, each enqueued within a second of its fire time; and the processes stop on
SIGTERM/SIGINT with exit status 0. A schedule with overlap off, in a worker with
room to spare, runs its jobs one after another and records the fire times between.
"""

import json
import os
import signal
import subprocess
from datetime import timedelta
from itertools import pairwise

import pytest
from django.utils import timezone

from jobs.models import Job, JobStatus
from scheduler.models import Schedule, ScheduleRun
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


def read_spans(path) -> dict[int, tuple[float, float]]:
    """{job id: (start, end)} from ``tests.tasks.records_span``'s file; each job ran exactly once."""
    seen: dict[str, dict[int, float]] = {"start": {}, "end": {}}
    for line in path.read_text().splitlines():
        mark, job_id, stamp = line.split()
        assert int(job_id) not in seen[mark], f"job {job_id} ran twice"
        seen[mark][int(job_id)] = float(stamp)
    assert seen["start"].keys() == seen["end"].keys()
    return {job_id: (start, seen["end"][job_id]) for job_id, start in seen["start"].items()}


def overlapping(spans: dict[int, tuple[float, float]]) -> list[tuple[int, int]]:
    """Pairs of jobs (in start order) where the later started before the earlier ended."""
    ordered = sorted(spans, key=lambda job_id: spans[job_id][0])
    return [(a, b) for a, b in pairwise(ordered) if spans[b][0] < spans[a][1]]


def test_a_schedule_with_overlap_off_never_runs_two_jobs_at_once(processes, tmp_path):
    """Every 2 s, a 5 s task, overlap off, for ~12 s in one worker with room for 4 jobs at once.

    Beside it runs the same schedule with overlap on, which does overlap in that worker: so
    the one with overlap off runs its jobs one after another because of the key, not the room.
    """
    apart, together = tmp_path / "apart.log", tmp_path / "together.log"
    every_two_seconds = {"task": "tests.tasks.records_span", "cron": "* * * * * */2"}
    jobs = {"apart": {**every_two_seconds, "args": [str(apart), 5], "overlap": False},
            "together": {**every_two_seconds, "args": [str(together), 5]}}
    proc = processes.start("process_tasks", "--concurrency", "4", jobs=jobs)
    wait_for(lambda: "schedules synced from settings" in processes.output(proc), timeout=30,
             message="the scheduler to start")
    # The one bounded wait: seven fire times, 12 s from the first to the last.
    wait_for(lambda: ScheduleRun.objects.filter(schedule__name="apart").count() >= 7, timeout=40,
             message="seven fire times of the schedule")
    Schedule.objects.filter(name__in=jobs).update(enabled=False)  # no more fire times: what was enqueued runs out
    wait_for(lambda: not Job.objects.filter(meta__schedule__in=list(jobs),
                                            status__in=[JobStatus.READY, JobStatus.RUNNING]).exists(),
             timeout=30, message="the last jobs to finish")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, processes.output(proc)
    assert "Traceback" not in processes.output(proc)

    runs = list(ScheduleRun.objects.filter(schedule__name="apart").order_by("fire_time"))
    # Every fire time once, none lost: one row each, 2 s apart; each made a job or was skipped.
    assert [b.fire_time - a.fire_time for a, b in pairwise(runs)] == [timedelta(seconds=2)] * (len(runs) - 1)
    assert all(run.error == "" and (run.job_id is None) == run.skipped for run in runs)
    made = [run for run in runs if not run.skipped]
    jobs_by_id = {job.pk: job for job in Job.objects.filter(meta__schedule="apart")}
    assert sorted(jobs_by_id) == sorted(run.job_id for run in made)
    assert {job.status for job in jobs_by_id.values()} == {JobStatus.SUCCESSFUL}
    assert len(made) >= 2 and len(runs) - len(made) >= 2, [(r.fire_time, r.skipped) for r in runs]

    # Never two at once: each job started after the previous one had ended (the task's own clock).
    spans = read_spans(apart)
    assert spans.keys() == jobs_by_id.keys() and overlapping(spans) == []
    previous = None
    for run in runs:
        if not run.skipped:
            if previous is not None:  # enqueued only once the previous job had finished
                assert jobs_by_id[previous].finished_at <= jobs_by_id[run.job_id].enqueued_at
            previous = run.job_id
            continue
        # Skipped while the previous job was unfinished (finished_at is taken just before the
        # worker's commit, so a skip decided in that instant may precede it by a moment).
        assert run.skip_reason in (f"previous run (job #{previous}) still running",
                                   f"previous run (job #{previous}) still waiting to run")
        assert jobs_by_id[previous].finished_at > run.enqueued_at - timedelta(seconds=0.5)

    # The control: the same schedule with overlap on does overlap in this worker.
    assert not ScheduleRun.objects.filter(schedule__name="together", skipped=True).exists()
    assert overlapping(read_spans(together)), read_spans(together)
