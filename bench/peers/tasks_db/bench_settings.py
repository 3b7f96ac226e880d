"""Minimal Django project for django-tasks-db, the database backend of Django's ``django.tasks``."""

from benchcommon import database_from_env

SECRET_KEY = "bench-not-secret"
DEBUG = False  # db_worker's --reload defaults to DEBUG
USE_TZ = True
INSTALLED_APPS = ["django_tasks_db", "bench_app"]
DATABASES = {"default": database_from_env()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
