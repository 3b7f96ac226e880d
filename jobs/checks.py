"""App-level system checks. Backend OPTIONS are checked by ``DatabaseBackend.check()``,
which Django's tasks framework runs as part of ``manage.py check``."""

from __future__ import annotations

import re
from pathlib import Path

from django.core import checks

# What SQLite needs so that a web server and worker processes can share one file:
# WAL lets readers run beside the one writer, the busy timeout (seconds) makes a
# writer wait for the lock instead of failing with "database is locked", and
# IMMEDIATE transactions take the write lock at BEGIN, so two writers never
# deadlock upgrading a read lock. Every Django we support (5.2+) has transaction_mode.
SQLITE_SHARING_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL;",
    "timeout": 20,
    "transaction_mode": "IMMEDIATE",
}
_WAL_PRAGMA = re.compile(r"journal_mode\s*=\s*['\"]?wal\b", re.IGNORECASE)
_BUSY_TIMEOUT_PRAGMA = re.compile(r"busy_timeout\s*=\s*['\"]?0*[1-9]", re.IGNORECASE)
# Byte 18 of a SQLite file's header (its "write version") is 2 once the file is in WAL mode,
# which is persistent: the file says so without opening a connection at check time.
_SQLITE_HEADER = b"SQLite format 3\x00"
_WAL_WRITE_VERSION = 2


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


@checks.register(checks.Tags.compatibility)
def check_sqlite_sharing(app_configs=None, **kwargs):
    """Warn when the database that holds jobs is SQLite not set up for several processes.

    Reads settings (and at most the first 20 bytes of a SQLite file), never opens a connection.
    """
    from django.apps import apps
    from django.conf import settings
    from django.db import router

    alias = router.db_for_write(apps.get_model("jobs", "Job"))
    return sqlite_sharing_warnings(alias, settings.DATABASES.get(alias) or {})


def sqlite_sharing_warnings(alias: str, database: dict) -> list[checks.Warning]:
    """``jobs.W001`` for the ``DATABASES[alias]`` entry when it is SQLite that lacks sharing OPTIONS."""
    from django.db.utils import load_backend

    engine = database.get("ENGINE") or ""
    if not engine or load_backend(engine).DatabaseWrapper.vendor != "sqlite":
        return []
    missing = missing_sqlite_options(database.get("OPTIONS") or {}, database.get("NAME"))
    if not missing:
        return []
    listed = ", ".join(f"{key!r}: {value!r}" for key, value in missing.items())
    return [checks.Warning(
        f"DATABASES[{alias!r}] holds the jobs and is SQLite, but not set up for a web server and workers "
        f"sharing the file: add to its OPTIONS {{{listed}}}",
        hint="WAL lets readers run beside the writer; 'timeout' (seconds) makes a writer wait for the lock "
             "instead of failing with 'database is locked'; 'transaction_mode': 'IMMEDIATE' takes the write "
             "lock at BEGIN, so two writers never deadlock. See the README's 'Install into your project'.",
        obj=f"DATABASES[{alias!r}]['OPTIONS']",
        id="jobs.W001",
    )]


def missing_sqlite_options(options: dict, name) -> dict:
    """The OPTIONS (with the values to set) that a SQLite database still needs for sharing."""
    missing = {}
    init_command = str(options.get("init_command") or "")
    if not _WAL_PRAGMA.search(init_command) and not _file_in_wal_mode(name):
        wal = SQLITE_SHARING_OPTIONS["init_command"]
        missing["init_command"] = f"{init_command.rstrip().rstrip(';')}; {wal}" if init_command.strip() else wal
    timeout = options.get("timeout")
    has_timeout = isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0
    if not has_timeout and not _BUSY_TIMEOUT_PRAGMA.search(init_command):
        missing["timeout"] = SQLITE_SHARING_OPTIONS["timeout"]
    if str(options.get("transaction_mode") or "").upper() not in {"IMMEDIATE", "EXCLUSIVE"}:
        missing["transaction_mode"] = SQLITE_SHARING_OPTIONS["transaction_mode"]
    return missing


def _file_in_wal_mode(name) -> bool:
    """True when ``name`` is an existing SQLite file whose header says WAL (no connection opened)."""
    if not name or str(name).startswith("file:") or str(name) == ":memory:":
        return False
    try:
        with open(Path(name), "rb") as file:
            header = file.read(20)
    except OSError:
        return False
    return len(header) == 20 and header.startswith(_SQLITE_HEADER) and header[18] == _WAL_WRITE_VERSION
# RFC 6750's b64token: what a client can send after "Bearer " in an Authorization header.
TOKEN_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
SHORT_TOKEN = 24


@checks.register(checks.Tags.security)
def check_metrics_token(app_configs=None, **kwargs):
    """JOBS_METRICS_TOKEN, when set, must be a token a client can send, and hard to guess."""
    from django.conf import settings

    token = getattr(settings, "JOBS_METRICS_TOKEN", None)
    if token is None or token == "":
        return []  # no token: only staff users reach metrics and health
    if not isinstance(token, str) or not set(token) <= TOKEN_CHARACTERS:
        shown = type(token).__name__ if not isinstance(token, str) else "characters outside A-Z a-z 0-9 - . _ ~ + / ="
        return [checks.Error(f"JOBS_METRICS_TOKEN must be a string of A-Z a-z 0-9 - . _ ~ + / = (got {shown})",
                             hint="For example: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
                             obj="settings.JOBS_METRICS_TOKEN", id="jobs.E020")]
    if len(token) < SHORT_TOKEN:
        return [checks.Warning(f"JOBS_METRICS_TOKEN is {len(token)} characters long: easy to guess",
                               hint=f"Use at least {SHORT_TOKEN}: python -c 'import secrets; "
                                    f"print(secrets.token_urlsafe(32))'",
                               obj="settings.JOBS_METRICS_TOKEN", id="jobs.W021")]
    return []


