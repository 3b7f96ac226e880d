"""Rows, settings and tasks that a careless user or an attacker can produce (issue 9).

Each case killed a worker, or the whole queue, before: the tests that say so run real
worker processes. The rule they check: a bad job fails alone with an error saying
what was wrong, the worker keeps claiming, nothing is lost or left RUNNING.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test import override_settings
from django.utils import timezone

import jobs
from jobs.models import Job, JobStatus, QueueState
from tests import tasks
from tests.conftest import REPO, subprocess_env, wait_for

JSON_COLUMNS = {"args", "kwargs", "errors", "worker_ids", "meta", "return_value"}
HUGE_INT = "9" * 5000  # past Python's 4300-digit limit for int(); json_valid and jsonb take it


def damage(job_id: int, **columns) -> None:
    """Write raw values into a job's columns, past the ORM, as any other writer could."""
    pg = connection.vendor == "postgresql"
    sets = [f"{column} = %s{'::jsonb' if pg and column in JSON_COLUMNS else ''}" for column in columns]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE jobs_job SET {', '.join(sets)} WHERE id = %s", [*columns.values(), job_id])


def row(path: str = "tests.tasks.add", **fields) -> Job:
    now = timezone.now()
    fields.setdefault("args", [1, 2])
    return Job.objects.create(task_path=path, run_after=now, enqueued_at=now, **fields)


def job(job_id) -> Job:
    return Job.objects.get(pk=int(job_id))


def assert_failed_alone(job_id, error_class: str, *words: str) -> Job:
    # Only these columns: a damaged time column would make the ORM itself raise on SQLite.
    failed = Job.objects.only("status", "errors", "attempts").get(pk=int(job_id))
    assert failed.status == JobStatus.FAILED, (failed.status, failed.errors)
    last = failed.errors[-1]
    assert last["exception_class_path"] == error_class, last
    for word in words:
        assert word in last["message"], (word, last["message"])
    return failed


# -- 1. a poison row in the claim -------------------------------------------------------------

def test_a_row_with_a_huge_integer_fails_alone_and_every_worker_goes_on(workers):
    poison = row(priority=10)
    damage(poison.pk, args=f"[{HUGE_INT}]")
    good = [tasks.add.enqueue(i, i) for i in range(5)]
    procs = [workers.start("--burst"), workers.start("--burst")]
    for proc in procs:
        assert proc.wait(60) == 0, workers.output(proc)
    failed = assert_failed_alone(poison.pk, "jobs.exceptions.DamagedJob", "args", "cannot be run as stored")
    assert failed.attempts == 1
    assert [job(r.id).status for r in good] == [JobStatus.SUCCESSFUL] * 5
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()


@pytest.mark.parametrize("columns,field", [
    ({"args": '"a string, not a list"'}, "args"),
    ({"args": '{"a": 1}'}, "args"),
    ({"kwargs": "[1, 2]"}, "kwargs"),
    ({"kwargs": f'{{"n": {HUGE_INT}}}'}, "kwargs"),
    ({"errors": "5"}, "errors"),
    ({"errors": f"[{HUGE_INT}]"}, "errors"),
    ({"worker_ids": '{"not": "a list"}'}, "worker_ids"),
])
def test_each_kind_of_damaged_field_fails_that_job_naming_the_field(run_worker, columns, field):
    bad = row(priority=5)
    damage(bad.pk, **columns)
    good = tasks.add.enqueue(2, 3)
    run_worker()
    assert_failed_alone(bad.pk, "jobs.exceptions.DamagedJob", field)
    assert job(good.id).status == JobStatus.SUCCESSFUL and job(good.id).return_value == 5


@pytest.mark.parametrize("columns", [{"meta": "[]"}, {"meta": f"[{HUGE_INT}]"}])
def test_damage_to_what_a_run_does_not_read_does_not_stop_it(run_worker, columns):
    """The worker reads what it needs to run and record a job; ``meta`` is not part of it."""
    job_with_bad_meta = row(priority=5)
    damage(job_with_bad_meta.pk, **columns)
    run_worker()
    assert Job.objects.only("status").get(pk=job_with_bad_meta.pk).status == JobStatus.SUCCESSFUL


