"""Conformance with Django's Tasks API and with django-background-tasks (issue 10).

One section per item of the issue; each test failed on the code before its fix.
"""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from contextlib import contextmanager
from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import compat, enqueue_many
from jobs.framework import TaskResultStatus, task_backends, task_finished, task_started
from jobs.models import Job, JobStatus, QueueState
from jobs.sql import claim, claim_sql
from tests import bgtasks_tasks as bg
from tests import tasks
from tests.conftest import REPO, subprocess_env, sweep
from tests.test_compat_bgtasks import bgtasks_python  # noqa: F401  (the real package's venv, a fixture)


def job_of(result) -> Job:
    return Job.objects.get(pk=int(result.id))


@contextmanager
def two_backends(**other_options):
    """TASKS with a second alias, "other", of the same backend class (its own OPTIONS)."""
    base = settings.TASKS["default"]
    other = {**base, "OPTIONS": {**base["OPTIONS"], **other_options}}
    with override_settings(TASKS={"default": base, "other": other}):
        yield


@contextmanager
def options(**changes):
    """The default backend's OPTIONS changed, as after a deploy with new settings."""
    base = settings.TASKS["default"]
    with override_settings(TASKS={"default": {**base, "OPTIONS": {**base["OPTIONS"], **changes}}}):
        yield


@contextmanager
def received(signal):
    """A copy of every TaskResult sent through ``signal`` meanwhile, as it was when sent."""
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append(copy.deepcopy(task_result))

    signal.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        signal.disconnect(receiver)


def finish(result, run_worker, *, until=(JobStatus.SUCCESSFUL, JobStatus.FAILED), rounds=20, **worker):
    """Run burst workers until the job is finished (retries wait a backoff; burst leaves them)."""
    for _ in range(rounds):
        if job_of(result).status in until:
            return job_of(result)
        Job.objects.filter(pk=int(result.id), status=JobStatus.READY).update(run_after=timezone.now())
        run_worker(**worker)
    raise AssertionError(f"job {result.id} still {job_of(result).status} after {rounds} workers")


# -- 1. process_tasks --backend X keeps to X's jobs -----------------------------------------------


def test_1_a_worker_claims_only_the_jobs_of_its_backend_alias(run_worker):
    with two_backends():
        mine = tasks.add.using(backend="other").enqueue(1, 2)
        theirs = tasks.add.enqueue(3, 4)
        run_worker(backend_alias="other")
        assert job_of(mine).status == JobStatus.SUCCESSFUL
        assert job_of(theirs).status == JobStatus.READY and job_of(theirs).attempts == 0
        run_worker()
        assert job_of(theirs).status == JobStatus.SUCCESSFUL


def test_1_a_worker_takes_back_only_stale_jobs_of_its_backend_alias(transactional_db):
    with two_backends():
        result = tasks.add.using(backend="other").enqueue(1, 2)
        Job.objects.filter(pk=int(result.id)).update(status=JobStatus.RUNNING, attempts=1, worker_id="gone",
                                                      heartbeat_at=timezone.now() - timedelta(minutes=5))
        assert sweep() == 0
        assert job_of(result).status == JobStatus.RUNNING
        assert sweep(backend_alias="other") == 1
        assert job_of(result).status == JobStatus.READY


def old_finished(backend: str, n: int) -> None:
    now = timezone.now()
    Job.objects.bulk_create([Job(task_path="tests.tasks.add", backend=backend, status=JobStatus.SUCCESSFUL,
                                 run_after=now, enqueued_at=now, finished_at=now - timedelta(days=30))
                             for _ in range(n)])


def test_1_prune_jobs_keeps_to_its_backend_alias(db):
    with two_backends():
        old_finished("default", 3)
        old_finished("other", 2)
        out = StringIO()
        call_command("prune_jobs", "--backend", "other", stdout=out)
        assert "Deleted 2 successful" in out.getvalue()
        assert sorted(Job.objects.values_list("backend", flat=True)) == ["default"] * 3


