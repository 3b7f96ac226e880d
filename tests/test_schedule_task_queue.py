"""A SCHEDULED_JOBS entry without ``queue_name`` runs on its task's own queue, and check holds it to QUEUES."""

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from jobs.models import Job
from scheduler.checks import check_scheduled_jobs
from scheduler.conf import scheduled_jobs
from scheduler.models import Schedule
from scheduler.runner import Scheduler
from scheduler.sync import sync_schedules


@pytest.mark.django_db
def test_an_entry_without_queue_name_enqueues_on_its_tasks_queue():
    entry = {"task": "tests.kit_tasks.send_mail", "cron": "* * * * *", "args": ["a@example.com"]}
    with override_settings(SCHEDULED_JOBS={"mail": entry}):
        assert [e.queue_name for e in scheduled_jobs().entries] == ["emails"]
        assert check_scheduled_jobs() == []
        sync_schedules(timezone.now())
        fire_time = Schedule.objects.get(name="mail").next_fire_at
        Scheduler().tick(fire_time + timedelta(seconds=1))
    assert list(Job.objects.values_list("task_path", "queue_name")) == [("tests.kit_tasks.send_mail", "emails")]


@pytest.mark.django_db
def test_a_given_queue_name_still_wins():
    entry = {"task": "tests.kit_tasks.send_mail", "cron": "* * * * *", "queue_name": "reports"}
    with override_settings(SCHEDULED_JOBS={"mail": entry}):
        assert [e.queue_name for e in scheduled_jobs().entries] == ["reports"]


@pytest.mark.django_db  # model checks open a connection
def test_check_refuses_an_entry_whose_tasks_own_queue_is_not_served():
    from django.conf import settings

    tasks = {"default": {**settings.TASKS["default"], "QUEUES": ["default"]}}  # "emails" no longer served
    entry = {"task": "tests.kit_tasks.send_mail", "cron": "* * * * *"}
    with override_settings(SCHEDULED_JOBS={"mail": entry}, TASKS=tasks):
        errors = check_scheduled_jobs()
    assert [(e.id, e.obj) for e in errors] == [("scheduler.E006", "SCHEDULED_JOBS['mail']['queue_name']")]
    assert "'emails' is not in TASKS['default']['QUEUES']" in errors[0].msg
