"""Minimal Django project for procrastinate through its Django integration (PostgreSQL only)."""

from benchcommon import database_from_env

SECRET_KEY = "bench-not-secret"
DEBUG = False
USE_TZ = True
# procrastinate.contrib.django provides the schema (as Django migrations),
# the ``procrastinate`` management command and autodiscovery of <app>.tasks.
INSTALLED_APPS = ["procrastinate.contrib.django", "bench_app"]
DATABASES = {"default": database_from_env()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