def test_1_the_prune_task_keeps_to_its_backend_alias(run_worker):
    from jobs.tasks import prune_jobs

    with two_backends():
        old_finished("default", 3)
        old_finished("other", 2)
        result = prune_jobs.enqueue("other")
        run_worker()
        assert prune_jobs.get_result(result.id).return_value == {"successful": 2, "failed": 0}
        assert Job.objects.filter(backend="default", task_path="tests.tasks.add").count() == 3


def test_1_the_overview_counts_each_backends_jobs_apart(db):
    now = timezone.now()
    with two_backends():
        Job.objects.bulk_create([Job(task_path="tests.tasks.add", backend=alias, run_after=now, enqueued_at=now)
                                 for alias, n in (("default", 2), ("other", 5)) for _ in range(n)])
        client = Client()
        client.force_login(User.objects.create_superuser("root", password="pw"))
        response = client.get("/admin/jobs/queuestate/")
        assert response.status_code == 200
        rows = {(row.backend, row.name): row for row in response.context["overview"].queues}
        assert rows[("default", "default")].due == 2 and rows[("other", "default")].due == 5
        assert response.context["totals"]["due"] == 7
        assert b"Backend" in response.content  # several aliases: the table says which is which
        assert b'href="/admin/jobs/job/?queue=default&amp;backend=other&amp;status__exact=READY"' in response.content
        listed = client.get("/admin/jobs/job/?queue=default&backend=other&status__exact=READY")
        assert listed.context["cl"].result_count == 5


def backlog_of_another_backend(size: int = 3000) -> None:
    """Many due jobs of another alias ahead (priority 5) of a few of ours."""
    now = timezone.now()
    Job.objects.bulk_create(
        [Job(task_path="tests.tasks.add", backend="big", priority=5, run_after=now, enqueued_at=now)
         for _ in range(size)]
        + [Job(task_path="tests.tasks.add", backend="default", run_after=now, enqueued_at=now) for _ in range(5)],
        batch_size=5000)


@pytest.mark.sqlite_only
def test_1_the_claim_seeks_its_backend_in_the_claim_index_on_sqlite(transactional_db):
    backlog_of_another_backend()
    now = timezone.now()
    with connection.cursor() as cursor:
        sql, params = claim_sql(connection, worker_id="w", limit=4, now=now, queues=None, backend="default")
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
    assert "USING INDEX jobs_job_claim_idx (backend=?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    claimed = claim(worker_id="w", limit=10, now=now, backend="default")
    assert [job.backend for job in claimed] == ["default"] * 5


@pytest.mark.postgres_only
def test_1_the_claim_seeks_its_backend_in_the_claim_index_on_postgres(transactional_db):
    backlog_of_another_backend(20000)
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")
        sql, params = claim_sql(connection, worker_id="w", limit=4, now=now, queues=None, backend="default")
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    nodes = list(walk(plan[0]["Plan"]))
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan" and n["Relation Name"] == "jobs_job"], plan
    scans = [node for node in nodes if node.get("Index Name") == "jobs_job_claim_idx"]
    assert scans and "backend" in scans[0]["Index Cond"], scans
    # The index seek reads our 5 rows (4 of them), not the 20,000 of the other alias ahead of them.
    assert scans[0]["Actual Rows"] <= 5, scans


