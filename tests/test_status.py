"""``manage.py jobs_status``: what it reports, its exit codes and what it costs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.models import JobStatus, QueueState, WorkerProcess
from tests.conftest import REPO, subprocess_env
from tests.test_admin import make_jobs


def status(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of jobs_status run in this process."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("jobs_status", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def alive_worker(name: str = "web-1:42:abcd", **fields) -> WorkerProcess:
    now = timezone.now()
    defaults = dict(hostname="web-1", pid=42, queues=["emails"], concurrency=4, started_at=now, heartbeat_at=now)
    defaults.update(fields)
    return WorkerProcess.objects.create(worker_id=name, **defaults)


@pytest.fixture
def busy_site(db):
    now = timezone.now()
    make_jobs(3, JobStatus.READY, queue_name="emails", run_after=now - timedelta(minutes=5))
    make_jobs(2, JobStatus.READY, queue_name="emails", run_after=now + timedelta(minutes=5))
    make_jobs(2, JobStatus.RUNNING, queue_name="emails", worker_id="web-1:42:abcd")
    make_jobs(4, JobStatus.SUCCESSFUL, queue_name="reports", finished_at=now - timedelta(minutes=3))
    make_jobs(2, JobStatus.FAILED, queue_name="reports", task_path="tests.tasks.always_fails",
              finished_at=now - timedelta(minutes=3))
    make_jobs(1, JobStatus.FAILED, task_path="tests.tasks.noop", finished_at=now - timedelta(hours=2))
    make_jobs(1, JobStatus.FAILED, task_path="tests.tasks.noop", finished_at=now - timedelta(hours=30))  # too old
    alive_worker()
    WorkerProcess.objects.create(worker_id="gone:7:ffff", hostname="gone", pid=7, started_at=now,
                                 heartbeat_at=now - timedelta(minutes=5))
    QueueState.objects.create(name="reports", paused=True)


def test_json_report(busy_site):
    code, out, err = status("--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["ok"] is True and report["problems"] == [] and report["schema"] == 1
    assert report["stale_after"] == 3.0  # the tests' OPTIONS
    queues = {q["name"]: q for q in report["queues"]}
    assert sorted(queues) == ["default", "emails", "other", "reports"]  # configured queues too
    emails = queues["emails"]
    assert emails["counts"] == {"READY": 5, "RUNNING": 2, "SUCCESSFUL": 0, "FAILED": 0, "CANCELLED": 0, "WAITING": 0}
    assert (emails["due"], emails["scheduled"], emails["paused"], emails["estimated"]) == (3, 2, False, [])
    assert 290 < emails["lag_seconds"] < 360 and emails["oldest_due"]
    assert queues["reports"]["paused"] is True and queues["reports"]["lag_seconds"] is None
    assert queues["reports"]["counts"]["FAILED"] == 2
    (worker,) = report["workers"]  # the stale one is not alive
    assert worker["worker_id"] == "web-1:42:abcd" and worker["queues"] == ["emails"]
    assert (worker["concurrency"], worker["busy"], worker["hostname"], worker["pid"]) == (4, 2, "web-1", 42)
    assert 0 <= worker["heartbeat_age_seconds"] < 60 and worker["heartbeat_at"]
    assert report["failed_24h"]["total"] == 3
    assert [(t["task"], t["failures"]) for t in report["failed_24h"]["by_task"]] == [
        ("tests.tasks.always_fails", 2), ("tests.tasks.noop", 1)]
    assert report["finished_last_hour"] == {"successful": 4, "failed": 2}


def test_human_report(busy_site):
    code, out, err = status()
    assert (code, err) == (0, "")
    first, *rest = out.splitlines()
    assert first.startswith("4 queues, 1 worker alive, longest lag 5m")  # no threshold given: no OK
    assert first.endswith("3 failed in 24 h")
    table = "\n".join(rest)
    emails = next(line for line in rest if line.startswith("emails"))
    assert emails.split()[:9] == ["emails", "active", "3", "2", "0", "2", "0", "0", "0"]  # ... waiting, running
    assert next(line for line in rest if line.startswith("reports")).split()[1] == "paused"
    assert "web-1:42:abcd  emails" in table and "2/4" in table and "gone:7" not in table
    assert "tests.tasks.always_fails" in table and "finished in the last hour: 4 successful, 2 failed" in table


@pytest.mark.parametrize(("args", "broken"), [
    (["--max-lag", "60"], "lag: queue 'emails' has a job waiting"),
    (["--min-workers", "2"], "workers: 1 alive, heartbeat within 3 s (under --min-workers 2)"),
    (["--max-failed", "2"], "failed: 3 jobs failed in the last 24 h (over --max-failed 2; tests.tasks.always_fails 2"),
])
def test_each_threshold_broken_exits_1_naming_it(busy_site, args, broken):
    code, out, err = status(*args)
    assert code == 1
    assert err.startswith(f"jobs_status: {broken}") and len(err.splitlines()) == 1
    assert out.startswith(f"FAILING: {broken}")
    code, out, err = status("--json", *args)
    assert code == 1 and json.loads(out)["ok"] is False and json.loads(out)["problems"][0].startswith(broken)


@pytest.mark.parametrize("args", [["--max-lag", "600"], ["--min-workers", "1"], ["--max-failed", "3"],
                                  ["--max-lag", "600", "--min-workers", "0", "--max-failed", "10"]])
def test_thresholds_that_hold_exit_0(busy_site, args):
    code, out, err = status(*args)
    assert (code, err) == (0, "") and out.startswith("OK: ")


def test_every_broken_threshold_is_named(busy_site):
    code, out, err = status("--max-lag", "1", "--min-workers", "3", "--max-failed", "0")
    assert code == 1
    assert [line.split(":")[1].strip() for line in err.splitlines()] == ["lag", "workers", "failed"]


def test_a_paused_queue_is_not_held_to_max_lag(db):
    make_jobs(1, JobStatus.READY, queue_name="reports", run_after=timezone.now() - timedelta(hours=1))
    assert status("--max-lag", "60")[0] == 1
    QueueState.objects.create(name="reports", paused=True)
    assert status("--max-lag", "60")[0] == 0


def test_no_worker_at_all(db):
    code, _, err = status("--min-workers", "1")
    assert code == 1 and "workers: 0 alive" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--max-lag", "nan"], "--max-lag must be a finite number of seconds >= 0, got nan"),
    (["--max-lag", "inf"], "--max-lag must be a finite number of seconds >= 0, got inf"),
    (["--max-lag", "-1"], "--max-lag must be a finite number of seconds >= 0, got -1.0"),
    (["--max-lag", "soon"], "argument --max-lag: invalid float value: 'soon'"),
    (["--min-workers", "-1"], "--min-workers must be a whole number >= 0, got -1"),
    (["--min-workers", "1.5"], "argument --min-workers: invalid int value: '1.5'"),
    (["--max-failed", "-3"], "--max-failed must be a whole number >= 0, got -3"),
    (["--backend", "nope"], "--backend: TASKS has no usable backend 'nope'"),
])
def test_bad_options_are_a_command_error_naming_them(db, args, message):
    with pytest.raises(CommandError, match=message.replace(".", r"\.").replace("(", r"\(")):
        call_command("jobs_status", *args, stdout=io.StringIO(), stderr=io.StringIO())


def test_a_backend_that_is_not_this_one_is_refused(db):
    tasks = {**settings.TASKS, "dummy": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}}
    if "django_tasks" in settings.INSTALLED_APPS:
        tasks["dummy"]["BACKEND"] = "django_tasks.backends.dummy.DummyBackend"
    with override_settings(TASKS=tasks):
        with pytest.raises(CommandError, match="TASKS\\['dummy'\\] is DummyBackend, not jobs.backends.DatabaseBackend"):
            call_command("jobs_status", "--backend", "dummy", stdout=io.StringIO())


def test_backend_chooses_stale_after_and_queues(db):
    alive_worker(heartbeat_at=timezone.now() - timedelta(seconds=10))  # stale after 3 s, alive after 60 s
    slow = {"BACKEND": "jobs.backends.DatabaseBackend", "QUEUES": ["slow"], "OPTIONS": {"stale_after": 60}}
    with override_settings(TASKS={**settings.TASKS, "slow": slow}):
        both = json.loads(status("--json")[1])
        assert both["stale_after"] == 3.0 and both["workers"] == []
        assert "slow" in {q["name"] for q in both["queues"]}
        only = json.loads(status("--json", "--backend", "slow")[1])
        assert only["stale_after"] == 60.0 and len(only["workers"]) == 1
        assert {q["name"] for q in only["queues"]} == {"slow"}


def test_queries_are_few_and_do_not_grow_with_rows(db, django_assert_num_queries):
    make_jobs(2)
    alive_worker()
    with CaptureQueriesContext(connection) as ctx:
        status("--json")
    assert len(ctx.captured_queries) <= 7, [q["sql"] for q in ctx.captured_queries]
    make_jobs(60, JobStatus.FAILED, queue_name="emails", task_path="tests.tasks.always_fails")
    make_jobs(60, JobStatus.READY, queue_name="reports")
    make_jobs(5, JobStatus.FAILED, task_path="tests.tasks.noop")
    alive_worker("web-2:43:beef")
    with django_assert_num_queries(len(ctx.captured_queries)):
        status("--json")


# -- as a real process: what cron, a systemd timer or Nagios sees -------------------------

def run_command(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "manage.py"), "jobs_status", *args], cwd=REPO,
                          env=subprocess_env(**env), capture_output=True, text=True, timeout=60)


def test_exit_codes_as_a_process(transactional_db):
    ok = run_command("--max-failed", "0")
    assert (ok.returncode, ok.stderr) == (0, "") and ok.stdout.startswith("OK: ")
    broken = run_command("--min-workers", "1")
    assert broken.returncode == 1 and broken.stdout.startswith("FAILING: workers: 0 alive")
    assert broken.stderr == "jobs_status: workers: 0 alive, heartbeat within 3 s (under --min-workers 1)\n"
    for bad in (["--max-lag", "nan"], ["--max-lag", "x"]):
        refused = run_command(*bad)
        assert refused.returncode == 2 and "--max-lag" in refused.stderr and "Traceback" not in refused.stderr
        assert refused.stdout == ""


def test_a_database_it_cannot_read_exits_2_without_a_traceback(transactional_db, tmp_path):
    missing = str(tmp_path / "empty.sqlite3") if connection.vendor == "sqlite" else "no_such_database"
    result = run_command("--min-workers", "0", JOBS_TEST_DB_NAME=missing)
    assert result.returncode == 2, result.stderr
    assert "cannot read the jobs tables" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.sqlite_only  # a file of SQLite's
@pytest.mark.parametrize("kind", ["not a database", "cannot be opened"])
def test_a_sqlite_file_it_cannot_open_exits_2_without_a_traceback(transactional_db, tmp_path, kind):
    path = tmp_path / "jobs.sqlite3"
    if kind == "not a database":
        path.write_bytes(b"this is no SQLite file, " * 100)
    else:
        path = tmp_path / "no such folder" / "jobs.sqlite3"
    result = run_command("--min-workers", "0", JOBS_TEST_DB_NAME=str(path))
    assert result.returncode == 2, result.stderr
    assert "cannot read the jobs tables" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.postgres_only
def test_big_counts_are_marked_as_estimates(db, monkeypatch):
    monkeypatch.setattr("jobs.stats.EXACT_UP_TO", 20)
    make_jobs(60, JobStatus.SUCCESSFUL, queue_name="reports")
    make_jobs(30, JobStatus.READY, queue_name="reports")
    make_jobs(5, JobStatus.FAILED, queue_name="reports")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")
    reports = next(q for q in json.loads(status("--json")[1])["queues"] if q["name"] == "reports")
    assert reports["estimated"] == ["READY", "SUCCESSFUL", "due", "scheduled"]
    assert reports["counts"]["SUCCESSFUL"] >= 21 and reports["counts"]["FAILED"] == 5
    text = status()[1]
    assert "~" in next(line for line in text.splitlines() if line.startswith("reports"))
    assert "~ the database's estimate: counts over" in text


@pytest.mark.postgres_only
def test_counts_read_the_queue_index_even_before_vacuum(transactional_db, monkeypatch):
    """Fresh rows are not all-visible yet: the planner must still walk the index, not the table.

    A small cap makes "LIMIT cap" of a sequential scan look cheap at this size, as the
    real cap does at a million rows; for a rare status that scan reads the whole table.
    """
    from jobs import stats
    from jobs.models import Job

    monkeypatch.setattr("jobs.stats.EXACT_UP_TO", 100)
    now = timezone.now()
    Job.objects.bulk_create([Job(task_path="tests.tasks.add", queue_name=("default", "emails")[i % 2],
                                 status=JobStatus.SUCCESSFUL if i % 50 else JobStatus.READY, run_after=now,
                                 enqueued_at=now, finished_at=now) for i in range(40000)], batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")  # statistics, but no VACUUM: no page is all-visible
        cursor.execute("SELECT relallvisible FROM pg_class WHERE relname = 'jobs_job'")
        assert cursor.fetchone()[0] == 0
    with CaptureQueriesContext(connection) as ctx:
        stats.snapshot(now)
    counts = next(q["sql"] for q in ctx.captured_queries if "unnest(" in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + counts)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan on jobs_job" not in plan and "jobs_job_queue_idx" in plan, plan


# MySQL/MariaDB's strict time columns hold no unreadable time but the zero date, which is long past:
# such a failure is not in the last 24 h (tests/test_admin.py shows its row rendered on MariaDB too).
@pytest.mark.vendors("sqlite", "postgresql")
@pytest.mark.django_db
def test_a_failed_row_with_an_unreadable_time_is_counted_not_fatal(admin_client, settings):
    """One FAILED row whose finished_at is no time (and a READY one whose run_after is none):
    the overview, /jobs/metrics and jobs_status still answer, and count the failure."""
    from tests.test_admin import OVERVIEW, raw_update

    settings.JOBS_METRICS_TOKEN = token = "t" * 32
    (good,) = make_jobs(1, JobStatus.FAILED, task_path="tests.tasks.always_fails")
    (bad,) = make_jobs(1, JobStatus.FAILED, task_path="tests.tasks.noop")
    (ready,) = make_jobs(1, JobStatus.READY, run_after=timezone.now() - timedelta(minutes=1))
    pg = connection.vendor == "postgresql"
    raw_update("jobs_job", "id", bad.pk, finished_at="infinity" if pg else "soon")
    raw_update("jobs_job", "id", ready.pk, run_after="-infinity" if pg else "0")
    assert admin_client.get(OVERVIEW).status_code == 200
    metrics = admin_client.get("/jobs/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert metrics.status_code == 200, metrics.content
    assert b'jobs_failed_last_24h{task="tests.tasks.noop"} 1.0' in metrics.content
    code, out, err = status("--json")
    assert code == 0, err
    failing = {row["task"]: row for row in json.loads(out)["failed_24h"]["by_task"]}
    assert failing["tests.tasks.noop"] == {"task": "tests.tasks.noop", "failures": 1, "last_failure": None}
    assert failing["tests.tasks.always_fails"]["last_failure"] is not None
    code, out, err = status()
    assert code == 0 and "unreadable" in out, out + err
