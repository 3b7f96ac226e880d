"""jobs.W001: the database that holds jobs is SQLite without what several processes need to share it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest
from django.core.management import call_command

from jobs.checks import SQLITE_SHARING_OPTIONS, check_sqlite_sharing, missing_sqlite_options, sqlite_sharing_warnings
from queue_project.settings import SQLITE_OPTIONS, database_from_url
from tests.conftest import REPO, subprocess_env

ALL_MISSING = dict(SQLITE_SHARING_OPTIONS)
WAL = "PRAGMA journal_mode=WAL;"


@pytest.mark.parametrize("options,missing", [
    ({}, ALL_MISSING),
    (SQLITE_SHARING_OPTIONS, {}),
    (SQLITE_OPTIONS, {}),  # the demo project's own
    ({"init_command": "pragma JOURNAL_MODE = 'wal'", "timeout": 0.5, "transaction_mode": "immediate"}, {}),
    ({"init_command": WAL, "transaction_mode": "EXCLUSIVE", "timeout": 5}, {}),  # EXCLUSIVE locks at BEGIN too
    ({"init_command": "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=20000;", "transaction_mode": "IMMEDIATE"}, {}),
    ({"init_command": "PRAGMA synchronous=NORMAL;", "timeout": 20, "transaction_mode": "IMMEDIATE"},
     {"init_command": "PRAGMA synchronous=NORMAL; PRAGMA journal_mode=WAL;"}),  # appended to what is there
    ({"init_command": "PRAGMA journal_mode=DELETE;", "timeout": 20, "transaction_mode": "IMMEDIATE"},
     {"init_command": "PRAGMA journal_mode=DELETE; PRAGMA journal_mode=WAL;"}),
    ({"init_command": WAL, "timeout": 0, "transaction_mode": "IMMEDIATE"}, {"timeout": 20}),  # fails at once
    ({"init_command": WAL, "timeout": True, "transaction_mode": "IMMEDIATE"}, {"timeout": 20}),
    ({"init_command": WAL, "timeout": "20", "transaction_mode": "IMMEDIATE"}, {"timeout": 20}),
    ({"init_command": WAL + " PRAGMA busy_timeout=0;", "transaction_mode": "IMMEDIATE"}, {"timeout": 20}),
    ({"init_command": WAL, "timeout": 20, "transaction_mode": "DEFERRED"}, {"transaction_mode": "IMMEDIATE"}),
    ({"init_command": WAL, "timeout": 20, "transaction_mode": None}, {"transaction_mode": "IMMEDIATE"}),
])
def test_missing_options(options, missing):
    assert missing_sqlite_options(options, name=None) == missing


def sqlite_file(path, journal_mode: str):
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode.lower()
        conn.execute("CREATE TABLE t (x)")
    return path


def test_a_file_already_in_wal_mode_needs_no_init_command(tmp_path):
    wal_file = sqlite_file(tmp_path / "wal.sqlite3", "WAL")
    options = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    assert missing_sqlite_options(options, name=wal_file) == {}
    assert missing_sqlite_options(options, name=str(wal_file)) == {}
    rollback_journal = sqlite_file(tmp_path / "delete.sqlite3", "DELETE")
    assert missing_sqlite_options(options, name=rollback_journal) == {"init_command": WAL}
    not_sqlite = tmp_path / "text.sqlite3"
    not_sqlite.write_bytes(b"x" * 100)
    for name in (not_sqlite, tmp_path / "absent.sqlite3", ":memory:", f"file:{wal_file}?mode=ro", ""):
        assert missing_sqlite_options(options, name=name) == {"init_command": WAL}, name


def test_warning_names_the_alias_and_every_option_to_add(tmp_path):
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": tmp_path / "db.sqlite3"}  # not made yet
    [warning] = sqlite_sharing_warnings("default", database)
    assert warning.id == "jobs.W001" and warning.obj == "DATABASES['default']['OPTIONS']"
    assert ("add to its OPTIONS {'init_command': 'PRAGMA journal_mode=WAL;', 'timeout': 20, "
            "'transaction_mode': 'IMMEDIATE'}") in warning.msg


def test_the_demo_project_and_other_databases_pass(tmp_path):
    assert sqlite_sharing_warnings("default", database_from_url(f"sqlite:///{tmp_path}/db.sqlite3")) == []
    assert sqlite_sharing_warnings("default", database_from_url("postgres://u:p@localhost:5432/db")) == []
    assert sqlite_sharing_warnings("default", {}) == []  # DATABASES = {}: Django's dummy backend


@pytest.mark.django_db  # the model checks of manage.py check open a connection
def test_this_suites_settings_pass_check():
    assert check_sqlite_sharing() == []
    call_command("check", fail_level="WARNING")  # any warning at all would raise SystemCheckError


ROUTED_SETTINGS = '''
from tests.settings import *  # noqa: F403
DATABASES = {**DATABASES, "jobsdb": {"ENGINE": "django.db.backends.sqlite3", "NAME": {jobs_name!r},
                                     "OPTIONS": {"timeout": 20}}}
DATABASE_ROUTERS = ["routed_settings.JobsRouter"]

class JobsRouter:
    def db_for_write(self, model, **hints):
        return "jobsdb" if model._meta.app_label == "jobs" else None
'''


@pytest.mark.sqlite_only  # runs once: the settings module is its own, whatever database the suite uses
def test_manage_py_check_warns_about_the_database_the_router_picks_for_jobs(tmp_path):
    (tmp_path / "routed_settings.py").write_text(ROUTED_SETTINGS.replace("{jobs_name!r}", repr(str(tmp_path / "j.db"))))
    env = subprocess_env(DJANGO_SETTINGS_MODULE="routed_settings", PYTHONPATH=f"{tmp_path}:{REPO}")
    env.pop("JOBS_TEST_DB_NAME")
    proc = subprocess.run([sys.executable, str(REPO / "manage.py"), "check"], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr  # a warning, not an error
    output = proc.stdout + proc.stderr
    assert "(jobs.W001) DATABASES['jobsdb'] holds the jobs" in output
    assert "{'init_command': 'PRAGMA journal_mode=WAL;', 'transaction_mode': 'IMMEDIATE'}" in output
    assert "DATABASES['default']" not in output  # the demo options there are fine
