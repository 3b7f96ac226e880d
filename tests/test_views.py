"""jobs.urls: ``metrics`` and ``health``, who may read them, what they say and what they cost."""

from __future__ import annotations

import signal
import sys
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core import checks
from django.db import OperationalError, connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs.models import JobStatus, QueueState, WorkerProcess
from tests.conftest import wait_for
from tests.test_admin import make_jobs

METRICS, HEALTH = "/jobs/metrics", "/jobs/health"
TOKEN = "Zq3-tT0k3n_for.tests~only+0123456789/="


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def samples(body: bytes) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def alive_worker(name: str = "web-1:42:abcd", **fields) -> WorkerProcess:
    now = timezone.now()
    defaults = dict(hostname="web-1", pid=42, concurrency=4, started_at=now, heartbeat_at=now)
    return WorkerProcess.objects.create(worker_id=name, **{**defaults, **fields})


def test_the_urls():
    assert reverse("jobs:metrics") == METRICS and reverse("jobs:health") == HEALTH


# -- access -------------------------------------------------------------------------------

@pytest.fixture
def token(settings):
    settings.JOBS_METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.mark.django_db
@pytest.mark.parametrize("url", [METRICS, HEALTH])
@pytest.mark.parametrize("headers", [
    {},
    bearer("wrong"),
    bearer(TOKEN[:-1]),
    bearer(TOKEN + "x"),
    bearer(""),
    {"HTTP_AUTHORIZATION": TOKEN},  # no scheme
    {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"},
    bearer("é" + TOKEN[1:]),  # not ASCII: refused, not a 500
    {"HTTP_X_TOKEN": TOKEN},
], ids=["anonymous", "wrong", "prefix", "longer", "empty", "no-scheme", "basic", "non-ascii", "other-header"])
def test_anyone_without_the_token_gets_403(client, token, url, headers):
    response = client.get(url, **headers)
    assert response.status_code == 403
    assert b"Bearer <JOBS_METRICS_TOKEN>" in response.content and TOKEN.encode() not in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("url", [METRICS, HEALTH])
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_token_opens_both(client, token, url, scheme):
    alive_worker()
    response = client.get(url, HTTP_AUTHORIZATION=f"{scheme} {TOKEN}")
    assert response.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("url", [METRICS, HEALTH])
@pytest.mark.parametrize("header", ["", "Bearer ", "Bearer None", "Bearer  "])
def test_without_a_token_set_nobody_gets_in_by_header(client, settings, url, header):
    settings.JOBS_METRICS_TOKEN = ""
    alive_worker()
    assert client.get(url, HTTP_AUTHORIZATION=header).status_code == 403
    del settings.JOBS_METRICS_TOKEN
    assert client.get(url, HTTP_AUTHORIZATION=header).status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("url", [METRICS, HEALTH])
def test_staff_users_get_in_and_other_users_do_not(url):
    alive_worker()
    staff = User.objects.create_user("ops", password="pw", is_staff=True)
    member = User.objects.create_user("member", password="pw")
    as_staff, as_member = Client(), Client()
    as_staff.force_login(staff)
    as_member.force_login(member)
    assert as_staff.get(url).status_code == 200
    assert as_member.get(url).status_code == 403
    assert as_member.get(url, **bearer("wrong")).status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("url", [METRICS, HEALTH])
def test_with_the_database_down_who_may_read_is_decided_first(client, token, url):
    """403 for anyone without the token, whatever cookie they bring; 503 only for the token.
    A staff session cannot be read without the database: not authorised then either."""
    staff = User.objects.create_user("ops", password="pw", is_staff=True)
    as_staff = Client()
    as_staff.force_login(staff)
    client.cookies["sessionid"] = "any-cookie-at-all"

    def down(execute, sql, params, many, context):
        raise OperationalError("the database is down (test)")

    with connection.execute_wrapper(down):
        assert client.get(url).status_code == 403
        assert as_staff.get(url).status_code == 403
        response = client.get(url, **bearer(TOKEN))
    assert response.status_code == 503 and b"database did not answer" in response.content
    assert as_staff.get(url).status_code in (200, 503)  # the database is back: the session reads again


@pytest.mark.django_db
@pytest.mark.parametrize("url", [METRICS, HEALTH])
def test_only_get_and_head(client, token, url):
    alive_worker()
    assert client.head(url, **bearer(TOKEN)).status_code == 200
    assert client.post(url, **bearer(TOKEN)).status_code == 405
    assert "no-cache" in client.get(url, **bearer(TOKEN))["Cache-Control"]


@pytest.mark.parametrize(("value", "level"), [
    (None, None), ("", None), (TOKEN, None), ("short-token", checks.WARNING),
    ("has space in it and is long enough", checks.ERROR), ("é" * 30, checks.ERROR), (12345, checks.ERROR),
])
def test_the_token_setting_is_checked(value, level):
    from jobs.checks import check_metrics_token

    with override_settings(JOBS_METRICS_TOKEN=value):
        found = check_metrics_token()
    assert [m.level for m in found] == ([level] if level else [])
    assert all("JOBS_METRICS_TOKEN" in m.msg for m in found)


# -- health -------------------------------------------------------------------------------

@pytest.mark.django_db
def test_health_says_why_it_is_unhealthy(client, token, django_assert_num_queries):
    with django_assert_num_queries(1):
        response = client.get(HEALTH, **bearer(TOKEN))
    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy", "reason": "no worker has ever sent a heartbeat",
                               "workers_alive": 0, "stale_after": 3.0, "last_heartbeat_age_seconds": None}
    alive_worker(heartbeat_at=timezone.now() - timedelta(seconds=40))
    body = client.get(HEALTH, **bearer(TOKEN)).json()
    assert body["reason"].startswith("no worker heartbeated within 3 s (the last heartbeat was 40 s ago)")
    alive_worker("web-2:43:beef")
    with django_assert_num_queries(1):
        response = client.get(HEALTH, **bearer(TOKEN))
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert response.json()["workers_alive"] == 1