def walk(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from walk(child)


# -- 2. TaskResult.task is the task as enqueued ---------------------------------------------------


def test_2_enqueue_hands_back_the_task_as_enqueued(db):
    result = tasks.add.enqueue(1, 2)
    assert result.task == tasks.add and result.task.run_after is None  # Django's own test checks this
    fetched = tasks.add.get_result(result.id)
    assert fetched.task == tasks.add and fetched.task.run_after is None
    when = timezone.now() + timedelta(hours=1)
    later = tasks.add.using(run_after=when, priority=3).enqueue(1, 2)
    assert later.task.run_after == when and tasks.add.get_result(later.id).task.run_after == when
    assert tasks.add.get_result(later.id).task == tasks.add.using(run_after=when, priority=3)
    assert job_of(later).run_after == when  # still due then


def test_2_bulk_enqueue_hands_back_the_task_as_enqueued(db):
    results = enqueue_many(tasks.add, [((1, 2), {}), ((3, 4), {})])
    assert all(r.task == tasks.add and r.task.run_after is None for r in results)
    assert tasks.add.get_result(results[0].id).task.run_after is None


def test_2_the_running_task_and_the_signals_see_the_task_as_enqueued(run_worker):
    with received(task_started) as started, received(task_finished) as finished:
        result = tasks.task_as_seen.enqueue()
        run_worker()
    assert tasks.task_as_seen.get_result(result.id).return_value == {"run_after": None, "backend": "default"}
    assert [r.task.run_after for r in started + finished] == [None, None]
    when = timezone.now() - timedelta(seconds=1)
    result = tasks.task_as_seen.using(run_after=when).enqueue()
    run_worker()
    assert tasks.task_as_seen.get_result(result.id).return_value["run_after"] == when.isoformat()


def test_2_a_results_task_names_the_backend_it_was_fetched_from(db):
    """``TaskResult.refresh()`` asks ``result.task``'s backend: it must be the job's."""
    with two_backends():
        result = tasks.add.using(backend="other").enqueue(1, 2)
        fetched = task_backends["other"].get_result(result.id)
        assert fetched.task.backend == "other"
        fetched.refresh()
        assert fetched.status == TaskResultStatus.READY


# -- 3. a retried attempt is not reported as finished ---------------------------------------------


def test_3_task_finished_is_sent_once_when_the_job_finishes_not_per_retried_attempt(run_worker, caplog):
    with received(task_started) as started, received(task_finished) as finished, \
            caplog.at_level(logging.INFO, logger="django.tasks"):
        result = tasks.fail_times.enqueue(1)  # attempt 1 fails and is retried, attempt 2 succeeds
        finish(result, run_worker)
    assert [r.status for r in started] == [TaskResultStatus.RUNNING] * 2
    assert [(r.status, r.is_finished) for r in finished] == [(TaskResultStatus.SUCCESSFUL, True)]
    assert finished[0].return_value == 2 and finished[0].finished_at is not None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_3_a_final_failure_is_sent_once_with_every_error(run_worker):
    with received(task_finished) as finished:
        result = tasks.always_fails.enqueue()  # 3 attempts (OPTIONS)
        finish(result, run_worker)
    assert [(r.status, r.is_finished) for r in finished] == [(TaskResultStatus.FAILED, True)]
    assert len(finished[0].errors) == 3 and finished[0].finished_at is not None
    assert finished[0].errors[-1].exception_class_path == "builtins.RuntimeError"


def test_3_a_lost_workers_last_attempt_taken_back_is_reported_finished(transactional_db):
    result = tasks.add.enqueue(1, 2)
    Job.objects.filter(pk=int(result.id)).update(attempts=2)
    claim(worker_id="gone", limit=1, now=timezone.now())
    Job.objects.update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    with received(task_finished) as finished:
        assert sweep() == 1
    assert [(r.status, r.id) for r in finished] == [(TaskResultStatus.FAILED, result.id)]
    assert finished[0].errors[-1].exception_class_path == "jobs.exceptions.WorkerLost"


def test_3_a_retried_take_back_sends_nothing(transactional_db):
    tasks.add.enqueue(1, 2)
    claim(worker_id="gone", limit=1, now=timezone.now())
    Job.objects.update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    with received(task_finished) as finished:
        assert sweep() == 1
    assert finished == [] and Job.objects.get().status == JobStatus.READY


# -- 4. the backend's check() wants the jobs app installed ----------------------------------------


def test_4_check_reports_the_jobs_app_missing_from_installed_apps():
    backend = task_backends["default"]
    assert not [e for e in backend.check() if e.id == "jobs.E002"]
    without = [app for app in settings.INSTALLED_APPS if app not in ("jobs", "scheduler", "example")]
    with override_settings(INSTALLED_APPS=without):
        errors = [e for e in task_backends["default"].check() if e.id == "jobs.E002"]
    assert len(errors) == 1 and "'jobs'" in errors[0].msg and "INSTALLED_APPS" in errors[0].msg, errors


# -- 5. every command checks its options the same way ---------------------------------------------


def manage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("args, option", [
    (("process_tasks", "--sleep", "inf"), "--sleep"),
    (("process_tasks", "--duration", "nan"), "--duration"),
    (("process_tasks", "--concurrency", "100000"), "--concurrency"),
    (("prune_jobs", "--backend", "unknown"), "--backend"),
    (("import_background_tasks", "--backend", "unknown"), "--backend"),
])
def test_5_bad_options_stop_a_real_command_with_a_message_naming_the_option(transactional_db, args, option):
    proc = manage(*args, "--burst") if args[0] == "process_tasks" else manage(*args)
    assert proc.returncode != 0
    assert option in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, option", [
    (("process_tasks", "--sleep", "nan"), "--sleep"),
    (("process_tasks", "--sleep", "-1"), "--sleep"),
    (("process_tasks", "--sleep", "0"), "--sleep"),
    (("process_tasks", "--sleep", "1e-9"), "--sleep"),  # the floor of OPTIONS['poll_interval']: 0.01
    (("process_tasks", "--duration", "inf"), "--duration"),
    (("process_tasks", "--duration", "-1"), "--duration"),
    (("process_tasks", "--concurrency", "0"), "--concurrency"),
    (("process_tasks", "--concurrency", "257"), "--concurrency"),
    (("process_tasks", "--backend", "unknown"), "--backend"),
    (("prune_jobs", "--successful-after", "nan"), "--successful-after"),
    (("prune_jobs", "--failed-after", "inf"), "--failed-after"),
    (("prune_jobs", "--failed-after", "1e300"), "--failed-after"),
    (("prune_jobs", "--batch-size", "0"), "--batch-size"),
    (("import_background_tasks", "--batch-size", "0"), "--batch-size"),
    (("import_background_tasks", "--database", "nowhere"), "--database"),
])
def test_5_bad_options_raise_a_command_error_naming_the_option(transactional_db, args, option):
    with pytest.raises(CommandError) as info:
        call_command(*args, *(("--burst",) if args[0] == "process_tasks" else ()))
    assert option in str(info.value), info.value


