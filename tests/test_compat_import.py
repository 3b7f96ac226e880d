"""``manage.py import_background_tasks`` on hand-made django-background-tasks tables.

The tables are created here with the columns of its migrations (0001, 0002), in the
test database itself: the usual case, where the old tables sit beside the jobs.
The same command on tables written by the real package: tests/test_compat_bgtasks.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from jobs import compat
from jobs.execution import attempt_limit
from jobs.framework import default_task_backend
from jobs.models import Job, JobStatus
from tests import bgtasks_tasks as t


def create_tables() -> None:
    pk, dt = {"sqlite": ("integer PRIMARY KEY", "datetime"), "mysql": ("serial PRIMARY KEY", "datetime(6)")}.get(
        connection.vendor, ("serial PRIMARY KEY", "timestamp with time zone"))
    repeat = connection.ops.quote_name("repeat")  # a reserved word on MySQL
    columns = (f"id {pk}, task_name varchar(190) NOT NULL, task_params text NOT NULL, "
               f"task_hash varchar(40) NOT NULL, verbose_name varchar(255) NULL, priority integer NOT NULL, "
               f"run_at {dt} NOT NULL, {repeat} bigint NOT NULL, repeat_until {dt} NULL, queue varchar(190) NULL, "
               f"attempts integer NOT NULL, failed_at {dt} NULL, last_error text NOT NULL, "
               f"locked_by varchar(64) NULL, locked_at {dt} NULL, creator_object_id integer NULL, "
               f"creator_content_type_id integer NULL")
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE background_task ({columns})")
        cursor.execute(f"CREATE TABLE background_task_completedtask ({columns})")


def insert(table="background_task", **values) -> int:
    row = {"task_params": json.dumps([[], {}]), "task_hash": "0" * 40, "priority": 0, "run_at": timezone.now(),
           "repeat": 0, "attempts": 0, "last_error": "", **values}
    if "task_params" not in values and ("args" in row or "kwargs" in row):
        row["task_params"] = json.dumps([row.pop("args", []), row.pop("kwargs", {})], sort_keys=True)
    row.pop("args", None), row.pop("kwargs", None)
    for key in ("run_at", "repeat_until", "failed_at", "locked_at"):
        if isinstance(row.get(key), datetime) and connection.vendor == "sqlite":
            # As Django writes them there: naive UTC text.
            row[key] = row[key].astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
    names = ", ".join(connection.ops.quote_name(name) for name in row)
    marks = ", ".join(["%s"] * len(row))
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(row.values()))
        cursor.execute(f"SELECT MAX(id) FROM {table}")
        return cursor.fetchone()[0]


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("import_background_tasks", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def count_line(out: str, label: str) -> int:
    line = next(line for line in out.splitlines() if line.strip().startswith(label))
    return int(line.split()[-1])


TRACEBACK = """Traceback (most recent call last):
  File "/srv/shop/tasks.py", line 3, in notify
    raise ConnectionError("mail server down")