@pytest.mark.sqlite_only
@pytest.mark.parametrize("columns,field", [
    ({"priority": "'high'"}, "priority"),  # SQLite keeps text in an integer column
    ({"max_attempts": "'three'"}, "max_attempts"),
    ({"run_after": "'0'"}, "run_after"),  # due (it sorts before any date) and not a date
    ({"run_after": "'2000-13-45 00:00:00'"}, "run_after"),  # looks like one: the driver's parser raised
    ({"enqueued_at": "'yesterday'"}, "enqueued_at"),
])
def test_sqlite_values_of_the_wrong_type_fail_that_job(run_worker, columns, field):
    bad = row(priority=5)
    with connection.cursor() as cursor:
        for column, literal in columns.items():
            cursor.execute(f"UPDATE jobs_job SET {column} = {literal} WHERE id = %s", [bad.pk])
    good = tasks.add.enqueue(2, 3)
    run_worker()
    assert_failed_alone(bad.pk, "jobs.exceptions.DamagedJob", field)
    assert job(good.id).status == JobStatus.SUCCESSFUL


@pytest.mark.vendors("postgresql", "mysql")  # SQLite's integers have no such limit
def test_a_row_at_the_largest_attempt_number_does_not_break_the_claim(run_worker):
    top = row(attempts=2**31 - 1, max_attempts=2**31 - 1)
    good = tasks.add.enqueue(1, 1)
    run_worker()  # "integer out of range" in the claim's attempts + 1 failed every claim before
    assert job(good.id).status == JobStatus.SUCCESSFUL
    assert job(top.pk).status == JobStatus.SUCCESSFUL and job(top.pk).attempts == 2**31 - 1


@pytest.mark.postgres_only
def test_times_the_driver_cannot_read_fail_that_job_and_not_the_claim_or_the_sweep(workers):
    """'-infinity' is due before anything, 'infinity' and year 20000 are valid timestamptz values,
    and psycopg raises on all three while fetching a row."""
    due_first = row(priority=9)
    far = row(priority=9)
    lost = row(status=JobStatus.RUNNING, attempts=1, worker_id="gone:1:x", heartbeat_at=timezone.now())
    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs_job SET run_after = '-infinity' WHERE id = %s", [due_first.pk])
        cursor.execute("UPDATE jobs_job SET run_after = '2000-01-01', enqueued_at = '20000-01-01' WHERE id = %s",
                       [far.pk])
        cursor.execute("UPDATE jobs_job SET heartbeat_at = '-infinity' WHERE id = %s", [lost.pk])
    good = tasks.add.enqueue(1, 1)
    proc = workers.start()
    wait_for(lambda: not Job.objects.filter(pk__in=[due_first.pk, far.pk, lost.pk])
             .exclude(status=JobStatus.FAILED).exists(), timeout=30, message="the three damaged jobs to fail")
    assert_failed_alone(due_first.pk, "jobs.exceptions.DamagedJob", "run_after")
    assert_failed_alone(far.pk, "jobs.exceptions.DamagedJob", "enqueued_at")
    assert_failed_alone(lost.pk, "jobs.exceptions.DamagedJob", "heartbeat_at", "was lost")
    wait_for(lambda: job(good.id).status == JobStatus.SUCCESSFUL, message="the good job")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, workers.output(proc)


def test_a_priority_out_of_django_range_fails_that_job_at_once(run_worker):
    bad = row(priority=500)  # the column takes it; Django's TaskResult refuses it
    good = tasks.add.enqueue(1, 1)
    run_worker()
    failed = assert_failed_alone(bad.pk, "jobs.exceptions.DamagedJob", "cannot be run as stored")
    assert failed.attempts == 1
    assert job(good.id).status == JobStatus.SUCCESSFUL


# -- 2. task paths: nothing is imported that no installed app declared -------------------------

HOSTILE_PATHS = ["venv.__main__.main", "unittest.__main__.main", "idlelib.__main__.x", "antigravity.fly",
                 "os.system", "this.x", "tests.tasks.__main__.x", "jobs..x", "jobs.tasks.prune_jobs\x00", "",
                 "a" * 300, "émoji.x"]


def test_hostile_task_paths_fail_without_importing_anything(workers, tmp_path):
    env = subprocess_env(JOBS_TEST_MARKER=str(tmp_path / "ran"), BROWSER="touch " + str(tmp_path / "browser"))
    # PostgreSQL itself refuses a NUL and a path over the column's 255 characters; SQLite stores anything.
    paths = HOSTILE_PATHS if connection.vendor == "sqlite" else [p for p in HOSTILE_PATHS if "\x00" not in p
                                                                 and len(p) <= 255]
    bad = [row(path, args=[]).pk for path in paths]
    good = tasks.add.enqueue(2, 2)
    proc = workers.start("--burst", env=env)
    assert proc.wait(60) == 0, workers.output(proc)
    for pk in bad:
        assert_failed_alone(pk, "jobs.exceptions.TaskNotAllowed")
        assert job(pk).attempts == 1
    assert job(good.id).status == JobStatus.SUCCESSFUL
    assert not (REPO / "process_tasks").exists()  # venv's command line would have made this virtualenv
    assert not (tmp_path / "browser").exists()
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()