def test_5_max_memory_below_the_workers_own_size_is_refused_at_start(transactional_db):
    proc = manage("process_tasks", "--no-scheduler", "--max-memory", "1")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "--max-memory 1 MiB is below this worker's own resident size" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "worker started" not in proc.stdout + proc.stderr


def test_5_a_backend_that_is_not_ours_is_named(transactional_db):
    from jobs.framework import FRAMEWORK

    dummy = f"{FRAMEWORK}.backends.dummy.DummyBackend"
    with override_settings(TASKS={**settings.TASKS, "dummy": {"BACKEND": dummy}}):
        for command in ("process_tasks", "prune_jobs", "import_background_tasks"):
            with pytest.raises(CommandError, match="--backend.*'dummy'.*DummyBackend"):
                call_command(command, "--backend", "dummy")


def test_5_good_values_still_work(transactional_db):
    call_command("process_tasks", "--burst", "--sleep", "0.5", "--duration", "0", "--concurrency", "2",
                 "--no-scheduler")
    out = StringIO()
    call_command("prune_jobs", "--successful-after", "0", "--failed-after", "86400", "--dry-run", stdout=out)
    assert "Would delete 0 successful" in out.getvalue()


# -- 6. the attempt limit in force is the one configured when an attempt ends --------------------


def test_6_a_lower_options_max_attempts_applies_to_jobs_already_queued(run_worker):
    result = tasks.always_fails.enqueue()  # queued while OPTIONS say 3
    with options(max_attempts=1):
        run_worker()
    job = job_of(result)
    assert job.status == JobStatus.FAILED and job.attempts == 1


