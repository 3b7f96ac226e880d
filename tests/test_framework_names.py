"""jobs.framework takes the backport's invalid-task exception under either name: InvalidTaskError
(django-tasks 0.12) or InvalidTask (its later releases, as Django names it)."""

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

# A stand-in backport made of Django's own objects, with django.tasks hidden, then jobs.framework.
PROGRAM = textwrap.dedent("""
    import sys, types
    import django.tasks, django.tasks.base, django.tasks.backends.base, django.tasks.exceptions, django.tasks.signals
    real = django.tasks
    def module(name, **attributes):
        made = types.ModuleType(name)
        made.__dict__.update(attributes)
        sys.modules[name] = made
        return made
    names = ["DEFAULT_TASK_BACKEND_ALIAS", "DEFAULT_TASK_QUEUE_NAME", "TaskContext", "TaskResult", "TaskResultStatus",
             "default_task_backend", "task", "task_backends"]
    module("django_tasks", **{name: getattr(real, name) for name in names})
    module("django_tasks.base", Task=django.tasks.base.Task, TaskError=django.tasks.base.TaskError)
    module("django_tasks.backends")
    module("django_tasks.backends.base", BaseTaskBackend=django.tasks.backends.base.BaseTaskBackend)
    class Refused(Exception):
        pass
    module("django_tasks.exceptions", TaskResultDoesNotExist=django.tasks.exceptions.TaskResultDoesNotExist,
           **{sys.argv[1]: Refused})
    module("django_tasks.signals", task_enqueued=None, task_finished=None, task_started=None)
    sys.modules["django.tasks"] = None  # "import django.tasks" now fails, as on Django 5.2
    import jobs.framework
    assert jobs.framework.FRAMEWORK == "django_tasks", jobs.framework.FRAMEWORK
    assert jobs.framework.InvalidTask is Refused
    print("ok")
""")


@pytest.mark.needs_django(6, 0)  # the stand-in is made of django.tasks; on 5.2 the real backport is in use
@pytest.mark.parametrize("name", ["InvalidTaskError", "InvalidTask"])
def test_the_backports_exception_under_either_name(name):
    done = subprocess.run([sys.executable, "-c", PROGRAM, name], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
