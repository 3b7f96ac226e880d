"""The tick with a clock the tests control: exactly once, misfires, DST, sync, the switch, the loop."""

import logging
import threading
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from django.db import IntegrityError, transaction
from django.test import override_settings

from jobs.framework import TaskResultStatus
from jobs.loops import worker_loops
from jobs.models import Job
from scheduler.cron import CronSchedule
from scheduler.models import Schedule, ScheduleRun
from scheduler.runner import MISFIRE_ALL_CAP, Scheduler, plan, run_in_worker, run_now
from scheduler.sync import sync_schedules
from tests import tasks

pytestmark = pytest.mark.django_db


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make_schedule(name="every-5-min", cron="*/5 * * * *", *, zone="UTC", next_fire_at=None, start=None, **fields):
    fields.setdefault("task", "tests.tasks.add")
    fields.setdefault("args", [1, 2])
    if next_fire_at is None and start is not None:
        next_fire_at = CronSchedule(cron, zone).next_after(start)
    return Schedule.objects.create(name=name, cron=cron, timezone=zone, next_fire_at=next_fire_at, **fields)


def fire_times(schedule) -> list[datetime]:
    return list(ScheduleRun.objects.filter(schedule=schedule).order_by("fire_time").values_list("fire_time", flat=True))


def jobs_of(schedule):
    return Job.objects.filter(meta__schedule=schedule.name).order_by("id")


# -- one tick -----------------------------------------------------------------------------

def test_due_fire_time_becomes_one_job_that_says_where_it_came_from():
    schedule = make_schedule(start=utc(2025, 1, 1, 12, 1))
    scheduler = Scheduler()
    assert scheduler.tick(utc(2025, 1, 1, 12, 4, 59)) == utc(2025, 1, 1, 12, 5)  # not yet: nothing
    assert not ScheduleRun.objects.exists()

    wake = scheduler.tick(utc(2025, 1, 1, 12, 5, 0, 300000))
    assert wake == utc(2025, 1, 1, 12, 10)
    run = ScheduleRun.objects.get()
    job = Job.objects.get()
    assert run.fire_time == utc(2025, 1, 1, 12, 5) and run.job_id == job.pk and run.result_id == str(job.pk)
    assert job.meta == {"schedule": "every-5-min", "fire_time": "2025-01-01T12:05:00+00:00", "schedule_run": run.pk}
    assert (job.task_path, job.args, job.queue_name, job.priority) == ("tests.tasks.add", [1, 2], "default", 0)
    result = tasks.add.get_result(str(job.pk))  # an ordinary job of the task, through Django's API
    assert result.status == TaskResultStatus.READY and result.args == [1, 2]
    schedule.refresh_from_db()
    assert schedule.next_fire_at == utc(2025, 1, 1, 12, 10) and schedule.last_fire_at == utc(2025, 1, 1, 12, 5)


def test_fire_time_in_meta_is_in_the_schedules_time_zone_and_options_are_used():
    make_schedule(cron="0 9 * * *", zone="Europe/Berlin", start=utc(2025, 7, 1), queue_name="reports", priority=7,
                  args=[], kwargs={"a": 1, "b": 2})
    Scheduler().tick(utc(2025, 7, 1, 7, 0, 1))
    job = Job.objects.get()
    assert job.meta["fire_time"] == "2025-07-01T09:00:00+02:00"
    assert (job.queue_name, job.priority, job.kwargs) == ("reports", 7, {"a": 1, "b": 2})


def test_ticking_again_or_from_another_scheduler_adds_nothing():
    schedule = make_schedule(start=utc(2025, 1, 1, 12, 1))
    now = utc(2025, 1, 1, 12, 5, 0, 100)
    Scheduler().tick(now)
    Scheduler().tick(now)
    Scheduler().tick(now + timedelta(seconds=1))
    assert fire_times(schedule) == [utc(2025, 1, 1, 12, 5)] and jobs_of(schedule).count() == 1