def test_test_tasks_are_not_importable_where_settings_do_not_list_them(workers, record_dir):
    """In a deployment of the whole repository, tests.tasks is no installed app: a row naming it runs nothing."""
    path = record_dir / "runs"
    tampered = row("tests.tasks.record", args=[str(path), "owned"])
    env = subprocess_env(DJANGO_SETTINGS_MODULE="tests.settings_deployed",
                         JOBS_BASE_SETTINGS=os.environ["DJANGO_SETTINGS_MODULE"])
    proc = workers.start("--burst", env=env)
    assert proc.wait(60) == 0, workers.output(proc)
    assert_failed_alone(tampered.pk, "jobs.exceptions.TaskNotAllowed", "tests.tasks.record", "JOBS_TASK_MODULES")
    assert not path.exists()


def test_enqueue_refuses_a_task_no_worker_would_import():
    from jobs.framework import InvalidTask

    with override_settings(JOBS_TASK_MODULES=[]):
        with pytest.raises(InvalidTask, match="JOBS_TASK_MODULES"):
            tasks.add.enqueue(1, 2)


@pytest.mark.parametrize("value,words", [
    ("tests.tasks", "must be a list"),
    (["tests.tasks", 5], "JOBS_TASK_MODULES[1]"),
    (["venv.__main__"], "not __main__"),
])
@pytest.mark.django_db  # model checks (JSONField support) open a connection
def test_a_bad_task_modules_setting_stops_check_naming_it(value, words):
    with override_settings(JOBS_TASK_MODULES=value):
        with pytest.raises(SystemCheckError) as info:
            call_command("check")
    assert "jobs.E003" in str(info.value) and words in str(info.value)


# -- 3. a task that leaves a transaction open ------------------------------------------------

@pytest.mark.parametrize("variant", ["atomic", "raw"])
def test_a_task_that_leaves_a_transaction_open_is_rolled_back_and_the_queue_goes_on(workers, variant):
    proc = workers.start()
    if variant == "atomic":
        leak = tasks.leaves_atomic_open.enqueue("written-inside-the-leak")
    else:
        leak = tasks.leaves_raw_begin.enqueue(0)
    wait_for(lambda: job(leak.id).status == JobStatus.FAILED, timeout=30, message="the leaking job to fail")
    failed = assert_failed_alone(leak.id, "jobs.exceptions.TransactionLeftOpen", "left a transaction open")
    assert failed.attempts == 1
    assert not QueueState.objects.filter(name="written-inside-the-leak").exists()  # rolled back
    # The database is not locked: this process can write, and the worker goes on claiming.
    started = time.monotonic()
    after = tasks.add.enqueue(3, 4)
    assert time.monotonic() - started < 5  # a leaked SQLite write lock made this wait 20 s, then fail
    wait_for(lambda: job(after.id).status == JobStatus.SUCCESSFUL, timeout=30, message="the next job")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, workers.output(proc)  # 200 s before: shutdown's writes waited on the lock


# -- 4. attempt numbers past what a float can double ----------------------------------------

def test_attempts_past_1024_are_retried_and_taken_back_without_crashing_the_worker(workers):
    long_ago = timezone.now() - timedelta(hours=1)
    lost = row("tests.tasks.always_fails_five", args=[], status=JobStatus.RUNNING, attempts=1500, max_attempts=2000,
               worker_id="gone:1:dead", heartbeat_at=long_ago)
    failing = row("tests.tasks.always_fails_five", args=[], attempts=1500, max_attempts=2000)
    good = tasks.add.enqueue(1, 1)
    proc = workers.start()
    wait_for(lambda: job(lost.pk).status == JobStatus.READY and job(failing.pk).attempts == 1501, timeout=30,
             message="the stale job taken back and the failing one retried")
    wait_for(lambda: job(good.id).status == JobStatus.SUCCESSFUL, message="the good job")
    cap = timezone.now() + timedelta(seconds=3600 * 1.01)
    for pk in (lost.pk, failing.pk):
        again = job(pk)
        assert again.status == JobStatus.READY and again.run_after <= cap
    assert job(lost.pk).errors[-1]["exception_class_path"] == "jobs.exceptions.WorkerLost"
    assert proc.poll() is None, workers.output(proc)  # alive: the sweep runs every second here
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, workers.output(proc)


