"""``jobs.compat.background``: django-background-tasks' decorator on jobs, in process."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone
from django.utils.module_loading import import_string

from jobs import compat
from jobs.clock import Clock
from jobs.compat import BackgroundTask, TaskSchedule, background
from jobs.execution import attempt_limit, resolve_task
from jobs.framework import FRAMEWORK, InvalidTask, Task, default_task_backend
from jobs.models import Job, JobStatus
from tests import bgtasks_tasks as t
from tests.conftest import REPO, subprocess_env


def runs(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def log(tmp_path) -> Path:
    return tmp_path / "runs.jsonl"


def close_to(a: datetime, b: datetime, seconds: float = 5) -> bool:
    return abs((a - b).total_seconds()) < seconds


# -- the decorated object -------------------------------------------------------------------


def test_the_decorated_object_is_a_task_a_worker_finds_at_the_functions_path():
    assert isinstance(t.notify, BackgroundTask) and isinstance(t.notify, Task)
    assert t.notify.module_path == "tests.bgtasks_tasks.notify"
    assert import_string(t.notify.module_path) is t.notify
    assert resolve_task(t.notify.module_path) is t.notify  # what the worker does
    assert t.notify.background_name == "tests.bgtasks_tasks.notify"
    assert compat.get_task("tests.bgtasks_tasks.notify") is t.notify
    assert t.cleanup.background_name == "custom.cleanup"
    assert compat.registered_tasks()["custom.cleanup"] is t.cleanup
    assert (t.cleanup.queue_name, t.cleanup.priority) == ("emails", 7)
    assert t.notify.name == "tests.bgtasks_tasks.notify" and t.notify.task_function.__name__ == "notify"


def test_bare_and_called_decorator_forms_and_positional_name():
    def made_here():
        pass

    with pytest.raises(InvalidTask, match="module level"):
        background(made_here)  # Django's own rule: a worker must be able to import it
    with pytest.raises(InvalidTask, match="module level"):
        background("some.name", schedule=5)(made_here)


def test_async_functions_and_tasks_are_refused():
    async def coro():
        pass

    with pytest.raises(TypeError, match="async"):
        background(coro)
    with pytest.raises(TypeError, match="plain function"):
        background(t.notify)


def test_now_runs_inline_without_a_job(db, log):
    t.notify.now(str(log), 7, message="inline")
    assert runs(log) == [{"task": "notify", "args": [7], "kwargs": {"message": "inline"}}]
    assert not Job.objects.exists()


# -- calling enqueues ------------------------------------------------------------------------


def test_calling_enqueues_and_returns_the_job(db, log):
    job = t.notify(str(log), 7, message="hi")
    assert isinstance(job, Job) and job.pk
    job.refresh_from_db()
    assert job.task_path == "tests.bgtasks_tasks.notify"
    assert (job.args, job.kwargs) == ([str(log), 7], {"message": "hi"})
    assert (job.queue_name, job.priority, job.status) == ("default", 0, JobStatus.READY)
    assert close_to(job.run_after, timezone.now())
    info = job.meta["background_task"]
    assert info["name"] == "tests.bgtasks_tasks.notify"
    assert info["hash"] == compat.task_hash("tests.bgtasks_tasks.notify", [str(log), 7], {"message": "hi"})
    assert not runs(log)  # enqueued, not run


def test_the_hash_is_django_background_tasks_own():
    # background_task.models.TaskManager.new_task: sha1(name + json.dumps((args, kwargs), sort_keys=True))
    import hashlib

    expected = hashlib.sha1(b'app.tasks.f[[1, "a"], {"b": 2, "c": null}]').hexdigest()
    assert compat.task_hash("app.tasks.f", (1, "a"), {"c": None, "b": 2}) == expected


@pytest.mark.parametrize("schedule, offset", [
    (30, 30), (2.5, 2.5), (timedelta(minutes=2), 120), (0, 0), (None, 0), (-10, -10),
    ({"run_at": 45}, 45), ({"run_at": timedelta(seconds=90), "priority": 3}, 90),
])
def test_schedule_as_seconds_timedelta_or_dict(db, log, schedule, offset):
    before = timezone.now()
    job = t.notify(str(log), 1, schedule=schedule)
    assert close_to(job.run_after, before + timedelta(seconds=offset), 2)
    assert job.priority == (schedule.get("priority", 0) if isinstance(schedule, dict) else 0)


def test_schedule_as_datetime_aware_or_naive(db, log):
    when = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
    assert t.notify(str(log), 1, schedule=when).run_after == when
    with timezone.override("Europe/Berlin"):
        job = t.notify(str(log), 1, schedule=datetime(2031, 5, 4, 12, 0))  # naive: the current time zone
    assert job.run_after == datetime(2031, 5, 4, 10, 0, tzinfo=UTC)


@pytest.mark.sqlite_only
def test_without_use_tz_run_times_stay_naive(db, log):
    with override_settings(USE_TZ=False):
        job = t.notify(str(log), 1, schedule=datetime(2031, 5, 4, 12, 0), priority=None)
        job.refresh_from_db()
        assert job.run_after == datetime(2031, 5, 4, 12, 0) and job.priority == 0


def test_call_time_schedule_merges_over_the_decorators(db, log):
    before = timezone.now()
    job = t.later(str(log), "a", schedule={"priority": 4})  # run_at still the decorator's 60 s
    assert close_to(job.run_after, before + timedelta(seconds=60), 2) and job.priority == 4
    job = t.later(str(log), "b", schedule=0)  # as there: a falsy schedule sets nothing
    assert close_to(job.run_after, before + timedelta(seconds=60), 2)
    job = t.later(str(log), "b", schedule={"run_at": 0})  # this is "now"
    assert close_to(job.run_after, before, 2)
    job = t.cleanup(str(log), "c", priority=-3)  # priority kwarg beats the decorator's schedule
    assert job.priority == -3


def test_bad_schedules_raise(db, log):
    with pytest.raises(TypeError, match="unknown key 'when'"):
        t.notify(str(log), 1, schedule={"when": 3})
    with pytest.raises(TypeError, match="run_at"):
        t.notify(str(log), 1, schedule="soon")
    assert not Job.objects.exists()


def test_priority_is_clamped_to_djangos_range_and_kept_in_meta(db, log):
    job = t.notify(str(log), 1, priority=1000)
    assert job.priority == 100 and job.meta["background_task"]["priority"] == 1000
    assert t.notify(str(log), 1, priority=-1000).priority == -100


@override_settings(BACKGROUND_TASK_PRIORITY_ORDERING="ASC")
def test_ascending_priority_ordering_is_flipped_so_the_same_task_runs_first(run_worker, log):
    for token, priority in [("low-first", 1), ("middle", 5), ("last", 9)]:
        t.ordered(str(log), token, priority=priority)
    assert sorted(Job.objects.values_list("priority", flat=True)) == [-9, -5, -1]
    run_worker()
    assert [r["args"][0] for r in runs(log)] == ["low-first", "middle", "last"]


def test_queue_from_decorator_call_or_none(db, log):
    assert t.cleanup(str(log), 1).queue_name == "emails"
    assert t.cleanup(str(log), 1, queue="reports").queue_name == "reports"
    assert t.cleanup(str(log), 1, queue=None).queue_name == "default"
    with pytest.raises(InvalidTask, match="not valid"):
        t.notify(str(log), 1, queue="nowhere")
    assert Job.objects.count() == 3


def test_arguments_that_are_not_json_raise_and_write_nothing(db, log):
    with pytest.raises(TypeError, match="positional argument 1"):
        t.notify(str(log), object())
    assert not Job.objects.exists()


def test_a_task_not_importable_at_its_path_is_refused_at_enqueue(db):
    with pytest.raises(ImproperlyConfigured, match="importable as 'tests.bgtasks_tasks.plain'"):
        t.aliased(1)
    assert not Job.objects.exists()


def test_another_backend_is_refused_with_a_clear_message(db, log, monkeypatch):
    monkeypatch.setattr(compat, "_registry", dict(compat._registry))  # re-declaring replaces the name
    dummy = f"{FRAMEWORK}.backends.dummy.DummyBackend"
    with override_settings(TASKS={"default": {"BACKEND": dummy}, "db": settings.TASKS["default"]}):
        task = background(t.notify.task_function)
        with pytest.raises(ImproperlyConfigured, match="DatabaseBackend, not DummyBackend"):
            task(str(log), 1)


@override_settings(MAX_ATTEMPTS=7)
def test_max_attempts_setting_applies_to_these_jobs(db, log):
    assert attempt_limit(t.notify(str(log), 1), default_task_backend) == 7


def test_max_attempts_defaults_to_the_backends(db, log):
    assert attempt_limit(t.notify(str(log), 1), default_task_backend) == 3  # tests' OPTIONS


def test_verbose_name_and_creator_go_to_meta(db, log, django_user_model):
    user = django_user_model.objects.create(username="ann")
    job = t.notify(str(log), 1, verbose_name="Welcome mail for Ann", creator=user)
    job.refresh_from_db()
    assert job.meta["verbose_name"] == "Welcome mail for Ann"
    assert job.meta["creator"] == {"content_type": "auth.user", "object_id": user.pk, "repr": "ann"}
    other = django_user_model.objects.create(username="bob")
    t.notify(str(log), 2, creator=other)
    assert list(compat.created_by(user)) == [job]
    with pytest.raises(TypeError, match="saved model instance"):
        t.notify(str(log), 3, creator="ann")


# -- remove_existing_tasks and schedule actions -----------------------------------------------


def test_remove_existing_tasks_keeps_only_the_last_pending_one(db, log):
    first = t.refresh(str(log), "k")
    t.refresh(str(log), "other")  # other arguments: kept
    last = t.refresh(str(log), "k")
    assert set(Job.objects.values_list("pk", flat=True)) == {last.pk, first.pk + 1}


def test_remove_existing_tasks_per_call_and_never_running_jobs(db, log):
    running = t.notify(str(log), 1)
    Job.objects.filter(pk=running.pk).update(status=JobStatus.RUNNING)
    pending = t.notify(str(log), 1)
    t.notify(str(log), 1, remove_existing_tasks=False)
    assert Job.objects.count() == 3
    newest = t.notify(str(log), 1, remove_existing_tasks=True)
    assert set(Job.objects.values_list("pk", flat=True)) == {running.pk, newest.pk}
    assert pending.pk != newest.pk


def test_check_existing_enqueues_nothing_when_one_is_pending(db, log):
    first = t.notify(str(log), 1)
    assert t.notify(str(log), 1, schedule={"action": TaskSchedule.CHECK_EXISTING}) is None
    assert t.notify(str(log), 2, schedule={"action": TaskSchedule.CHECK_EXISTING}) is not None
    assert Job.objects.filter(args=[str(log), 1]).count() == 1 and Job.objects.filter(pk=first.pk).exists()


def test_reschedule_existing_moves_the_pending_one(db, log):
    first = t.notify(str(log), 1)
    assert t.notify(str(log), 1, schedule={"action": TaskSchedule.RESCHEDULE_EXISTING, "run_at": 600,
                                           "priority": 8}) is None
    first.refresh_from_db()
    assert close_to(first.run_after, timezone.now() + timedelta(seconds=600)) and first.priority == 8
    assert Job.objects.count() == 1


# -- run by a real worker ---------------------------------------------------------------------


def test_a_worker_runs_them_with_their_arguments_and_ignores_odd_return_values(run_worker, log):
    a = t.notify(str(log), 1, message="one")
    b = t.cleanup(str(log), "two")
    run_worker()
    assert runs(log) == [{"task": "cleanup", "args": ["two"], "kwargs": {}},  # priority 7 first
                         {"task": "notify", "args": [1], "kwargs": {"message": "one"}}]
    for job in (a, b):
        job.refresh_from_db()
        assert job.status == JobStatus.SUCCESSFUL and job.return_value is None


def test_django_api_still_works_on_them(run_worker, log):
    result = t.notify.enqueue(str(log), 5)
    run_worker()
    assert t.notify.get_result(result.id).status == "SUCCESSFUL"
    assert runs(log)[0]["args"] == [5]


# -- repeat -----------------------------------------------------------------------------------


def successor_of(job: Job) -> Job | None:
    job.refresh_from_db()
    next_id = job.meta["background_task"].get("next_job")
    return Job.objects.get(pk=next_id) if next_id else None


def test_repeat_enqueues_the_next_run_once(run_worker, log):
    job = t.notify(str(log), 1, repeat=compat.HOURLY)
    scheduled = job.run_after
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCESSFUL
    nxt = successor_of(job)
    assert nxt.status == JobStatus.READY and nxt.run_after == scheduled + timedelta(hours=1)
    assert (nxt.args, nxt.kwargs, nxt.task_path) == (job.args, job.kwargs, job.task_path)
    assert nxt.meta["background_task"]["previous_job"] == job.pk
    assert nxt.meta["background_task"]["repeat"] == 3600
    run_worker()  # not due: nothing more
    assert Job.objects.count() == 2 and len(runs(log)) == 1


@override_settings(MAX_ATTEMPTS=2)
def test_a_failed_run_does_not_end_the_repetition_and_retries_add_no_second_successor(run_worker, log):
    job = t.fails(str(log), "x", repeat=timedelta(minutes=5))
    run_worker()  # attempt 1 fails; a burst leaves the retry, due a moment later
    Job.objects.filter(pk=job.pk).update(run_after=timezone.now())
    run_worker()  # attempt 2 fails: no attempts left
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempts == 2 and len(runs(log)) == 2
    nxt = successor_of(job)
    assert nxt.status == JobStatus.READY and Job.objects.count() == 2


def test_repeat_skips_times_already_past_and_stops_at_repeat_until(run_worker, log):
    long_ago = timezone.now() - timedelta(hours=5, minutes=30)
    job = t.notify(str(log), 1, schedule=long_ago, repeat=compat.HOURLY,
                   repeat_until=long_ago + timedelta(hours=7))
    run_worker()
    nxt = successor_of(job)
    assert nxt.run_after == long_ago + timedelta(hours=6)  # the next slot after now
    # Workers whose clock is ahead claim the next runs at their time (moving run_after would be
    # a reschedule, which the next run follows).
    run_worker(clock=Clock(now=lambda: timezone.now() + timedelta(minutes=31)))
    last = successor_of(nxt)
    assert last.run_after == long_ago + timedelta(hours=7)  # repeat_until itself is still in
    run_worker(clock=Clock(now=lambda: timezone.now() + timedelta(minutes=91)))
    assert successor_of(last) is None and len(runs(log)) == 3


def test_no_run_is_scheduled_after_repeat_until(run_worker, log):
    now = timezone.now()
    job = t.notify(str(log), 1, repeat=60, repeat_until=now + timedelta(seconds=30))
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCESSFUL
    assert "next_job" in job.meta["background_task"] and job.meta["background_task"]["next_job"] is None
    assert Job.objects.count() == 1


def test_bad_repeat_values_raise(db, log):
    with pytest.raises(TypeError, match="repeat"):
        t.notify(str(log), 1, repeat="daily")
    with pytest.raises(TypeError, match="repeat_until"):
        t.notify(str(log), 1, repeat=60, repeat_until="tomorrow")


# -- process_tasks options from django-background-tasks ----------------------------------------


def test_process_tasks_log_std_sends_prints_to_the_log(workers):
    t.shout("hi there")
    proc = workers.start("--log-std", "--burst")
    assert proc.wait(60) == 0
    out = workers.output(proc)
    assert "INFO jobs.output shouting hi there" in out, out


def test_process_tasks_dev_is_reload(workers, log):
    """django-background-tasks' auto-reload option: ``--reload`` (see test_lifecycle); a worker that
    ends by itself (here ``--burst``) ends the reloading parent too."""
    t.notify(str(log), "dev")
    proc = workers.start("--dev", "--burst")
    assert proc.wait(60) == 0, workers.output(proc)
    out = workers.output(proc)
    assert "reload: started the worker" in out and "reload: the worker exited with status 0; exiting" in out
    assert [r["task"] for r in runs(log)] == ["notify"]


def test_process_tasks_accepts_the_old_unit_file_options(transactional_db, log):
    """``--duration``, ``--sleep``, ``--queue``, ``--log-std`` together, as in a unit file."""
    t.cleanup(str(log), "emails queue")
    t.notify(str(log), "default queue")
    cmd = [sys.executable, str(REPO / "manage.py"), "process_tasks", "--duration", "1", "--sleep", "0.2",
           "--queue", "emails", "--log-std", "--no-scheduler"]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [r["task"] for r in runs(log)] == ["cleanup"]
