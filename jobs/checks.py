"""App-level system checks. Backend OPTIONS are checked by ``DatabaseBackend.check()``,
which Django's tasks framework runs as part of ``manage.py check``."""

from django.core import checks


@checks.register(checks.Tags.compatibility)
def check_framework_app(app_configs=None, **kwargs):
    """On Django 5.2 the backport must be an installed app, or its checks never run."""
    import django
    from django.conf import settings

    if django.VERSION < (6, 0) and "django_tasks" not in settings.INSTALLED_APPS:
        return [checks.Error("Django < 6.0 needs 'django_tasks' (the django-tasks backport) in INSTALLED_APPS",
                             id="jobs.E010")]
    return []


@checks.register()
def check_task_modules(app_configs=None, **kwargs):
    """``JOBS_TASK_MODULES``: a list of dotted module names (see ``jobs.resolve``)."""
    from .resolve import SETTING, listed_modules

    _usable, problems = listed_modules()
    return [checks.Error(problem, hint="List the modules (outside installed apps) whose tasks workers may import.",
                         obj=SETTING, id="jobs.E003") for problem in problems]