# -- 5. OPTIONS: NaN, infinity and absurd numbers --------------------------------------------

@pytest.mark.parametrize("options,key", [
    ({"stale_after": float("nan")}, "stale_after"),
    ({"stale_after": 1e300}, "stale_after"),
    ({"retry_backoff": float("nan")}, "retry_backoff"),
    ({"poll_interval": 1e-9}, "poll_interval"),
    ({"retain_successful": 1e300}, "retain_successful"),
    ({"max_attempts": 10**12}, "max_attempts"),
])
@pytest.mark.django_db
def test_check_refuses_options_that_would_crash_or_burn_a_worker(options, key):
    tasks_setting = {"default": {"BACKEND": "jobs.backends.DatabaseBackend", "QUEUES": [], "OPTIONS": options}}
    with override_settings(TASKS=tasks_setting, SCHEDULED_JOBS={}):
        with pytest.raises(SystemCheckError) as info:
            call_command("check")
    assert "jobs.E001" in str(info.value) and repr(key) in str(info.value)


# -- 6. an exception that cannot be described ------------------------------------------------

def test_an_exception_whose_str_raises_fails_its_job_and_the_slot_goes_on(workers):
    bad = tasks.raises_unprintable.enqueue()
    after = tasks.add.using(priority=-1).enqueue(1, 1)
    proc = workers.start("--burst")
    assert proc.wait(60) == 0, workers.output(proc)
    failed = assert_failed_alone(bad.id, "tests.tasks.Unprintable", "whose str() raised")
    assert "Unprintable" in failed.errors[-1]["traceback"]
    assert job(after.id).status == JobStatus.SUCCESSFUL


def test_error_entries_are_capped_and_storable():
    from jobs.errors import MAX_MESSAGE, MAX_TRACEBACK, error_entry

    entry = error_entry(ValueError("x\x00" * 3_000_000), attempt=1, worker_id="w", when=timezone.now())
    assert len(entry["message"]) <= MAX_MESSAGE and len(entry["traceback"]) <= MAX_TRACEBACK
    assert "\x00" not in entry["message"] and "characters cut" in entry["message"]
    assert entry["message"].endswith("x\ufffd")  # the end is kept: that is where errors say what went wrong


# -- 8. arguments the database cannot store are refused at enqueue ---------------------------

def nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("argument,words", [
    pytest.param(nested(600), "nested more than", id="nested-600"),
    pytest.param(nested(3000), "nested", id="nested-3000"),
    pytest.param("a\x00b", "NUL character", id="nul"),
    pytest.param("\ud800", "lone surrogate", id="surrogate"),
    pytest.param(10**5000, "Exceeds the limit", id="huge-int"),
])
def test_arguments_the_database_cannot_store_are_a_type_error_naming_them(db, argument, words):
    with pytest.raises(TypeError) as info:
        tasks.add.enqueue(argument, 1)
    assert "positional argument 0" in str(info.value) and words in str(info.value)
    assert not Job.objects.exists()


def test_arguments_nested_past_the_servers_limit_are_a_type_error_naming_the_limit(db):
    from jobs.backends import MAX_NESTING, nesting_limit

    limit = nesting_limit(connection)
    if connection.vendor == "mysql":  # MariaDB's JSON_VALID refuses 32 levels, MySQL's JSON type 101
        assert limit == (30 if connection.mysql_is_mariadb else 99)
    else:
        assert limit == MAX_NESTING
    with pytest.raises(TypeError, match=f"positional argument 0 .*nested more than {limit} levels deep"):
        tasks.add.enqueue(nested(limit), [])
    with pytest.raises(TypeError, match=f"call 1: .*nested more than {limit} levels deep"):
        jobs.enqueue_many(tasks.add, [((1, 2), {}), ((nested(limit), 1), {})])
    assert not Job.objects.exists()


def test_arguments_nested_as_deep_as_allowed_go_through(run_worker):
    from jobs.backends import nesting_limit

    result = tasks.add.enqueue([1], [2])
    deep = tasks.add.enqueue(nested(nesting_limit(connection) - 1), [])
    many = jobs.enqueue_many(tasks.add, [((nested(nesting_limit(connection) - 1), []), {})])
    run_worker()
    assert job(result.id).status == JobStatus.SUCCESSFUL
    assert job(deep.id).status == JobStatus.SUCCESSFUL
    assert job(many[0].id).status == JobStatus.SUCCESSFUL