@pytest.mark.django_db(transaction=True)
def test_health_turns_503_once_a_killed_worker_is_stale(client, token, workers):
    stale_after = 3.0  # the tests' OPTIONS
    proc = workers.start("--sleep", "0.05")
    row = wait_for(lambda: WorkerProcess.objects.filter(pid=proc.pid).first(), message="the worker's row")
    # It stays healthy past stale_after because the worker keeps beating, not because it just started.
    wait_for(lambda: WorkerProcess.objects.get(pk=row.pk).heartbeat_at > row.started_at + timedelta(seconds=stale_after),
             message="a heartbeat more than stale_after after the start")
    response = client.get(HEALTH, **bearer(TOKEN))
    assert response.status_code == 200, response.content
    assert response.json()["workers_alive"] == 1

    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    killed = time.monotonic()
    last_beat = WorkerProcess.objects.get(pk=row.pk).heartbeat_at
    quiet_for = (timezone.now() - last_beat).total_seconds()
    wait_for(lambda: client.get(HEALTH, **bearer(TOKEN)).status_code == 503, timeout=stale_after + 10,
             message="health 503")
    # Not at once: only when the last heartbeat is stale_after old.
    assert time.monotonic() - killed >= stale_after - quiet_for - 0.1
    body = client.get(HEALTH, **bearer(TOKEN)).json()
    assert body["status"] == "unhealthy" and body["reason"].startswith("no worker heartbeated within 3 s")
    assert WorkerProcess.objects.get(pk=row.pk).heartbeat_at == last_beat  # it really is silent


# -- metrics ------------------------------------------------------------------------------

@pytest.fixture
def site(db):
    now = timezone.now()
    make_jobs(3, JobStatus.READY, queue_name="emails", run_after=now - timedelta(minutes=5))
    make_jobs(2, JobStatus.READY, queue_name="emails", run_after=now + timedelta(minutes=5))
    make_jobs(1, JobStatus.RUNNING, queue_name="emails", worker_id="web-1:42:abcd")
    make_jobs(4, JobStatus.SUCCESSFUL, queue_name="reports", finished_at=now - timedelta(minutes=3),
              last_attempted_at=now - timedelta(minutes=3, seconds=0.3))
    make_jobs(2, JobStatus.FAILED, queue_name="reports", task_path="tests.tasks.always_fails",
              finished_at=now - timedelta(minutes=3), last_attempted_at=now - timedelta(minutes=3, seconds=20))
    make_jobs(1, JobStatus.SUCCESSFUL, finished_at=now - timedelta(hours=2))  # outside the hour
    make_jobs(1, JobStatus.CANCELLED, queue_name="emails")
    alive_worker()
    alive_worker("gone:7:ffff", heartbeat_at=now - timedelta(minutes=5))
    QueueState.objects.create(name="reports", paused=True)