def test_a_scheduler_with_a_stale_view_is_stopped_by_the_unique_constraint(caplog):
    """As on a database whose transactions do not serialise: B read the old next fire time."""
    schedule = make_schedule(start=utc(2025, 1, 1, 12, 1))
    Scheduler().tick(utc(2025, 1, 1, 12, 5, 1))
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=utc(2025, 1, 1, 12, 5))  # B's stale view
    with caplog.at_level(logging.INFO, logger="scheduler"):
        Scheduler().tick(utc(2025, 1, 1, 12, 5, 2))
    assert fire_times(schedule) == [utc(2025, 1, 1, 12, 5)] and jobs_of(schedule).count() == 1
    assert "already enqueued by another scheduler" in caplog.text


def test_the_database_refuses_a_second_row_for_a_fire_time_but_not_for_run_now():
    schedule = make_schedule()
    ScheduleRun.objects.create(schedule=schedule, fire_time=utc(2025, 1, 1), enqueued_at=utc(2025, 1, 1))
    with pytest.raises(IntegrityError), transaction.atomic():
        ScheduleRun.objects.create(schedule=schedule, fire_time=utc(2025, 1, 1), enqueued_at=utc(2025, 1, 1))
    for _ in range(2):  # manual runs have no fire time; NULLs never collide
        ScheduleRun.objects.create(schedule=schedule, fire_time=None, enqueued_at=utc(2025, 1, 1))
    assert ScheduleRun.objects.count() == 3


def test_a_slightly_late_tick_runs_every_fire_time_it_passed():
    schedule = make_schedule("two-seconds", "* * * * * */2", start=utc(2025, 1, 1, 12), misfire="once")
    Scheduler().tick(utc(2025, 1, 1, 12, 0, 7))  # 5 s late, within the grace: nothing was missed
    assert fire_times(schedule) == [utc(2025, 1, 1, 12, 0, s) for s in (2, 4, 6)]


def test_a_task_that_cannot_be_enqueued_leaves_its_error_on_the_run():
    schedule = make_schedule(start=utc(2025, 1, 1, 12, 1), task="tests.tasks.nope")  # does not import
    Scheduler().tick(utc(2025, 1, 1, 12, 5, 1))
    run = ScheduleRun.objects.get()
    assert run.job_id is None and "tests.tasks.nope" in run.error and not Job.objects.exists()
    schedule.refresh_from_db()
    assert schedule.next_fire_at == utc(2025, 1, 1, 12, 10)  # that fire time is done, not retried each tick


@pytest.mark.parametrize("fields, fragment", [
    ({"task": "tests.tasks.plain_function"}, "not a task"),
    ({"queue_name": "nowhere"}, "nowhere"),
    ({"args": [1]}, ""),  # add(a, b) with one argument enqueues fine: it fails when run, like any job
])
def test_what_cannot_be_enqueued_is_recorded_on_the_run(fields, fragment):
    make_schedule(start=utc(2025, 1, 1, 12, 1), **fields)
    Scheduler().tick(utc(2025, 1, 1, 12, 5, 1))
    run = ScheduleRun.objects.get()
    if fragment:
        assert fragment in run.error and run.job_id is None
    else:
        assert run.error == "" and run.job_id


# -- missed fire times ----------------------------------------------------------------------

DOWN_SINCE = utc(2025, 1, 1, 12, 0)


@pytest.mark.parametrize("misfire, back_at, expected", [
    # Down from 12:00 (the pending fire time) for an hour, back 40 s after 13:00: everything is missed.
    ("once", utc(2025, 1, 1, 13, 0, 40), [utc(2025, 1, 1, 13, 0)]),
    ("skip", utc(2025, 1, 1, 13, 0, 40), []),
    ("all", utc(2025, 1, 1, 13, 0, 40), [DOWN_SINCE + timedelta(minutes=m) for m in range(61)]),
    # Back 10 s after 13:00: 13:00 itself is merely late, so even "skip" runs it.
    ("once", utc(2025, 1, 1, 13, 0, 10), [utc(2025, 1, 1, 13, 0)]),
    ("skip", utc(2025, 1, 1, 13, 0, 10), [utc(2025, 1, 1, 13, 0)]),
    # Down for three days: "all" stops at the cap, keeping the latest.
    ("all", utc(2025, 1, 4, 12, 0, 40),
     [utc(2025, 1, 4, 12, 0) - timedelta(minutes=m) for m in reversed(range(MISFIRE_ALL_CAP))]),
])
def test_misfire_policies(misfire, back_at, expected):
    schedule = make_schedule("minutely", "* * * * *", next_fire_at=DOWN_SINCE, misfire=misfire)
    Scheduler().tick(back_at)
    assert fire_times(schedule) == expected and jobs_of(schedule).count() == len(expected)
    schedule.refresh_from_db()
    assert schedule.next_fire_at == CronSchedule("* * * * *", "UTC").next_after(back_at)
    # And then it carries on as usual.
    Scheduler().tick(schedule.next_fire_at)
    assert fire_times(schedule)[-1] == schedule.next_fire_at


