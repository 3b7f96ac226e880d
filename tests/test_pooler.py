"""Workers behind a real PgBouncer in transaction pooling (``make test-pgbouncer``, tests.settings_pgbouncer)."""

import os

import psycopg
import pytest
from django.db import connection

from jobs.models import Job, JobStatus
from tests import tasks
from tests.conftest import subprocess_env, wait_for

pytestmark = pytest.mark.pgbouncer_only


def _through_pgbouncer(database: str) -> str:
    return os.environ["JOBS_TEST_PGBOUNCER_URL"].rsplit("/", 1)[0] + f"/{database}"


def test_workers_behind_the_pooler_leave_no_session_settings_for_other_clients(workers):
    procs = [workers.start("--concurrency", "2") for _ in range(2)]
    for proc in procs:
        workers.wait_for_output(proc, "worker started")
    results = [tasks.add.enqueue(i, i) for i in range(50)]
    wait_for(lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == len(results), timeout=60,
             message="every job to finish through the pooler")
    seen = set()
    url = _through_pgbouncer(connection.settings_dict["NAME"])
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as other_client:
        for _ in range(60):  # each statement may get another of the pool's server connections
            seen.add(other_client.execute("SELECT current_setting('lock_timeout'), "
                                          "current_setting('idle_in_transaction_session_timeout')").fetchone())
    assert seen == {("0", "0")}, seen


def test_behind_the_pooler_without_a_direct_connection_workers_poll(workers):
    proc = workers.start(env=subprocess_env(DATABASE_DIRECT_URL="none"))
    workers.wait_for_output(proc, "no wake-up listener")
    result = tasks.add.enqueue(2, 3)
    job = wait_for(lambda: Job.objects.filter(pk=result.id, status=JobStatus.SUCCESSFUL).first(), timeout=10,
                   message="the job, found by polling")
    assert job.return_value == 5


def test_listen_through_the_pooler_is_noticed_and_said(workers):
    """A project that points its workers at PgBouncer without the pooler settings: LISTEN hears
    nothing, which the worker finds out at start and says, naming the settings."""
    proc = workers.start(env=subprocess_env(JOBS_TEST_POOLER_SETTINGS="off"))
    output = workers.wait_for_output(proc, "LISTEN hears nothing")
    assert "DATABASE_POOLER=transaction" in output


def test_behind_the_pooler_without_a_direct_connection_a_cancel_is_still_heard_within_a_second_or_two(
        workers, record_dir):
    import time

    import jobs
    from jobs import control

    path = record_dir / "runs"
    proc = workers.start(env=subprocess_env(DATABASE_DIRECT_URL="none", JOBS_TEST_OPTIONS='{"stale_after": 60}'))
    workers.wait_for_output(proc, "no wake-up listener")
    result = tasks.cooperative.enqueue(str(path))
    wait_for(lambda: path.exists() and "started" in path.read_text(), message="the job to start")
    asked = time.monotonic()
    assert jobs.cancel(result.id, "now") == control.REQUESTED
    wait_for(lambda: "saw the cancel" in path.read_text(), timeout=15, message="the job to hear of its cancel")
    took = time.monotonic() - asked
    assert took < 2.5, f"heard after {took:.2f}s (heartbeats are 20 s apart)"
    wait_for(lambda: Job.objects.get(pk=result.id).status == JobStatus.CANCELLED, message="CANCELLED")