def test_6_a_higher_options_max_attempts_applies_too(run_worker):
    result = tasks.always_fails.enqueue()
    with options(max_attempts=4):
        job = finish(result, run_worker)
    assert job.status == JobStatus.FAILED and job.attempts == 4


def test_6_a_tasks_own_max_attempts_is_kept(run_worker):
    result = tasks.always_fails_five.enqueue()
    with options(max_attempts=1):
        run_worker()
    job = job_of(result)
    assert job.status == JobStatus.READY and job.attempts == 1


def test_6_max_attempts_setting_applies_to_queued_background_tasks(run_worker, tmp_path):
    job = bg.fails(str(tmp_path / "runs"), "x")  # queued under OPTIONS' 3, no MAX_ATTEMPTS
    with override_settings(MAX_ATTEMPTS=1):
        run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempts == 1


def test_6_the_take_back_of_a_lost_attempt_applies_the_current_limit(transactional_db):
    result = tasks.add.enqueue(1, 2)
    claim(worker_id="gone", limit=1, now=timezone.now())
    Job.objects.update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    with options(max_attempts=1):
        assert sweep() == 1
    job = job_of(result)
    assert job.status == JobStatus.FAILED and job.attempts == 1 and "was lost" in job.errors[0]["message"]


def test_6_a_row_that_names_its_own_limit_keeps_it(run_worker):
    """Rows enqueued before the limit was looked up at run time (and imported ones) carry a number."""
    result = tasks.always_fails.enqueue()
    Job.objects.filter(pk=int(result.id)).update(max_attempts=2)
    with options(max_attempts=1):
        job = finish(result, run_worker)
    assert job.attempts == 2


def test_6_the_admin_shows_the_limit_that_applies(db):
    result = tasks.always_fails.enqueue()
    Job.objects.filter(pk=int(result.id)).update(attempts=1)
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw"))
    with options(max_attempts=7):
        page = client.get("/admin/jobs/job/").content.decode()
        detail = client.get(f"/admin/jobs/job/{result.id}/change/").content.decode()
    assert '<span class="jobs-of"> / 7</span>' in page
    assert "1 of 7" in detail


# -- 7. a repetition follows the run time the job actually had -----------------------------------


def test_7_the_next_run_follows_a_rescheduled_run_time(run_worker, tmp_path):
    path = str(tmp_path / "runs")
    start = timezone.now() - timedelta(minutes=10)
    job = bg.notify(path, 1, schedule=start, repeat=compat.HOURLY)
    moved = start - timedelta(minutes=30)
    assert bg.notify(path, 1, schedule={"action": compat.TaskSchedule.RESCHEDULE_EXISTING, "run_at": moved}) is None
    run_worker()
    job.refresh_from_db()
    successor = Job.objects.get(pk=job.meta["background_task"]["next_job"])
    assert successor.run_after == moved + timedelta(hours=1)


# -- 8. attribute shapes of django-background-tasks ----------------------------------------------


def test_8_the_proxy_name_is_the_background_task_name():
    assert bg.notify.name == "tests.bgtasks_tasks.notify"
    assert bg.cleanup.name == "custom.cleanup"
    assert str(bg.notify) == "TaskProxy(tests.bgtasks_tasks.notify)"
    assert bg.notify.module_path == "tests.bgtasks_tasks.notify"  # what Django and the worker go by


def test_8_a_task_with_a_custom_name_runs_and_reads_back_as_before(run_worker, tmp_path):
    with received(task_finished) as finished:
        job = bg.cleanup(str(tmp_path / "runs"), "t")
        run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCESSFUL and finished[0].task.name == "custom.cleanup"
    assert bg.cleanup.get_result(str(job.pk)).status == TaskResultStatus.SUCCESSFUL


def test_8_task_schedule_run_at_is_an_attribute():
    now = timezone.now()
    assert abs((compat.TaskSchedule(run_at=60).run_at - now).total_seconds() - 60) < 2
    assert abs((compat.TaskSchedule().run_at - now).total_seconds()) < 2
    assert abs((compat.TaskSchedule(run_at=timedelta(minutes=2)).run_at - now).total_seconds() - 120) < 2
    when = now + timedelta(days=1)
    assert compat.TaskSchedule.create({"run_at": when, "priority": 2}).run_at == when