def test_plan_is_a_pure_function_of_the_clock():
    cron = CronSchedule("0 * * * *", "UTC")
    assert plan(cron, utc(2025, 1, 1, 1), utc(2025, 1, 1, 0, 59), misfire="once") == []
    assert plan(cron, utc(2025, 1, 1, 1), utc(2025, 1, 1, 5, 30), misfire="once") == [utc(2025, 1, 1, 5)]
    assert plan(cron, utc(2025, 1, 1, 1), utc(2025, 1, 1, 5, 30), misfire="all", cap=2) == [
        utc(2025, 1, 1, 4), utc(2025, 1, 1, 5)]
    assert plan(cron, utc(2025, 1, 1, 1), utc(2025, 1, 1, 5, 0, 20), misfire="skip") == [utc(2025, 1, 1, 5)]
    assert plan(cron, utc(2025, 1, 1, 1), utc(2025, 1, 1, 5, 0, 20), misfire="skip",
                grace=timedelta(seconds=10)) == []


# -- daylight saving, through the tick ---------------------------------------------------

def run_clock(schedule, start: datetime, until: datetime) -> int:
    """Tick at every wake time the scheduler asks for, as its loop does; return the ticks."""
    scheduler, now, ticks = Scheduler(), start, 0
    while now < until:
        now = scheduler.tick(now)
        ticks += 1
    return ticks


@pytest.mark.parametrize("start, day, expected", [
    (utc(2025, 3, 28), "2025-03-30", "2025-03-30T03:00:00+02:00"),  # spring forward: at the jump
    (utc(2025, 10, 24), "2025-10-26", "2025-10-26T02:30:00+02:00"),  # fall back: the first 02:30 only
])
def test_daily_0230_berlin_runs_exactly_once_on_transition_days(start, day, expected):
    schedule = make_schedule("daily-0230", "30 2 * * *", zone="Europe/Berlin", start=start)
    run_clock(schedule, start, start + timedelta(days=4))
    stamps = [job.meta["fire_time"] for job in jobs_of(schedule)]
    assert len(stamps) == 4 and len(set(stamps)) == 4
    assert [s for s in stamps if s.startswith(day)] == [expected]


def test_quarter_hourly_keeps_running_through_the_repeated_hour():
    schedule = make_schedule("quarter", "*/15 * * * *", zone="Europe/Berlin", start=utc(2025, 10, 25, 23))
    run_clock(schedule, utc(2025, 10, 25, 23), utc(2025, 10, 26, 2))
    fires = fire_times(schedule)
    assert fires[0] == utc(2025, 10, 25, 23, 15) and fires[-1] == utc(2025, 10, 26, 1, 45)  # 01:15 CEST .. 02:45 CET
    assert len(fires) == 11 and {b - a for a, b in pairwise(fires)} == {timedelta(minutes=15)}


# -- the switch, run now, registration -----------------------------------------------------

def test_switched_off_schedules_do_not_run_and_switching_on_does_not_catch_up():
    schedule = make_schedule(start=utc(2025, 1, 1, 12, 1))
    schedule.switch(False, now=utc(2025, 1, 1, 12, 2))
    assert Scheduler().tick(utc(2025, 1, 1, 12, 30)) is None and not ScheduleRun.objects.exists()
    schedule.switch(True, now=utc(2025, 1, 1, 12, 31))
    assert schedule.next_fire_at == utc(2025, 1, 1, 12, 35)
    Scheduler().tick(utc(2025, 1, 1, 12, 35))
    assert fire_times(schedule) == [utc(2025, 1, 1, 12, 35)]


