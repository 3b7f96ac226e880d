"""Settings of the host project.

Everything a deployment changes comes from the environment: ``DATABASE_URL``
(absent: a SQLite file next to this repository), ``DJANGO_SECRET_KEY``,
``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS`` and ``JOBS_METRICS_TOKEN``. A settings
module that does ``from queue_project.settings import *`` can override any of it.
"""

import os
from pathlib import Path

import dj_database_url
import django

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() in {"1", "true", "yes", "on"}
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
    SECRET_KEY = "insecure-local-development-key-do-not-use-in-production"
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "jobs",
    "scheduler",
    "example",
]
if django.VERSION < (6, 0):
    # Django 5.2 LTS: the tasks framework comes from the django-tasks backport.
    INSTALLED_APPS.insert(0, "django_tasks")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "queue_project.urls"
WSGI_APPLICATION = "queue_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite is opened so that the web server and several worker processes can share
# one file: WAL lets readers run beside the one writer, the busy timeout makes a
# writer wait for the lock instead of failing, and IMMEDIATE transactions take the
# write lock when a transaction starts, so two writers never deadlock on upgrade.
SQLITE_OPTIONS = {
    "timeout": 20,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
}


# PostgreSQL connections give up on a server that has gone silent (a network partition,
# a dead host) instead of waiting on TCP's defaults: psycopg's 130 s to connect, ~15
# minutes of retransmissions for a query sent, forever for one waiting on an answer or a
# LISTEN waiting for notifications. A worker cut off from the database then notices
# within ~25 s and is back at work seconds after the network heals. Only silence trips
# them: a slow query keeps its connection, as the server's TCP acknowledges all along.
# These are libpq's own parameters (nothing reaches the server, so PgBouncer is fine); a
# URL's query string (``?connect_timeout=3``) overrides any of them.
POSTGRES_OPTIONS = {
    "connect_timeout": 10,  # seconds
    "keepalives": 1,  # an idle connection is probed after 10 s, every 5 s, dead after 3 missed
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25000,  # ms that sent data may stay unacknowledged
}


# MySQL and MariaDB: 4-byte UTF-8 (emoji in arguments) and READ COMMITTED, which is Django's
# default but said here, since the queue's statements count on it (REPEATABLE READ takes gap
# locks: claims would block each other; ``jobs.W030`` warns of it). A URL's query string
# (``?isolation_level=...``) overrides any of them.
MYSQL_OPTIONS = {
    "charset": "utf8mb4",
    "isolation_level": "read committed",
    "connect_timeout": 10,  # seconds
}

# PostgreSQL behind PgBouncer (or another pooler) in transaction pooling: DATABASE_POOLER=transaction.
# Nothing that lives in a server session can be used, since each transaction may get another server
# connection: no prepared statements (psycopg's prepare_threshold None, said explicitly: that is
# how the queue knows, see jobs/pooler.py), no server-side cursors, no session settings, no
# LISTEN. Wake-ups and cancels then come through DATABASE_DIRECT_URL, a URL of the same database
# that bypasses the pooler (one connection per worker), or by polling every 0.25 s without it.
DATABASE_POOLER = os.environ.get("DATABASE_POOLER", "").strip().lower()
JOBS_DIRECT_DATABASE_URL = os.environ.get("DATABASE_DIRECT_URL", "")


def database_from_url(url: str, *, pooler: str = DATABASE_POOLER) -> dict:
    """dj-database-url, plus the SQLite, PostgreSQL and MySQL options above and kept-open connections."""
    config = dj_database_url.parse(url, conn_max_age=600, conn_health_checks=True)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config["OPTIONS"] = {**SQLITE_OPTIONS, **config.get("OPTIONS", {})}
        config["CONN_MAX_AGE"] = None
    elif config["ENGINE"] == "django.db.backends.postgresql":
        config["OPTIONS"] = {**POSTGRES_OPTIONS, **config.get("OPTIONS", {})}
        if pooler == "transaction":
            config["OPTIONS"]["prepare_threshold"] = None
            config["DISABLE_SERVER_SIDE_CURSORS"] = True
        elif pooler:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(f"DATABASE_POOLER={pooler!r}: the one mode that needs settings is "
                                       "'transaction' (session pooling needs none; leave it unset)")
    elif config["ENGINE"] == "django.db.backends.mysql":
        config["OPTIONS"] = {**MYSQL_OPTIONS, **config.get("OPTIONS", {})}
    return config


DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# The bearer token that /jobs/metrics and /jobs/health accept besides staff sessions
# (README, Operations); empty: staff sessions only.
JOBS_METRICS_TOKEN = os.environ.get("JOBS_METRICS_TOKEN", "")

TASKS = {
    "default": {
        "BACKEND": "jobs.backends.DatabaseBackend",
        "QUEUES": ["default", "emails", "reports"],
        "OPTIONS": {
            "max_attempts": 3,
            "retry_backoff": 5,
            "stale_after": 30,
            # Behind a transaction pooler with no direct connection to LISTEN on, polling is the wake-up.
            "poll_interval": 0.25 if DATABASE_POOLER == "transaction" and not JOBS_DIRECT_DATABASE_URL else 1,
        },
    }
}

# Recurring jobs: the scheduler (inside every worker, or `manage.py run_scheduler`)
# enqueues each fire time exactly once. See the README's Schedules section.
SCHEDULED_JOBS = {
    "add-every-minute": {"task": "example.tasks.add", "cron": "* * * * *", "args": [2, 3]},
    # Six fields, seconds last: make run's first minute shows a schedule firing.
    "add-every-15-seconds": {"task": "example.tasks.add", "cron": "* * * * * */15", "args": [1, 1]},
    "email-every-2-minutes": {"task": "example.tasks.flaky_email", "cron": "*/2 * * * *",
                              "args": ["ops@example.com"], "queue_name": "emails"},
    "nightly-report": {"task": "example.tasks.slow_report", "cron": "30 2 * * *", "kwargs": {"seconds": 2},
                       "queue_name": "reports", "timezone": "Europe/Berlin"},
    # Built in: delete finished jobs past OPTIONS retain_successful / retain_failed, hourly.
    "prune-jobs": {"task": "jobs.tasks.prune_jobs", "cron": "17 * * * *"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "jobs": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "scheduler": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # The tasks framework logs every start and finish too, and each failure with the traceback
        # the worker's own line already has: the worker's lines say more, once.
        "django.tasks": {"level": "CRITICAL"},
        "django_tasks": {"level": "CRITICAL"},
    },
}
