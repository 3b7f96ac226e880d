"""Schedules made in the admin (SCHEDULER_ADMIN_TASKS): the form checks as the settings do,
only listed tasks, changes take effect in running schedulers, every change in the history."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Permission
from django.test import override_settings
from django.utils import timezone

from jobs.models import Job
from scheduler.conf import problems
from scheduler.models import Schedule, ScheduleRun
from scheduler.runner import Scheduler
from scheduler.sync import sync_schedules
from tests.conftest import wait_for
from tests.test_scheduler_processes import scheduler_env

CHANGELIST = "/admin/scheduler/schedule/"
ADD = CHANGELIST + "add/"
ALLOWED = ["tests.tasks.add", "tests.tasks.noop"]
SETTINGS_ENTRY = {"nightly-settings": {"task": "tests.tasks.noop", "cron": "0 3 * * *"}}

allowed = override_settings(SCHEDULER_ADMIN_TASKS=ALLOWED, SCHEDULED_JOBS=SETTINGS_ENTRY)


def form(**fields) -> dict:
    data = {"name": "hourly-sum", "enabled": "on", "task": "tests.tasks.add", "cron": "5 * * * *",
            "timezone": "Europe/Berlin", "misfire": "once", "overlap": "on", "args": "[1, 2]", "kwargs": "{}",
            "queue_name": "", "priority": "0"}
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def errors_of(response) -> dict[str, list[str]]:
    adminform = response.context["adminform"]
    return {field: list(messages) for field, messages in adminform.form.errors.items()}


def settings_message(key: str, raw: dict) -> str:
    """The message ``manage.py check`` gives for the same value in a SCHEDULED_JOBS entry."""
    (problem,) = [p for p in problems("x", {"task": "tests.tasks.add", "cron": "5 * * * *", **raw}) if p.key == key]
    return problem.message


# -- adding ----------------------------------------------------------------------------------

@pytest.mark.django_db
@allowed
def test_a_schedule_made_in_the_admin_is_stored_runs_and_is_in_the_history(admin_client):
    assert admin_client.get(ADD).status_code == 200
    response = admin_client.post(ADD, form())
    assert response.status_code == 302, errors_of(response)
    schedule = Schedule.objects.get(name="hourly-sum")
    assert schedule.made_in_admin and not schedule.in_settings and schedule.active
    assert (schedule.task, schedule.cron, schedule.timezone, schedule.args, schedule.kwargs) == (
        "tests.tasks.add", "5 * * * *", "Europe/Berlin", [1, 2], {})
    assert schedule.queue_name == "default"  # empty: the task's own queue
    assert schedule.next_fire_at > timezone.now() and schedule.next_fire_at.minute == 5
    assert LogEntry.objects.get(object_id=str(schedule.pk)).action_flag == ADDITION
    listed = admin_client.get(CHANGELIST).content.decode()
    local = schedule.next_fire_at.astimezone(schedule.cron_schedule().zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    assert local in listed and "not in settings" not in listed and ">Admin<" in listed

    # A scheduler fires it as it fires the settings' entries.
    Scheduler().tick(schedule.next_fire_at + timedelta(milliseconds=100))
    run = ScheduleRun.objects.get(schedule=schedule)
    assert run.job.task_path == "tests.tasks.add" and run.job.args == [1, 2]


@pytest.mark.django_db
@allowed
@pytest.mark.parametrize("field, value, raw", [
    ("cron", "61 * * * *", {"cron": "61 * * * *"}),
    ("cron", "every day", {"cron": "every day"}),
    ("timezone", "Mars/Olympus", {"timezone": "Mars/Olympus"}),
    ("args", '{"a": 1}', {"args": {"a": 1}}),
    ("kwargs", "[1]", {"kwargs": [1]}),
    ("queue_name", "nowhere", {"queue_name": "nowhere"}),
    ("priority", "500", {"priority": 500}),
])
def test_the_form_refuses_what_the_settings_refuse_with_the_same_message(admin_client, field, value, raw):
    response = admin_client.post(ADD, form(**{field: value}))
    assert response.status_code == 200 and not Schedule.objects.exists()
    assert settings_message(field, raw) in errors_of(response)[field]


@pytest.mark.django_db
@allowed
@pytest.mark.parametrize("field", ["args", "kwargs"])
def test_arguments_that_are_not_json_are_refused_on_their_field(admin_client, field):
    response = admin_client.post(ADD, form(**{field: "[1, 2"}))
    (message,) = errors_of(response)[field]
    assert message.startswith(f"{field} '[1, 2' is not JSON") and not Schedule.objects.exists()


@pytest.mark.django_db
@allowed
def test_a_name_used_by_a_settings_entry_is_refused(admin_client):
    response = admin_client.post(ADD, form(name="nightly-settings"))
    assert errors_of(response)["name"] == ["'nightly-settings' is the name of a SCHEDULED_JOBS entry: choose "
                                           "another name."]
    assert not Schedule.objects.exists()


@pytest.mark.django_db
@allowed
@pytest.mark.parametrize("path", ["os.system", "tests.tasks.always_fails", "tests.tasks.add.__class__"])
def test_a_task_outside_the_list_is_refused_even_in_a_crafted_post_by_a_superuser(admin_client, path):
    response = admin_client.post(ADD, form(task=path))
    assert response.status_code == 200 and "task" in errors_of(response)
    assert not Schedule.objects.exists()
    page = admin_client.get(ADD).content.decode()
    assert 'value="tests.tasks.add"' in page and "always_fails" not in page  # the choices are the list


@pytest.mark.django_db
@allowed
def test_a_task_taken_off_the_list_is_not_enqueued_by_its_schedule(admin_client):
    admin_client.post(ADD, form(cron="* * * * *"))
    schedule = Schedule.objects.get()
    with override_settings(SCHEDULER_ADMIN_TASKS=["tests.tasks.noop"]):
        Scheduler().tick(schedule.next_fire_at)
        run = ScheduleRun.objects.get()
        assert run.job_id is None and "not in SCHEDULER_ADMIN_TASKS" in run.error
        response = admin_client.post(f"{CHANGELIST}{schedule.pk}/change/", form(priority="5"))
        assert "not in SCHEDULER_ADMIN_TASKS" in " ".join(errors_of(response)["task"])
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_no_add_page_without_a_list_of_tasks(admin_client):
    assert admin_client.get(ADD).status_code == 403
    assert admin_client.post(ADD, form()).status_code == 403
    assert not Schedule.objects.exists()


# -- permissions -------------------------------------------------------------------------------

@pytest.mark.django_db
@allowed
@pytest.mark.parametrize("perms, add, change, delete", [
    (["view_schedule"], 403, False, 403),
    (["view_schedule", "add_schedule"], 302, False, 403),
    (["view_schedule", "change_schedule"], 403, True, 403),
    (["view_schedule", "delete_schedule"], 403, False, 200),
])
def test_adding_changing_and_deleting_need_their_permissions(client, django_user_model, perms, add, change, delete):
    user = django_user_model.objects.create_user("ops", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=perms, content_type__app_label="scheduler"))
    client.force_login(user)
    existing = Schedule.objects.create(name="made", task="tests.tasks.add", cron="5 * * * *", timezone="UTC",
                                       made_in_admin=True, in_settings=False)
    assert client.post(ADD, form(name="new")).status_code == add
    client.post(f"{CHANGELIST}{existing.pk}/change/", form(name="made", cron="7 * * * *"))
    existing.refresh_from_db()
    assert (existing.cron == "7 * * * *") is change
    assert client.get(f"{CHANGELIST}{existing.pk}/delete/").status_code == delete


# -- changing and deleting ------------------------------------------------------------------------

@pytest.mark.django_db
@allowed
def test_changing_a_schedule_made_here_moves_its_next_fire_time_and_is_in_the_history(admin_client):
    admin_client.post(ADD, form())
    schedule = Schedule.objects.get()
    Schedule.objects.filter(pk=schedule.pk).update(last_fire_at=datetime(2025, 1, 1, tzinfo=UTC))
    response = admin_client.post(f"{CHANGELIST}{schedule.pk}/change/", form(cron="*/10 * * * *", timezone="UTC",
                                                                            kwargs='{"b": 3}', args="[]"))
    assert response.status_code == 302, errors_of(response)
    schedule.refresh_from_db()
    assert schedule.cron == "*/10 * * * *" and schedule.kwargs == {"b": 3} and schedule.next_fire_at.minute % 10 == 0
    assert schedule.last_fire_at == datetime(2025, 1, 1, tzinfo=UTC)  # the scheduler's column is not written back
    change = LogEntry.objects.get(object_id=str(schedule.pk), action_flag=CHANGE)
    message = change.get_change_message().lower()
    assert "cron" in message and "timezone" in message and "kwargs" in message and "priority" not in message


@pytest.mark.django_db
@allowed
def test_the_name_is_fixed_once_made(admin_client):
    admin_client.post(ADD, form())
    schedule = Schedule.objects.get()
    admin_client.post(f"{CHANGELIST}{schedule.pk}/change/", form(name="renamed"))
    assert Schedule.objects.get().name == "hourly-sum"


@pytest.mark.django_db
@allowed
def test_a_schedule_made_here_can_be_deleted_a_settings_entry_only_switched_and_run(admin_client):
    sync_schedules(timezone.now())
    from_settings = Schedule.objects.get(name="nightly-settings")
    admin_client.post(ADD, form())
    made = Schedule.objects.get(name="hourly-sum")

    # The settings entry: its definition is read-only, its switch works, it cannot be deleted.
    page = admin_client.get(f"{CHANGELIST}{from_settings.pk}/change/").content.decode()
    assert 'name="cron"' not in page and 'name="enabled"' in page and "Run now</button>" in page
    admin_client.post(f"{CHANGELIST}{from_settings.pk}/change/", {"cron": "* * * * *"})  # switched off, cron ignored
    from_settings.refresh_from_db()
    assert from_settings.cron == "0 3 * * *" and not from_settings.enabled
    assert admin_client.get(f"{CHANGELIST}{from_settings.pk}/delete/").status_code == 403
    admin_client.post(CHANGELIST, {"action": "delete_selected", "post": "yes",
                                   "_selected_action": [from_settings.pk, made.pk]})
    assert list(Schedule.objects.values_list("name", flat=True)) == ["nightly-settings"]
    assert LogEntry.objects.filter(object_id=str(made.pk), action_flag=DELETION).exists()


@pytest.mark.django_db
@allowed
def test_run_now_is_in_the_history(admin_client):
    admin_client.post(ADD, form())
    schedule = Schedule.objects.get()
    admin_client.post(f"{CHANGELIST}{schedule.pk}/run-now/")
    job = Job.objects.get()
    assert LogEntry.objects.get(object_id=str(schedule.pk), action_flag=CHANGE).change_message == \
        f"Run now: enqueued job #{job.pk}"


@pytest.mark.django_db
@allowed
def test_the_settings_sync_leaves_schedules_made_here_alone(admin_client):
    admin_client.post(ADD, form())
    made = Schedule.objects.get(name="hourly-sum")
    sync_schedules(timezone.now())
    made.refresh_from_db()
    assert made.active and made.task == "tests.tasks.add"
    # An entry taking up the name later does not take the schedule over.
    with override_settings(SCHEDULED_JOBS={"hourly-sum": {"task": "tests.tasks.noop", "cron": "0 1 * * *"}}):
        sync_schedules(timezone.now())
    made.refresh_from_db()
    assert made.active and made.task == "tests.tasks.add" and made.cron == "5 * * * *"


# -- three workers running ------------------------------------------------------------------------

TICKS = 4


def test_a_schedule_made_and_changed_while_three_workers_run_fires_exactly_once_per_fire_time(workers,
                                                                                                 admin_client):
    env = scheduler_env({})
    env["SCHEDULER_TEST_ADMIN_TASKS"] = json.dumps(ALLOWED)
    procs = [workers.manage("process_tasks", env=env),
             workers.manage("process_tasks", "--concurrency", "2", env=env),
             workers.manage("process_tasks", env=env)]
    wait_for(lambda: all("schedules synced from settings" in workers.output(p) for p in procs), timeout=30,
             message="every worker's scheduler to start")
    with override_settings(SCHEDULER_ADMIN_TASKS=ALLOWED):
        made_at = timezone.now()
        response = admin_client.post(ADD, form(name="every-two-seconds", task="tests.tasks.noop",
                                               cron="* * * * * */2", timezone="UTC", args="[]"))
        assert response.status_code == 302
    schedule = Schedule.objects.get(name="every-two-seconds")
    wait_for(lambda: ScheduleRun.objects.filter(schedule=schedule).count() >= TICKS, timeout=30,
             message=f"{TICKS} fire times of the new schedule")
    # A change made in the admin reaches the running schedulers too: every 3 s from now on.
    with override_settings(SCHEDULER_ADMIN_TASKS=ALLOWED):
        changed_at = timezone.now()
        response = admin_client.post(f"{CHANGELIST}{schedule.pk}/change/", form(
            name="every-two-seconds", task="tests.tasks.noop", cron="* * * * * */3", timezone="UTC", args="[]"))
        assert response.status_code == 302
    wait_for(lambda: ScheduleRun.objects.filter(schedule=schedule, fire_time__gt=changed_at).count() >= TICKS,
             timeout=40, message=f"{TICKS} fire times after the change")
    Schedule.objects.filter(pk=schedule.pk).update(enabled=False)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(20) == 0, workers.output(proc)
        assert "Traceback" not in workers.output(proc)

    runs = list(ScheduleRun.objects.filter(schedule=schedule).order_by("fire_time"))
    before = [run.fire_time for run in runs if run.fire_time <= changed_at]
    after = [run.fire_time for run in runs if run.fire_time > changed_at]
    # Noticed within a few seconds (a scheduler rereads the rows at least every 5 s) ...
    assert before[0] - made_at < timedelta(seconds=8), (made_at, before[0])
    assert after[0] - changed_at < timedelta(seconds=8), (changed_at, after[0])
    # ... then every fire time once: no gap, no duplicate, one job each.
    assert [b - a for a, b in pairwise(before)] == [timedelta(seconds=2)] * (len(before) - 1)
    assert [b - a for a, b in pairwise(after)] == [timedelta(seconds=3)] * (len(after) - 1)
    assert all(t.second % 3 == 0 for t in after) and len(set(t for t in before + after)) == len(runs)
    jobs = Job.objects.filter(meta__schedule="every-two-seconds")
    assert sorted(jobs.values_list("pk", flat=True)) == sorted(run.job_id for run in runs)
    assert all(run.error == "" and not run.skipped for run in runs)


# -- manage.py check -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    ("tests.tasks.add", "SCHEDULER_ADMIN_TASKS must be a list of dotted task paths, got str"),
    (["tests.tasks.nope"], "SCHEDULER_ADMIN_TASKS entry 'tests.tasks.nope': "),
    ([3], "SCHEDULER_ADMIN_TASKS entry 3: must be the dotted path of a task, got 3"),
])
def test_check_names_what_is_wrong_with_the_list(value, message):
    from scheduler.checks import check_admin_tasks

    with override_settings(SCHEDULER_ADMIN_TASKS=value):
        (error,) = check_admin_tasks()
    assert error.id == "scheduler.E011" and error.msg.startswith(message)
    with override_settings(SCHEDULER_ADMIN_TASKS=ALLOWED):
        assert check_admin_tasks() == []