def test_run_now_enqueues_at_once_without_a_fire_time():
    schedule = make_schedule(start=utc(2025, 1, 1, 12, 1))
    first, second = run_now(schedule), run_now(schedule)
    assert first.fire_time is None and first.manual and first.job_id != second.job_id
    job = Job.objects.get(pk=first.job_id)
    assert job.meta == {"schedule": schedule.name, "fire_time": None, "schedule_run": first.pk, "manual": True}
    schedule.refresh_from_db()
    assert schedule.next_fire_at == utc(2025, 1, 1, 12, 5)  # the regular ticks are not touched


def test_the_tick_is_registered_as_a_worker_loop():
    assert worker_loops()["scheduler"] is run_in_worker


def test_prune_keeps_the_newest_runs():
    schedule = make_schedule()
    for minute in range(5):
        ScheduleRun.objects.create(schedule=schedule, fire_time=utc(2025, 1, 1, 0, minute), enqueued_at=utc(2025, 1, 1))
    assert Scheduler(keep_runs=3).prune() == 2
    assert fire_times(schedule) == [utc(2025, 1, 1, 0, 2), utc(2025, 1, 1, 0, 3), utc(2025, 1, 1, 0, 4)]


# -- the loop, with a clock that moves only when the scheduler sleeps ------------------------

class FakeClock:
    def __init__(self, start: datetime):
        self.value = start

    def now(self) -> datetime:
        return self.value


class SleepRecorder(threading.Event):
    """``wait(t)`` moves the fake clock on by ``t`` instead of sleeping; stops after ``limit`` waits."""

    def __init__(self, clock: FakeClock, limit: int):
        super().__init__()
        self.clock, self.limit, self.waits = clock, limit, []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        self.clock.value += timedelta(seconds=timeout)
        if len(self.waits) >= self.limit:
            self.set()
        return self.is_set()


@override_settings(SCHEDULED_JOBS={"two-seconds": {"task": "tests.tasks.noop", "cron": "* * * * * */2"}})
def test_loop_sleeps_exactly_until_each_fire_time_and_enqueues_on_it():
    clock = FakeClock(utc(2025, 1, 1, 12, 0, 0, 500000))
    stop = SleepRecorder(clock, limit=6)
    Scheduler(now=clock.now).run(stop)
    assert stop.waits == [1.5, 2.0, 2.0, 2.0, 2.0, 2.0]  # no spinning, no polling: one sleep per tick
    runs = list(ScheduleRun.objects.order_by("fire_time"))
    assert [r.fire_time for r in runs] == [utc(2025, 1, 1, 12, 0, s) for s in (2, 4, 6, 8, 10)]
    assert all(r.enqueued_at == r.fire_time for r in runs)  # woke on the fire time itself


@override_settings(SCHEDULED_JOBS={"daily": {"task": "tests.tasks.noop", "cron": "@daily"}})
def test_loop_with_distant_fire_times_sleeps_in_bounded_steps():
    clock = FakeClock(utc(2025, 1, 1, 12))
    stop = SleepRecorder(clock, limit=3)
    Scheduler(now=clock.now, recheck=5.0).run(stop)
    assert stop.waits == [5.0, 5.0, 5.0]  # re-reads the table (switch flipped in the admin), never spins


# -- settings -> rows --------------------------------------------------------------------

ENTRIES = {
    "nightly": {"task": "tests.tasks.add", "cron": "0 3 * * *", "args": [1, 2], "timezone": "Europe/Berlin"},
    "minutely": {"task": "tests.tasks.noop", "cron": "* * * * *", "queue_name": "emails", "misfire": "skip"},
}


