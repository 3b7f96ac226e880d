"""Minimal Django project for django-q2 with its ORM (database) broker and one worker process."""

from benchcommon import database_from_env

SECRET_KEY = "bench-not-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["django_q", "bench_app"]
DATABASES = {"default": database_from_env()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
Q_CLUSTER = {
    "name": "bench",
    "orm": "default",  # the ORM broker: the queue lives in the django_q_ormq table
    "workers": 1,  # one worker process (default: one per CPU)
    # Only to silence django-q2's "retry and timeout are misconfigured"
    # warning (timeout must be below retry); neither matters for no-op jobs.
    "timeout": 60,
    "retry": 120,
}
