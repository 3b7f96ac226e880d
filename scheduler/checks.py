"""``manage.py check`` errors for ``SCHEDULED_JOBS``: each names the entry and the key."""

from django.core import checks

from .conf import admin_task_problems, all_problems

# One id per kind of problem, so a project can silence one kind (SILENCED_SYSTEM_CHECKS).
CHECK_IDS = {
    None: "scheduler.E001",  # the setting or the entry as a whole
    "task": "scheduler.E002",
    "cron": "scheduler.E003",
    "timezone": "scheduler.E004",
    "args": "scheduler.E005",
    "kwargs": "scheduler.E005",
    "queue_name": "scheduler.E006",
    "priority": "scheduler.E007",
    "misfire": "scheduler.E008",
    "overlap": "scheduler.E010",
}
UNKNOWN_KEY_ID = "scheduler.E009"
ADMIN_TASKS_ID = "scheduler.E011"


@checks.register()
def check_scheduled_jobs(app_configs=None, **kwargs):
    errors = []
    for problem in all_problems():
        check_id = CHECK_IDS.get(problem.key, UNKNOWN_KEY_ID)
        errors.append(checks.Error(
            problem.message,
            hint="See the README's Schedules section for every key and its default.",
            obj=problem.where if problem.name else "SCHEDULED_JOBS",
            id=check_id,
        ))
    return errors


@checks.register()
def check_admin_tasks(app_configs=None, **kwargs):
    return [checks.Error(message, hint="List the dotted paths of tasks (jobs.task) that may be scheduled from the "
                                       "admin; see the README's Schedules section.",
                         obj="SCHEDULER_ADMIN_TASKS", id=ADMIN_TASKS_ID)
            for message in admin_task_problems()]