def test_sync_creates_updates_and_keeps_removed_entries():
    now = utc(2025, 1, 1, 12, 0, 30)
    with override_settings(SCHEDULED_JOBS=ENTRIES):
        report = sync_schedules(now)
    assert sorted(report.created) == ["minutely", "nightly"]
    nightly = Schedule.objects.get(name="nightly")
    assert (nightly.task, nightly.args, nightly.kwargs, nightly.queue_name, nightly.priority, nightly.misfire) == (
        "tests.tasks.add", [1, 2], {}, "default", 0, "once")
    assert nightly.next_fire_at == utc(2025, 1, 2, 2) and nightly.enabled and nightly.in_settings
    minutely = Schedule.objects.get(name="minutely")
    assert (minutely.queue_name, minutely.misfire, minutely.timezone) == ("emails", "skip", "UTC")
    ScheduleRun.objects.create(schedule=minutely, fire_time=utc(2025, 1, 1, 12, 1), enqueued_at=now)

    later = utc(2025, 1, 1, 13)
    changed = {"nightly": {**ENTRIES["nightly"], "cron": "0 4 * * *", "priority": 5}}
    with override_settings(SCHEDULED_JOBS=changed):
        report = sync_schedules(later)
    assert report.updated == ["nightly"] and report.removed == 1
    nightly.refresh_from_db()
    assert (nightly.cron, nightly.priority, nightly.next_fire_at) == ("0 4 * * *", 5, utc(2025, 1, 2, 3))
    minutely.refresh_from_db()
    assert not minutely.in_settings and minutely.runs.count() == 1  # disabled, history kept
    assert list(Schedule.objects.active()) == [nightly]

    with override_settings(SCHEDULED_JOBS=ENTRIES):  # back in the settings: starts afresh from now
        sync_schedules(utc(2025, 1, 1, 14, 0, 30))
    minutely.refresh_from_db()
    assert minutely.in_settings and minutely.next_fire_at == utc(2025, 1, 1, 14, 1)


def test_a_schedule_switched_off_in_the_admin_stays_off_across_restarts():
    with override_settings(SCHEDULED_JOBS=ENTRIES):
        sync_schedules(utc(2025, 1, 1))
        Schedule.objects.get(name="nightly").switch(False, now=utc(2025, 1, 1))
        sync_schedules(utc(2025, 1, 2))  # a restart
        Scheduler().tick(utc(2025, 1, 3))
    assert not Schedule.objects.get(name="nightly").enabled
    assert not ScheduleRun.objects.filter(schedule__name="nightly").exists()


def test_an_invalid_entry_is_left_alone_and_not_marked_removed(caplog):
    with override_settings(SCHEDULED_JOBS=ENTRIES):
        sync_schedules(utc(2025, 1, 1))
    broken = {**ENTRIES, "nightly": {**ENTRIES["nightly"], "cron": "0 25 * * *"}}
    with override_settings(SCHEDULED_JOBS=broken), caplog.at_level(logging.ERROR, logger="scheduler"):
        sync_schedules(utc(2025, 1, 2))
    nightly = Schedule.objects.get(name="nightly")
    assert nightly.in_settings and nightly.cron == "0 3 * * *"
    assert "SCHEDULED_JOBS['nightly']['cron']" in caplog.text


# -- overlap off: a fire time is skipped while the previous run's job is unfinished -----------

def set_job_status(job_id: int, status: str) -> None:
    """Stand in for the worker: the previous job reaches ``status`` ("deleted": pruned)."""
    jobs = Job.objects.filter(pk=job_id)
    jobs.delete() if status == "deleted" else jobs.update(status=status)