# -- the admin password file ----------------------------------------------------------------

def test_the_admin_password_file_is_private_from_its_first_byte(db, tmp_path, monkeypatch):
    from example.management.commands import ensure_admin

    target = tmp_path / "admin-password"
    monkeypatch.setattr(ensure_admin, "PASSWORD_FILE", target)
    seen = []
    real_write = os.write

    def spying_write(fd, data):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(ensure_admin.os, "write", spying_write)
    call_command("ensure_admin", stdout=io.StringIO())
    assert seen == [0o600]  # private when the password is written, not after
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        ensure_admin.write_private(Path(link), "x")


# -- 7. import_background_tasks: every row through the same report ----------------------------

@pytest.fixture
def damaged_source(transactional_db):
    """django-background-tasks' table with every NOT NULL dropped (a damaged or hand-edited copy)."""
    # Transactional: MySQL commits on CREATE TABLE, so a test's rows would outlive its rollback.
    sqlite = connection.vendor == "sqlite"
    pk, dt = {"sqlite": ("integer PRIMARY KEY", "datetime"), "mysql": ("serial PRIMARY KEY", "datetime(6)")}.get(
        connection.vendor, ("serial PRIMARY KEY", "timestamp with time zone"))
    # SQLite keeps any type in any column; PostgreSQL and MySQL get their real types, NULLs allowed.
    number = "" if sqlite else "integer"
    repeat = connection.ops.quote_name("repeat")  # a reserved word on MySQL
    columns = (f"id {pk}, task_name varchar(190), task_params text, task_hash varchar(40), verbose_name text, "
               f"priority {number}, run_at {dt}, {repeat} bigint, repeat_until {dt}, queue varchar(190), "
               f"attempts {number}, failed_at {dt}, last_error text, locked_by varchar(64), locked_at {dt}, "
               f"creator_object_id integer, creator_content_type_id integer")
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE background_task ({columns})")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS background_task")


def source_row(**values) -> int:
    import json

    row = {"task_name": "tests.bgtasks_tasks.notify", "task_params": json.dumps([["/tmp/x", 1], {}]),
           "task_hash": "0" * 40, "priority": 0, "run_at": "2030-01-01 00:00:00", "repeat": 0, "attempts": 0,
           "last_error": "", **values}
    with connection.cursor() as cursor:
        names = ", ".join(connection.ops.quote_name(name) for name in row)
        cursor.execute(f"INSERT INTO background_task ({names}) VALUES ({', '.join(['%s'] * len(row))})",
                       list(row.values()))
        cursor.execute("SELECT MAX(id) FROM background_task")
        return cursor.fetchone()[0]


def test_import_reports_each_malformed_row_and_imports_the_rest(damaged_source):
    deep = "[" + "[" * 3000 + "]" * 3000 + ", {}]"
    bad = {
        "task_name": source_row(task_name=None),
        "priority": source_row(priority=None),
        "run_at": source_row(run_at=None),
        "attempts -1": source_row(attempts=-1),
        "nested": source_row(task_params=deep),
        "huge": source_row(task_params=f"[[{HUGE_INT}], {{}}]"),
        "nul": source_row(task_params='[["a\\u0000b"], {}]'),
    }
    if connection.vendor == "sqlite":
        bad["text priority"] = source_row(priority="high")
        bad["attempts past the column"] = source_row(attempts=2**31)  # PostgreSQL's integer column refuses it
        bad["impossible run_at"] = source_row(run_at="2030-13-45 00:00:00")
        bad["garbage run_at"] = source_row(run_at="next tuesday")
    elif connection.vendor == "postgresql":  # timestamptz holds them; MySQL's datetime refuses them
        bad["run_at past year 9999"] = source_row(run_at="20000-01-01")
        bad["infinite run_at"] = source_row(run_at="infinity")
    good = source_row(task_params='[["/tmp/x", 2], {}]')
    out, err = StringIO(), StringIO()
    call_command("import_background_tasks", stdout=out, stderr=err)
    out, err = out.getvalue(), err.getvalue()
    assert Job.objects.get().meta["background_task"]["source_id"] == good
    left_out = next(line for line in out.splitlines() if "left out" in line)
    assert int(left_out.split()[-1]) == len(bad), out
    for label, row_id in bad.items():
        assert f"row id {row_id}:" in err, (label, err)
    assert "is not a time" in err and "not an integer" in err and "not a task name" in err