def test_metrics(client, token, site):
    response = client.get(METRICS, **bearer(TOKEN))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(response.content)

    def value(name, **labels):
        if name.startswith("jobs_queue_"):
            labels.setdefault("backend", "default")  # every queue row is one alias's view of the queue
        return found[(name, tuple(sorted(labels.items())))]

    assert value("jobs_queue_jobs", queue="emails", status="READY") == 5
    assert value("jobs_queue_jobs", queue="emails", status="RUNNING") == 1
    assert value("jobs_queue_jobs", queue="emails", status="CANCELLED") == 1
    assert value("jobs_queue_jobs", queue="reports", status="FAILED") == 2
    assert value("jobs_queue_jobs", queue="other", status="READY") == 0  # configured, empty
    assert value("jobs_queue_due_jobs", queue="emails") == 3
    assert 290 < value("jobs_queue_lag_seconds", queue="emails") < 360
    assert value("jobs_queue_lag_seconds", queue="reports") == 0
    assert (value("jobs_queue_paused", queue="reports"), value("jobs_queue_paused", queue="emails")) == (1, 0)
    assert value("jobs_workers_alive") == 1
    assert (value("jobs_worker_slots"), value("jobs_worker_busy_slots")) == (4, 1)
    assert value("jobs_finished_last_hour", status="SUCCESSFUL") == 4
    assert value("jobs_finished_last_hour", status="FAILED") == 2
    assert value("jobs_failed_last_24h", task="tests.tasks.always_fails") == 2
    # 4 attempts of 0.3 s and 2 of 20 s, as cumulative buckets
    assert value("jobs_attempt_duration_seconds_bucket", le="0.25") == 0
    assert value("jobs_attempt_duration_seconds_bucket", le="0.5") == 4
    assert value("jobs_attempt_duration_seconds_bucket", le="10.0") == 4
    assert value("jobs_attempt_duration_seconds_bucket", le="30.0") == 6
    assert value("jobs_attempt_duration_seconds_bucket", le="+Inf") == 6
    assert value("jobs_attempt_duration_seconds_gcount") == 6
    assert value("jobs_attempt_duration_seconds_gsum") == pytest.approx(4 * 0.3 + 2 * 20, abs=0.01)


def test_metrics_in_openmetrics_when_asked(client, token, site):
    response = client.get(METRICS, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0", **bearer(TOKEN))
    assert response["Content-Type"].startswith("application/openmetrics-text")
    text = response.content.decode()
    assert text.endswith("# EOF\n") and "# TYPE jobs_attempt_duration_seconds gaugehistogram" in text


def test_metrics_queries_are_few_and_do_not_grow_with_rows(client, token, site, django_assert_num_queries):
    with CaptureQueriesContext(connection) as ctx:
        client.get(METRICS, **bearer(TOKEN))
    assert len(ctx.captured_queries) <= 8, [q["sql"] for q in ctx.captured_queries]
    now = timezone.now()
    make_jobs(50, JobStatus.FAILED, queue_name="emails", task_path="tests.tasks.noop")
    make_jobs(50, JobStatus.SUCCESSFUL, queue_name="default", last_attempted_at=now - timedelta(seconds=2))
    make_jobs(50, JobStatus.READY, queue_name="reports")
    alive_worker("web-3:44:cafe")
    with django_assert_num_queries(len(ctx.captured_queries)):
        response = client.get(METRICS, **bearer(TOKEN))
    assert samples(response.content)[("jobs_workers_alive", ())] == 2


@pytest.mark.django_db
def test_metrics_without_prometheus_client_is_a_clear_501(client, token, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what an uninstalled package looks like
    monkeypatch.delitem(sys.modules, "jobs.prometheus", raising=False)
    monkeypatch.delattr(sys.modules["jobs"], "prometheus", raising=False)
    response = client.get(METRICS, **bearer(TOKEN))
    assert response.status_code == 501
    assert b"prometheus_client" in response.content and b"pip install" in response.content
    assert client.get(METRICS).status_code == 403  # still nothing for anonymous visitors