REPR_CASES = "[TaskSchedule(run_at=60, priority=3), TaskSchedule(), TaskSchedule(run_at=timedelta(seconds=5))," \
             " TaskSchedule.create({'priority': 4, 'action': TaskSchedule.CHECK_EXISTING})]"


def test_8_task_schedule_repr_is_the_originals(bgtasks_python):  # noqa: F811
    code = ("import django; from django.conf import settings; "
            "settings.configure(INSTALLED_APPS=['django.contrib.contenttypes', 'background_task']); django.setup(); "
            f"from datetime import timedelta; from background_task.tasks import TaskSchedule; print({REPR_CASES})")
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(bgtasks_python), "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    from jobs.compat import TaskSchedule  # noqa: F401  (used by the eval below)

    assert repr(eval(REPR_CASES)) == proc.stdout.strip()


# -- 9. InvalidTaskError ----------------------------------------------------------------------------


def test_9_invalid_task_error_exists_and_is_not_retried(run_worker, tmp_path):
    from jobs.compat import BackgroundTaskError, InvalidTaskError

    assert issubclass(InvalidTaskError, BackgroundTaskError) and issubclass(BackgroundTaskError, Exception)
    assert BackgroundTaskError("m", errors=["e"]).errors == ["e"]
    with override_settings(MAX_ATTEMPTS=5):
        job = bg.invalid(str(tmp_path / "runs"), "x")
        run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempts == 1
    assert job.errors[0]["exception_class_path"] == "jobs.compat.InvalidTaskError"


# -- 10. admin actions leave LogEntry history, in one INSERT ----------------------------------


def admin_client() -> tuple[Client, User]:
    user = User.objects.create_superuser("root", password="pw")
    client = Client()
    client.force_login(user)
    return client, user


def make(status: str, n: int) -> list[Job]:
    now = timezone.now()
    fields = dict(task_path="tests.tasks.add", run_after=now + timedelta(hours=1), enqueued_at=now, status=status)
    if status in (JobStatus.FAILED, JobStatus.SUCCESSFUL):
        fields.update(finished_at=now, attempts=1)
    if status == JobStatus.RUNNING:
        fields.update(attempts=1, worker_id="w", heartbeat_at=now)
    return Job.objects.bulk_create([Job(**fields) for _ in range(n)])


def history(flag: int = CHANGE) -> list[LogEntry]:
    return list(LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(Job), action_flag=flag)
                .order_by("object_id"))


def log_inserts(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].startswith("INSERT") and "django_admin_log" in q["sql"]]


@pytest.mark.parametrize("action, status, words", [
    ("requeue_jobs", JobStatus.FAILED, "Requeued"),
    ("cancel_jobs", JobStatus.READY, "Cancelled: not needed"),
    ("run_jobs_now", JobStatus.READY, "Made due now"),
])
def test_10_bulk_actions_log_who_changed_which_jobs_in_one_insert(db, action, status, words):
    client, user = admin_client()
    changed = make(status, 30)
    running = make(JobStatus.RUNNING, 2)  # only cancel touches a running job (it asks its worker): history then
    with CaptureQueriesContext(connection) as queries:
        response = client.post("/admin/jobs/job/", {"action": action, "index": "0", "reason": "not needed",
                                                    "_selected_action": [str(j.pk) for j in changed + running]})
    assert response.status_code == 302
    entries = history()
    touched = changed + running if action == "cancel_jobs" else changed
    assert sorted(int(e.object_id) for e in entries) == sorted(j.pk for j in touched)
    assert all(e.user_id == user.pk and words in e.change_message for e in entries), entries[0].change_message
    assert entries[0].object_repr.startswith("tests.tasks.add #")
    assert len(log_inserts(queries)) == 1


