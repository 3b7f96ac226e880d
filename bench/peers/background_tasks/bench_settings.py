"""Minimal Django project for django-background-tasks (settings left at the library's defaults)."""

from benchcommon import database_from_env

SECRET_KEY = "bench-not-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "background_task", "bench_app"]
DATABASES = {"default": database_from_env()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
