"""The sample site's settings: no TASKS setting (the database backend is the default)."""

import json
import os

import django

SECRET_KEY = "sample-site-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "jobs", "shop"]
if django.VERSION < (6, 0):  # Django 5.2 LTS: the tasks framework is the django-tasks backport, an app too
    INSTALLED_APPS.insert(0, "django_tasks")
ROOT_URLCONF = "sample_site.urls"
USE_TZ = True
# The database under test comes from the suite that runs this site (tests/test_sample_site.py).
DATABASES = {"default": json.loads(os.environ["SAMPLE_DATABASE"])}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend"}}  # Django 6.1; tests use locmem