def test_10_select_all_across_pages_logs_every_changed_job(db):
    client, _ = admin_client()
    make(JobStatus.FAILED, 120)
    client.post("/admin/jobs/job/", {"action": "requeue_jobs", "index": "0", "select_across": "1",
                                     "_selected_action": ["1"]})
    assert len(history()) == 120


def test_10_delete_logs_the_deleted_jobs(db):
    client, user = admin_client()
    gone = make(JobStatus.SUCCESSFUL, 4)
    with CaptureQueriesContext(connection) as queries:
        client.post("/admin/jobs/job/", {"action": "delete_selected", "index": "0", "post": "yes",
                                         "_selected_action": [str(j.pk) for j in gone]})
    assert not Job.objects.exists()
    entries = history(DELETION)
    assert sorted(int(e.object_id) for e in entries) == sorted(j.pk for j in gone)
    assert entries[0].object_repr == f"tests.tasks.add #{entries[0].object_id} (SUCCESSFUL)"
    assert len(log_inserts(queries)) == 1


@pytest.mark.parametrize("verb, status, words", [
    ("requeue", JobStatus.FAILED, "Requeued"),
    ("cancel", JobStatus.READY, "Cancelled"),
    ("run-now", JobStatus.READY, "Made due now"),
])
def test_10_the_job_pages_buttons_log_too(db, verb, status, words):
    client, user = admin_client()
    (job,) = make(status, 1)
    client.post(f"/admin/jobs/job/{job.pk}/{verb}/")
    (entry,) = history()
    assert entry.object_id == str(job.pk) and entry.user_id == user.pk and words in entry.change_message
    client.post(f"/admin/jobs/job/{job.pk}/{verb}/")  # nothing left to change: nothing logged
    assert len(history()) == 1
    page = client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert f'href="/admin/jobs/job/{job.pk}/history/"' in page
    assert words in client.get(f"/admin/jobs/job/{job.pk}/history/").content.decode()


def test_10_pause_and_resume_are_logged(db):
    client, user = admin_client()
    client.post("/admin/jobs/queuestate/pause/", {"name": "emails", "paused": "1"})
    client.post("/admin/jobs/queuestate/pause/", {"name": "emails", "paused": "0"})
    entries = list(LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(QueueState))
                   .order_by("id"))
    assert [(e.object_id, e.change_message, e.user_id) for e in entries] == [
        ("emails", "Paused", user.pk), ("emails", "Resumed", user.pk)]


@pytest.mark.postgres_only
def test_10_a_group_requeue_with_its_history_goes_in_bounded_batches_of_few_statements(db):
    """How long it takes is the benchmark's to say (scripts/admin_timing.py); here, its shape: the
    whole group requeued and recorded in batches of REQUEUE_BATCH jobs, each a handful of
    statements whatever its size (nothing per job), no statement over more than one batch."""
    from jobs.admin.actions import REQUEUE_BATCH

    total = 20 * REQUEUE_BATCH
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO jobs_job (task_path, backend, queue_name, priority, args, kwargs, status, "
                       "run_after, enqueued_at, finished_at, attempts, worker_id, worker_ids, errors, meta) "
                       "SELECT 'tests.tasks.add', 'default', 'default', 0, '[]', '{}', 'FAILED', %s, %s, %s, 3, '', "
                       "'[]', '[]', '{}' FROM generate_series(1, %s)", [now, now, now, total])
    client, _ = admin_client()
    with CaptureQueriesContext(connection) as ctx:
        client.post("/admin/jobs/job/", {"action": "requeue_jobs", "index": "0", "select_across": "1",
                                         "_selected_action": ["1"]})
    assert LogEntry.objects.count() == total and Job.objects.filter(status=JobStatus.READY).count() == total
    updates = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith('UPDATE "jobs_job"')]
    assert len(updates) == total // REQUEUE_BATCH  # one per batch
    per_batch = len(ctx.captured_queries) / (total // REQUEUE_BATCH)
    print(f"{per_batch:.1f} statements per batch of {REQUEUE_BATCH}")
    assert per_batch <= 12, f"{per_batch:.1f} statements per batch of {REQUEUE_BATCH}"