ConnectionError: mail server down
"""


@pytest.fixture
def tables(transactional_db):
    # Transactional: MySQL commits on CREATE TABLE, so a test's rows would outlive its rollback.
    create_tables()
    yield
    with connection.cursor() as cursor:  # a transactional test commits them: leave nothing behind
        cursor.execute("DROP TABLE IF EXISTS background_task")
        cursor.execute("DROP TABLE IF EXISTS background_task_completedtask")


def test_no_table_means_nothing_to_import(db):
    out, _ = run()
    assert "No django-background-tasks table 'background_task'" in out
    assert not Job.objects.exists()


def test_pending_rows_become_jobs_with_their_fields(tables, django_user_model):
    user = django_user_model.objects.create(username="ann")
    user_type = ContentType.objects.get_for_model(user)
    run_at = datetime(2031, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    plain = insert(task_name="tests.bgtasks_tasks.notify", args=["/tmp/x", 1], kwargs={"message": "m"},
                   run_at=run_at, priority=5, queue="emails", task_hash="a" * 40,
                   verbose_name="Mail for Ann", creator_content_type_id=user_type.pk, creator_object_id=user.pk)
    named = insert(task_name="custom.cleanup", args=["/tmp/x", "t"], priority=2000)
    retried = insert(task_name="tests.bgtasks_tasks.notify", args=["/tmp/x", 2], attempts=2, last_error=TRACEBACK,
                     run_at=run_at)
    repeating = insert(task_name="tests.bgtasks_tasks.notify", args=["/tmp/x", 3], repeat=86400,
                       repeat_until=run_at + timedelta(days=30))
    django_task = insert(task_name="tests.tasks.add", args=[1, 2])  # a plain Django task, by its dotted path
    out, err = run()
    assert count_line(out, "imported:") == 5 and count_line(out, "left out") == 0, out + err

    job = Job.objects.get(meta__background_task__source_id=plain)
    assert (job.task_path, job.args, job.kwargs) == ("tests.bgtasks_tasks.notify", ["/tmp/x", 1], {"message": "m"})
    assert (job.run_after, job.priority, job.queue_name, job.status) == (run_at, 5, "emails", JobStatus.READY)
    assert (job.attempts, job.max_attempts, job.errors) == (0, None, [])  # the limit in force applies: 3 here
    assert attempt_limit(job, default_task_backend) == 3
    assert job.meta["verbose_name"] == "Mail for Ann"
    assert job.meta["creator"] == {"content_type": "auth.user", "object_id": user.pk}
    assert job.meta["background_task"]["hash"] == "a" * 40

    job = Job.objects.get(meta__background_task__source_id=named)
    assert (job.task_path, job.priority, job.queue_name) == ("tests.bgtasks_tasks.cleanup", 100, "default")
    assert job.meta["background_task"]["priority"] == 2000

    job = Job.objects.get(meta__background_task__source_id=retried)
    assert job.attempts == 2
    [error] = job.errors
    assert error["exception_class_path"] == "builtins.ConnectionError"
    assert error["message"] == "mail server down" and error["traceback"] == TRACEBACK
    assert error["at"] == (run_at - timedelta(seconds=2 ** 4 + 5)).isoformat()

    job = Job.objects.get(meta__background_task__source_id=repeating)
    assert job.meta["background_task"]["repeat"] == 86400
    assert job.meta["background_task"]["repeat_until"] == (run_at + timedelta(days=30)).isoformat()

    job = Job.objects.get(meta__background_task__source_id=django_task)
    assert job.task_path == "tests.tasks.add"


def test_idempotent_batched_and_dry_run(tables):
    ids = [insert(task_name="tests.bgtasks_tasks.notify", args=["/tmp/x", n]) for n in range(7)]
    out, _ = run("--dry-run", "--batch-size", "3")
    assert "dry run: nothing written" in out and count_line(out, "would import:") == 7
    assert not Job.objects.exists()

    out, _ = run("--batch-size", "3", "--verbosity", "2")
    assert count_line(out, "imported:") == 7 and out.count("batch up to id") == 3
    assert sorted(Job.objects.values_list("meta__background_task__source_id", flat=True)) == ids

    ids.append(insert(task_name="tests.bgtasks_tasks.notify", args=["/tmp/x", 99]))
    out, _ = run("--batch-size", "3")
    assert count_line(out, "imported:") == 1 and count_line(out, "already imported") == 7
    assert Job.objects.count() == 8


def test_rows_that_cannot_be_imported_are_reported_and_left_for_a_later_run(tables):
    insert(task_name="shop.tasks.gift_wrap", args=[1])
    insert(task_name="shop.tasks.gift_wrap", args=[2])
    insert(task_name="tests.bgtasks_tasks.notify", task_params="{not json")
    insert(task_name="tests.bgtasks_tasks.notify", queue="nowhere")
    locked = insert(task_name="tests.bgtasks_tasks.notify", locked_by="4242", locked_at=timezone.now())
    insert(task_name="tests.bgtasks_tasks.notify", failed_at=timezone.now(), attempts=25)
    expired = insert(task_name="tests.bgtasks_tasks.notify", locked_by="1",
                     locked_at=timezone.now() - timedelta(hours=2))  # past MAX_RUN_TIME: free again
    out, err = run()
    assert count_line(out, "imported:") == 1 and count_line(out, "left out") == 6
    assert "unregistered task 'shop.tasks.gift_wrap': 2 row(s) left out" in err
    assert "task_params do not parse" in err
    assert "queue 'nowhere' is not in TASKS['QUEUES']: 1 row(s)" in err
    assert f"locked by a django-background-tasks worker that may still be running them (ids {locked})" in err
    assert "1 row(s) had already failed for good" in err
    assert list(Job.objects.values_list("meta__background_task__source_id", flat=True)) == [expired]

    out, err = run("--include-locked")
    assert count_line(out, "imported:") == 1 and count_line(out, "already imported") == 1
    assert Job.objects.filter(meta__background_task__source_id=locked).exists()


def test_completed_history_is_counted_not_imported(tables):
    insert("background_task_completedtask", task_name="tests.bgtasks_tasks.notify")
    insert("background_task_completedtask", task_name="tests.bgtasks_tasks.notify", failed_at=timezone.now())
    insert("background_task_completedtask", task_name="tests.bgtasks_tasks.notify")
    out, _ = run()
    assert "completed history (background_task_completedtask): 2 succeeded, 1 failed" in out
    assert not Job.objects.exists()


@override_settings(BACKGROUND_TASK_PRIORITY_ORDERING="ASC", MAX_ATTEMPTS=25)
def test_settings_of_the_old_package_apply(tables):
    insert(task_name="tests.bgtasks_tasks.notify", priority=3)
    run()
    job = Job.objects.get()
    assert (job.priority, attempt_limit(job, default_task_backend)) == (-3, 25)


def test_imported_jobs_keep_remove_existing_tasks_working(tables):
    digest = compat.task_hash("tests.bgtasks_tasks.refresh", ["/tmp/x", "k"], {})
    insert(task_name="tests.bgtasks_tasks.refresh", args=["/tmp/x", "k"], task_hash=digest)
    run()
    assert Job.objects.count() == 1
    t.refresh("/tmp/x", "k")  # remove_existing_tasks=True on the decorator
    assert Job.objects.count() == 1 and not Job.objects.filter(meta__background_task__source_id__isnull=False).exists()


def test_imported_jobs_run_once(tables, run_worker, tmp_path):
    log = tmp_path / "runs.jsonl"
    insert(task_name="tests.bgtasks_tasks.notify", args=[str(log), 1], run_at=timezone.now() - timedelta(minutes=1))
    insert(task_name="custom.cleanup", args=[str(log), "c"])
    run()
    run()
    run_worker()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(line["task"] for line in lines) == ["cleanup", "notify"]
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.SUCCESSFUL}


def test_imported_jobs_get_the_unique_and_limit_keys_of_an_enqueue(tables, workers, tmp_path):
    """Imported rows of a limited task run one at a time over two real workers, and two rows of
    a unique task with the same arguments run once: the keys are those an enqueue computes."""
    from jobs.limits import limit_key, unique_key
    from tests import tasks
    from tests.conftest import wait_for
    from tests.test_job_control import most_at_once, spans

    path, runs = tmp_path / "spans", tmp_path / "runs"
    for n in range(4):  # concurrency_key "one-at-a-time", limit 1
        insert(task_name="tests.tasks.one_at_a_time", args=[str(path), f"k:{n}", 0.3])
    for _ in range(2):  # the same key: one job stands for both
        insert(task_name="tests.tasks.unique_record", args=[str(runs), "once"])
    insert(task_name="tests.tasks.sync_account", args=[7], kwargs={"note": "imported"})
    out, err = run()
    run()  # a rerun imports nothing twice
    procs = [workers.start("--concurrency", "2") for _ in range(2)]
    wait_for(lambda: Job.objects.exclude(status=JobStatus.SUCCESSFUL).count() == 0 and Job.objects.count(),
             timeout=60, message="every imported job to finish")
    for proc in procs:
        assert proc.poll() is None, workers.output(proc)
    assert len(spans(path)["k"]) == 4 and most_at_once(spans(path)["k"]) == 1, spans(path)
    assert runs.read_text().splitlines() == ["once"]

    assert count_line(out, "imported:") == 6 and count_line(out, "unique, a READY job had it") == 1, out + err
    declared = {task.module_path: task for task in (tasks.one_at_a_time, tasks.unique_record, tasks.sync_account)}
    for job in Job.objects.all():
        task = declared[job.task_path]
        assert (job.unique_key, job.limit_key, job.concurrency_limit, job.max_attempts) == (
            unique_key(task, job.args, job.kwargs), limit_key(task, job.args, job.kwargs),
            getattr(task, "concurrency_limit", None), getattr(task, "max_attempts", None))
    assert Job.objects.get(task_path="tests.tasks.sync_account").unique_key.endswith(":account-7")


@pytest.mark.sqlite_only  # only SQLite stores a BLOB or text that is not UTF-8 in a text column
def test_a_row_the_driver_cannot_read_is_left_out_alone(tables):
    good = [insert(task_name="tests.bgtasks_tasks.notify", args=["/tmp/x", n]) for n in range(2)]
    bad = [insert(task_name="tests.bgtasks_tasks.notify", args=["/tmp/x", n]) for n in range(3)]
    good.append(insert(task_name="tests.bgtasks_tasks.notify", args=["/tmp/x", 9]))
    with connection.cursor() as cursor:
        cursor.execute("UPDATE background_task SET task_name = CAST(X'6e6f74ff' AS TEXT) WHERE id = %s", [bad[0]])
        cursor.execute("UPDATE background_task SET task_params = X'00ff' WHERE id = %s", [bad[1]])
        cursor.execute("UPDATE background_task SET verbose_name = X'41' WHERE id = %s", [bad[2]])
    for _ in range(2):  # a rerun goes past them again
        out, err = run("--batch-size", "10")
        assert count_line(out, "left out") == 3, out + err
        for row_id in bad:
            assert f"row id {row_id}: " in err
        assert "cannot read it" in err and "task_params is bytes" in err and "verbose_name is bytes" in err
    assert sorted(Job.objects.values_list("meta__background_task__source_id", flat=True)) == good


@pytest.mark.sqlite_only  # only SQLite keeps an infinite float in an integer column
def test_a_row_the_database_refuses_is_left_out_alone(tables, django_user_model):
    user_type = ContentType.objects.get_for_model(django_user_model)
    good = [insert(task_name="tests.bgtasks_tasks.notify", args=["/tmp/x", n]) for n in range(3)]
    refused = insert(task_name="tests.bgtasks_tasks.notify", args=["/tmp/x", 9], creator_content_type_id=user_type.pk,
                     creator_object_id=float("inf"))  # its meta becomes JSON the database refuses
    out, err = run()
    assert count_line(out, "imported:") == 3 and count_line(out, "left out") == 1, out + err
    assert f"row id {refused}: the database refused it" in err
    assert sorted(Job.objects.values_list("meta__background_task__source_id", flat=True)) == good


def test_bad_arguments(db):
    with pytest.raises(CommandError, match="not in DATABASES"):
        run("--database", "nope")
    with pytest.raises(CommandError, match="batch-size"):
        run("--batch-size", "0")