@pytest.mark.parametrize("overlap, previous, reason", [
    (False, "READY", "still waiting to run"),  # not started yet (or a retry waiting): it will run
    (False, "RUNNING", "still running"),
    (False, "SUCCESSFUL", ""),
    (False, "FAILED", ""),
    (False, "CANCELLED", ""),
    (False, "deleted", ""),  # pruned: finished long ago
    (True, "RUNNING", ""),  # the default: overlapping is allowed
])
def test_a_fire_time_is_skipped_only_while_the_previous_job_is_unfinished(overlap, previous, reason, caplog):
    schedule = make_schedule(start=utc(2025, 1, 1, 12, 1), overlap=overlap)
    scheduler = Scheduler()
    scheduler.tick(utc(2025, 1, 1, 12, 5))
    first = ScheduleRun.objects.get()
    set_job_status(first.job_id, previous)

    with caplog.at_level(logging.INFO, logger="scheduler.runner"):
        assert scheduler.tick(utc(2025, 1, 1, 12, 10)) == utc(2025, 1, 1, 12, 15)
    second = ScheduleRun.objects.get(fire_time=utc(2025, 1, 1, 12, 10))
    if reason:
        assert second.skipped and second.skip_reason == f"previous run (job #{first.job_id}) {reason}"
        assert (second.job_id, second.result_id, second.error) == (None, "", "")
        assert jobs_of(schedule).count() == 1
        assert "schedule run skipped schedule=every-5-min fire_time=2025-01-01T12:10:00+00:00" in caplog.text
        assert f"job #{first.job_id}" in caplog.text
    else:
        assert not second.skipped and second.skip_reason == "" and second.job_id is not None
        assert Job.objects.filter(pk=second.job_id, meta__schedule_run=second.pk).exists()
    schedule.refresh_from_db()  # that fire time is done either way: not tried again
    assert schedule.next_fire_at == utc(2025, 1, 1, 12, 15) and schedule.last_fire_at == utc(2025, 1, 1, 12, 10)
    assert fire_times(schedule) == [utc(2025, 1, 1, 12, 5), utc(2025, 1, 1, 12, 10)]


def test_skipped_runs_are_not_the_previous_run():
    """The check looks past the skipped runs to the last one that made a job."""
    schedule = make_schedule(start=utc(2025, 1, 1, 12, 1), overlap=False)
    scheduler = Scheduler()
    scheduler.tick(utc(2025, 1, 1, 12, 5))
    first_job = ScheduleRun.objects.get().job_id
    set_job_status(first_job, "RUNNING")
    for minute in (10, 15):
        scheduler.tick(utc(2025, 1, 1, 12, minute))
    set_job_status(first_job, "SUCCESSFUL")
    scheduler.tick(utc(2025, 1, 1, 12, 20))
    scheduler.tick(utc(2025, 1, 1, 12, 25))  # the 12:20 job is READY: skipped, naming it
    runs = list(ScheduleRun.objects.filter(schedule=schedule).order_by("fire_time"))
    second_job = runs[3].job_id
    assert [(run.fire_time.minute, run.skipped, run.job_id) for run in runs] == [
        (5, False, first_job), (10, True, None), (15, True, None), (20, False, second_job), (25, True, None)]
    assert runs[4].skip_reason == f"previous run (job #{second_job}) still waiting to run"


def test_fire_times_handled_in_one_tick_do_not_overlap_each_other():
    """A late tick (or misfire "all") runs the first due fire time; the rest wait on its job."""
    late = make_schedule("two-seconds", "* * * * * */2", start=utc(2025, 1, 1, 12), overlap=False)
    caught_up = make_schedule("minutely", "* * * * *", next_fire_at=DOWN_SINCE, misfire="all", overlap=False)
    Scheduler().fire(late.pk, utc(2025, 1, 1, 12, 0, 7))  # 2, 4, 6 s: within the grace
    Scheduler().fire(caught_up.pk, utc(2025, 1, 1, 13, 0, 40))  # an hour down: 61 missed fire times
    for schedule, count in ((late, 3), (caught_up, 61)):
        runs = list(ScheduleRun.objects.filter(schedule=schedule).order_by("fire_time"))
        assert len(runs) == count and not runs[0].skipped and all(run.skipped for run in runs[1:])
        assert {run.skip_reason for run in runs[1:]} == {f"previous run (job #{runs[0].job_id}) still waiting to run"}
        assert jobs_of(schedule).count() == 1


