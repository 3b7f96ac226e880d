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
