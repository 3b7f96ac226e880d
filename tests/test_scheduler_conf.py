"""SCHEDULED_JOBS: defaults, and a ``manage.py check`` error naming the entry and the key for each mistake."""

import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from scheduler.checks import check_scheduled_jobs
from scheduler.conf import ScheduleEntry, scheduled_jobs
from tests.conftest import REPO, subprocess_env

GOOD = {"task": "tests.tasks.add", "cron": "*/5 * * * *"}


def errors_for(entry, name="nightly"):
    with override_settings(SCHEDULED_JOBS={name: entry}):
        return check_scheduled_jobs()


def test_defaults_fill_in_everything_but_task_and_cron():
    with override_settings(SCHEDULED_JOBS={"nightly": GOOD}, TIME_ZONE="Europe/Berlin"):
        parsed = scheduled_jobs()
    assert parsed.entries == (ScheduleEntry(name="nightly", task="tests.tasks.add", cron="*/5 * * * *", args=(),
                                            kwargs={}, queue_name="default", priority=0, timezone="Europe/Berlin",
                                            misfire="once", overlap=True),)
    assert parsed.problems == ()


def test_every_key_accepted():
    entry = {**GOOD, "cron": "@daily", "args": [1, 2], "kwargs": {}, "queue_name": "reports", "priority": -100,
             "timezone": "America/New_York", "misfire": "all", "overlap": False}
    assert errors_for(entry) == []
    with override_settings(SCHEDULED_JOBS={"nightly": entry}):
        assert scheduled_jobs().entries[0].overlap is False


def test_the_projects_own_example_schedules_pass():
    assert check_scheduled_jobs() == []


@pytest.mark.parametrize("entry, where, fragment, check_id", [
    ({**GOOD, "cron": "61 * * * *"}, "['cron']", "not a valid cron expression", "scheduler.E003"),
    ({**GOOD, "cron": "* * * *"}, "['cron']", "has 4 fields", "scheduler.E003"),
    ({"task": "tests.tasks.add"}, "['cron']", "is required", "scheduler.E003"),
    ({**GOOD, "task": "tests.tasks.nope"}, "['task']", "does not import", "scheduler.E002"),
    ({**GOOD, "task": "no_such_module.task"}, "['task']", "outside every installed app", "scheduler.E002"),
    ({**GOOD, "task": "venv.__main__.main"}, "['task']", "names a __main__ module", "scheduler.E002"),
    ({**GOOD, "task": "tests.tasks.plain_function"}, "['task']", "not a task", "scheduler.E002"),
    ({**GOOD, "schedule": "daily"}, "['schedule']", "unknown key", "scheduler.E009"),
    ({**GOOD, "timezone": "Europe/Atlantis"}, "['timezone']", "unknown time zone", "scheduler.E004"),
    ({**GOOD, "args": [object()]}, "['args']", "not JSON-serialisable", "scheduler.E005"),
    ({**GOOD, "args": "1, 2"}, "['args']", "must be a list", "scheduler.E005"),
    ({**GOOD, "kwargs": {"when": {1, 2}}}, "['kwargs']", "not JSON-serialisable", "scheduler.E005"),
    ({**GOOD, "kwargs": [1]}, "['kwargs']", "must be a dict", "scheduler.E005"),
    ({**GOOD, "queue_name": "nowhere"}, "['queue_name']", "not in TASKS['default']['QUEUES']", "scheduler.E006"),
    ({**GOOD, "priority": 101}, "['priority']", "from -100 to 100", "scheduler.E007"),
    ({**GOOD, "misfire": "never"}, "['misfire']", "must be one of", "scheduler.E008"),
    ({**GOOD, "overlap": "false"}, "['overlap']", "must be True or False, got 'false'", "scheduler.E010"),
    ({**GOOD, "overlap": 0}, "['overlap']", "must be True or False, got 0", "scheduler.E010"),
    ({**GOOD, "overlap": None}, "['overlap']", "must be True or False, got None", "scheduler.E010"),
    ({**GOOD, "overlaps": False}, "['overlaps']", "unknown key", "scheduler.E009"),
    ("*/5 * * * *", "", "must be a dict", "scheduler.E001"),
])
@pytest.mark.django_db  # model checks (JSONField support) open a connection
def test_each_mistake_is_an_error_naming_entry_and_key(entry, where, fragment, check_id):
    errors = errors_for(entry)
    assert len(errors) == 1, errors
    error = errors[0]
    assert error.obj == f"SCHEDULED_JOBS['nightly']{where}" and fragment in error.msg and error.id == check_id
    with override_settings(SCHEDULED_JOBS={"nightly": entry}), pytest.raises(SystemCheckError) as raised:
        call_command("check")
    assert f"SCHEDULED_JOBS['nightly']{where}" in str(raised.value) and fragment in str(raised.value)


def test_several_mistakes_are_all_reported():
    errors = errors_for({"task": "tests.tasks.nope", "cron": "bad", "colour": "red"})
    assert sorted(e.obj for e in errors) == ["SCHEDULED_JOBS['nightly']['colour']", "SCHEDULED_JOBS['nightly']['cron']",
                                             "SCHEDULED_JOBS['nightly']['task']"]


def test_setting_that_is_not_a_dict():
    with override_settings(SCHEDULED_JOBS=["nightly"]):
        errors = check_scheduled_jobs()
    assert len(errors) == 1 and errors[0].obj == "SCHEDULED_JOBS" and "must be a dict" in errors[0].msg


def test_manage_py_check_fails_without_a_traceback():
    env = subprocess_env(DJANGO_SETTINGS_MODULE="tests.test_scheduler_settings",
                         SCHEDULER_TEST_BASE_SETTINGS=os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings"),
                         SCHEDULER_TEST_JOBS='{"nightly-report": {"task": "tests.tasks.add", "cron": "0 3 * * * * *"}}')
    proc = subprocess.run([sys.executable, str(REPO / "manage.py"), "check"], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "SCHEDULED_JOBS['nightly-report']['cron']" in proc.stderr and "has 7 fields" in proc.stderr
    assert "Traceback" not in proc.stderr