def test_run_now_is_held_to_overlap_too_and_its_job_holds_the_ticks_back():
    schedule = make_schedule(start=utc(2025, 1, 1, 12, 1), overlap=False)
    manual = run_now(schedule)
    assert manual.job_id and not manual.skipped
    again = run_now(schedule)  # a second click while the first job waits
    assert again.skipped and again.manual
    assert again.skip_reason == f"previous run (job #{manual.job_id}) still waiting to run"
    Scheduler().tick(utc(2025, 1, 1, 12, 5))  # the manual job is the previous run of the tick too
    assert ScheduleRun.objects.get(fire_time=utc(2025, 1, 1, 12, 5)).skipped
    set_job_status(manual.job_id, "SUCCESSFUL")
    assert run_now(schedule).job_id is not None
    assert jobs_of(schedule).count() == 2


def test_the_overlap_check_costs_one_query():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = {}
    for overlap in (True, False):
        schedule = make_schedule(f"overlap-{overlap}", start=utc(2025, 1, 1, 12, 1), overlap=overlap)
        Scheduler().fire(schedule.pk, utc(2025, 1, 1, 12, 5))
        set_job_status(ScheduleRun.objects.get(schedule=schedule).job_id, "SUCCESSFUL")
        with CaptureQueriesContext(connection) as queries:
            assert len(Scheduler().fire(schedule.pk, utc(2025, 1, 1, 12, 10))) == 1
        counts[overlap] = len(queries)
    assert counts[False] == counts[True] + 1, counts


def test_prune_keeps_the_run_whose_job_is_still_running():
    """After many skipped fire times, the run holding the previous job is older than the newest kept."""
    schedule = make_schedule("two-seconds", "* * * * * */2", start=utc(2025, 1, 1, 12), overlap=False)
    scheduler = Scheduler(keep_runs=3)
    scheduler.tick(utc(2025, 1, 1, 12, 0, 2))
    running = ScheduleRun.objects.get()
    set_job_status(running.job_id, "RUNNING")
    for second in range(4, 20, 2):
        scheduler.tick(utc(2025, 1, 1, 12, 0, second))
    assert scheduler.prune() == 5  # 9 runs: the 3 newest and the running job's are kept
    assert ScheduleRun.objects.filter(pk=running.pk).exists()
    scheduler.tick(utc(2025, 1, 1, 12, 0, 20))
    assert ScheduleRun.objects.get(fire_time=utc(2025, 1, 1, 12, 0, 20)).skipped  # still held back
    assert jobs_of(schedule).count() == 1


@pytest.mark.vendors("postgresql", "sqlite")  # the partial index; MySQL/MariaDB have none (jobs.I030)
def test_the_previous_run_is_found_by_the_index_among_many_skipped_runs():
    from django.db import connection

    schedule = make_schedule("two-seconds", "* * * * * */2", start=utc(2025, 1, 1, 12), overlap=False)
    other = make_schedule("other", "* * * * * */2", start=utc(2025, 1, 1, 12))
    start = utc(2025, 1, 1, 12)
    ScheduleRun.objects.bulk_create(
        ScheduleRun(schedule=owner, fire_time=start + timedelta(seconds=2 * i), enqueued_at=start, skipped=True,
                    skip_reason="previous run (job #1) still running")
        for owner in (schedule, other) for i in range(3000))
    sql, params = ScheduleRun.objects.filter(schedule=schedule).latest_with_job().values("job_id").query.sql_with_params()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE scheduler_schedulerun")
            cursor.execute("EXPLAIN " + sql, params)
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
    assert "scheduler_run_with_job_idx" in plan, plan
    assert "TEMP B-TREE" not in plan and "Seq Scan" not in plan, plan


def test_sync_sets_overlap_without_moving_the_next_fire_time():
    entry = {"task": "tests.tasks.noop", "cron": "*/5 * * * *"}
    with override_settings(SCHEDULED_JOBS={"sync": entry}):
        sync_schedules(utc(2025, 1, 1, 12, 1))
    schedule = Schedule.objects.get()
    assert schedule.overlap and schedule.next_fire_at == utc(2025, 1, 1, 12, 5)
    with override_settings(SCHEDULED_JOBS={"sync": {**entry, "overlap": False}}):
        report = sync_schedules(utc(2025, 1, 1, 12, 3))
    schedule.refresh_from_db()
    assert report.updated == ["sync"] and not schedule.overlap and schedule.next_fire_at == utc(2025, 1, 1, 12, 5)