@checks.register(checks.Tags.database)
def check_pooler(app_configs=None, **kwargs):
    """PostgreSQL behind a transaction pooler (``jobs.pooler``): settings that cannot work there.

    Reads settings only. A URL's query string cannot say None, so ``?prepare_threshold=None``
    arrives as a string, and psycopg then fails every statement that counts executions.
    """
    from django.conf import settings

    from .pooler import DIRECT_URL_SETTING

    return pooler_problems(settings.DATABASES, getattr(settings, DIRECT_URL_SETTING, ""))


def pooler_problems(databases: dict, direct) -> list[checks.CheckMessage]:
    from .pooler import DIRECT_URL_SETTING, transaction_pooled

    problems = []
    for alias, database in databases.items():
        options = database.get("OPTIONS") or {}
        threshold = options.get("prepare_threshold")
        if isinstance(threshold, (str, bool, float)):
            problems.append(checks.Error(
                f"DATABASES[{alias!r}]['OPTIONS']['prepare_threshold'] is {threshold!r}, not None or an int",
                hint="A DATABASE_URL query string cannot say None: behind PgBouncer in transaction pooling set "
                     "DATABASE_POOLER=transaction (queue_project/settings.py), or put None in OPTIONS.",
                obj=f"DATABASES[{alias!r}]", id="jobs.E030"))
        elif transaction_pooled(database) and not direct:
            problems.append(checks.Info(
                f"DATABASES[{alias!r}] is behind a transaction pooler and {DIRECT_URL_SETTING} is not set: "
                "workers find new jobs and cancels by polling (poll_interval), not at once",
                hint=f"Set {DIRECT_URL_SETTING} (DATABASE_DIRECT_URL) to a URL of the same database that "
                     "bypasses the pooler, for LISTEN.", obj=f"DATABASES[{alias!r}]", id="jobs.I031"))
    if direct and not (isinstance(direct, str) and direct.startswith(("postgres://", "postgresql://"))):
        problems.append(checks.Error(f"{DIRECT_URL_SETTING} must be a postgres:// URL, got {str(direct)[:80]!r}",
                                     obj=f"settings.{DIRECT_URL_SETTING}", id="jobs.E032"))
    return problems


# Django's warnings that MySQL and MariaDB leave out partial indexes (W037), conditional unique
# constraints (W036) and indexes on expressions (W043): for jobs.Job, migration 0008 makes their
# stand-ins there, so Job.check() drops them and jobs.I030 says what stands in for what.
MYSQL_INDEX_WARNINGS = frozenset({"models.W036", "models.W037", "models.W043"})
# Isolation levels under which InnoDB's locking reads take gap locks: claims block each other.
_GAP_LOCKING = {"repeatable read", "serializable"}


@checks.register(checks.Tags.compatibility)
def check_mysql_isolation(app_configs=None, **kwargs):
    """MySQL and MariaDB: ``jobs.W030`` (an isolation level that takes gap locks), at every command's
    start. Reads settings, never opens a connection."""
    return [note for note in _mysql_notes() if note.level >= checks.WARNING]


@checks.register(checks.Tags.database)
def check_mysql_indexes(app_configs=None, **kwargs):
    """MySQL and MariaDB: ``jobs.I030`` (what stands in for the partial indexes), shown by ``migrate``
    and ``check --database``, not at every command's start."""
    return [note for note in _mysql_notes() if note.level < checks.WARNING]


def _mysql_notes() -> list[checks.CheckMessage]:
    from django.apps import apps
    from django.conf import settings
    from django.db import router

    alias = router.db_for_write(apps.get_model("jobs", "Job"))
    return mysql_notes(alias, settings.DATABASES.get(alias) or {})


def mysql_notes(alias: str, database: dict) -> list[checks.CheckMessage]:
    """``jobs.I030`` and ``jobs.W030`` for the ``DATABASES[alias]`` entry when it is MySQL/MariaDB."""
    from django.db.utils import load_backend

    engine = database.get("ENGINE") or ""
    if not engine or load_backend(engine).DatabaseWrapper.vendor != "mysql":
        return []
    found: list[checks.CheckMessage] = [checks.Info(
        "MySQL/MariaDB have no partial indexes nor indexes on expressions, so Django leaves out the job table's "
        "(its models.W036, W037 and W043, not shown for jobs.Job); migration jobs.0008 makes their stand-ins: the "
        "claim's index in claim order, unique jobs' key in a column set only while READY under a unique index, "
        "and the stale sweep's and finishes' indexes. Unique jobs, limits and the flat claim hold as elsewhere. "
        "(scheduler.ScheduleRun's latest run with a job is read through its schedule's index, newest first.)",
        obj="jobs.Job", id="jobs.I030")]
    level = str((database.get("OPTIONS") or {}).get("isolation_level") or "read committed").lower()
    if level in _GAP_LOCKING:
        found.append(checks.Warning(
            f"DATABASES[{alias!r}] holds the jobs on MySQL/MariaDB with isolation_level {level!r}: its locking reads "
            "take gap locks, so workers' claims block each other and deadlock",
            hint="Use 'read committed' (Django's default for MySQL): remove 'isolation_level' from its OPTIONS "
                 "or set it to 'read committed'.",
            obj=f"DATABASES[{alias!r}]['OPTIONS']", id="jobs.W030"))
    return found
