"""A task runs unchanged outside a worker: under ``task.call()`` and Django's ImmediateBackend,
``set_progress()`` does nothing and ``cancel_requested()`` is False; ``enqueue_many`` works there."""

import pytest
from django.test import override_settings

import jobs
from jobs.framework import (
    FRAMEWORK,  # django.tasks on 6.x, django_tasks on the backport
    TaskResultStatus,
    task_backends,
)
from tests import kit_tasks

IMMEDIATE = {"default": {"BACKEND": f"{FRAMEWORK}.backends.immediate.ImmediateBackend",
                         "QUEUES": ["default", "emails"]}}


def test_task_call_with_progress_and_cancel_requested():
    assert kit_tasks.reports.call(3) is False


def test_immediate_backend_runs_a_task_that_reports_progress():
    with override_settings(TASKS=IMMEDIATE):
        result = kit_tasks.reports.using().enqueue(2)
        assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
        assert result.return_value is False


def test_enqueue_many_under_the_immediate_backend_runs_each_call():
    with override_settings(TASKS=IMMEDIATE):
        results = jobs.enqueue_many(kit_tasks.send_mail, [(("a@example.com",), {}), ((), {"to": "b@example.com"})])
        assert [r.return_value for r in results] == ["a@example.com", "b@example.com"]
        assert type(task_backends["default"]).__name__ == "ImmediateBackend"
        with pytest.raises(TypeError, match=r"send_mail: call 0 must be an \(args, kwargs\) pair"):
            jobs.enqueue_many(kit_tasks.send_mail, ["a@example.com"])
