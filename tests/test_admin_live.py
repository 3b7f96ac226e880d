"""The live overview (/admin/jobs/queuestate/): the last hour per task and queue, the jobs each
worker runs now, lost workers kept for a day, and the page's own in-place refresh."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import JobStatus, WorkerProcess
from jobs.sql import claim
from tests.test_admin import OVERVIEW, make_jobs

pytestmark = pytest.mark.django_db


def finished(task: str, seconds: list[float], status=JobStatus.SUCCESSFUL, ago=timedelta(minutes=5), queue="default"):
    end = timezone.now() - ago
    for duration in seconds:
        make_jobs(1, status, task_path=task, queue_name=queue, finished_at=end,
                  last_attempted_at=end - timedelta(seconds=duration))


def test_the_last_hour_per_task_ran_p50_p95_and_failure_rate(admin_client):
    finished("shop.tasks.charge", [0.1 * n for n in range(1, 20)])  # 0.1 .. 1.9 s
    finished("shop.tasks.charge", [5.0], status=JobStatus.FAILED)
    finished("shop.tasks.charge", [99.0], ago=timedelta(hours=2))  # before the hour: not counted
    finished("mail.tasks.send", [0.2, 0.4], queue="emails")
    response = admin_client.get(OVERVIEW)
    rows = {row.task_path: row for row in response.context["overview"].tasks_hour}
    charge = rows["shop.tasks.charge"]
    assert (charge.ran, charge.failed) == (20, 1)
    assert charge.p50 == pytest.approx(1.0, abs=0.01) and charge.p95 == pytest.approx(1.9, abs=0.01)
    assert charge.failure_percent == "5.0 %"
    assert [row.task_path for row in response.context["overview"].tasks_hour] == ["shop.tasks.charge",
                                                                                   "mail.tasks.send"]
    queues = {row["name"]: row for row in response.context["overview"].queues_hour}
    assert (queues["default"]["ran"], queues["default"]["failed"], queues["emails"]["ran"]) == (20, 1, 2)
    page = response.content.decode()
    assert 'id="tasks-hour"' in page and "5.0 %" in page and 'id="queues-hour"' in page


def test_each_worker_is_shown_with_the_jobs_it_runs_now(admin_client):
    now = timezone.now()
    WorkerProcess.objects.create(worker_id="web-1:1:a", hostname="web-1", pid=1, started_at=now, heartbeat_at=now,
                                 concurrency=4)
    WorkerProcess.objects.create(worker_id="web-2:2:b", hostname="web-2", pid=2, started_at=now, heartbeat_at=now)
    running = make_jobs(2, JobStatus.RUNNING, task_path="reports.tasks.build", worker_id="web-1:1:a")
    page = admin_client.get(OVERVIEW).content.decode()
    row = page.split('data-worker="web-1:1:a"', 1)[1].split("</tr>", 1)[0]
    assert all(f"#{job.pk} build" in row for job in running) and "2 / 4" in row
    assert "idle" in page.split('data-worker="web-2:2:b"', 1)[1].split("</tr>", 1)[0]


def test_workers_that_stopped_heartbeating_stay_listed_as_lost_for_a_day(admin_client):
    now = timezone.now()
    for worker_id, silent in [("alive:1:a", timedelta(0)), ("lost:2:b", timedelta(hours=3)),
                              ("long-gone:3:c", timedelta(hours=25))]:
        WorkerProcess.objects.create(worker_id=worker_id, hostname=worker_id.split(":")[0], pid=1,
                                     started_at=now - timedelta(days=2), heartbeat_at=now - silent)
    response = admin_client.get(OVERVIEW)
    assert [w["worker"].worker_id for w in response.context["overview"].lost] == ["lost:2:b"]
    page = response.content.decode()
    live, lost = page.split('id="workers-lost"', 1)
    assert "lost:2:b" in lost and "lost:2:b" not in live and "long-gone" not in page


def test_the_page_refreshes_itself_in_place_unless_asked_to_reload(admin_client):
    page = admin_client.get(OVERVIEW).content.decode()
    assert 'data-live="5"' in page and "jobs/overview-live.js" in page and 'http-equiv="refresh"' not in page
    reloading = admin_client.get(OVERVIEW, {"refresh": "10"}).content.decode()
    assert "data-live" not in reloading and "overview-live.js" not in reloading


def test_a_live_workers_sweep_keeps_a_dead_workers_row_for_a_day(admin_client):
    from jobs.framework import task_backends
    from jobs.worker.liveness import Liveness

    now = timezone.now()
    for worker_id, silent in [("lost:2:b", timedelta(hours=3)), ("long-gone:3:c", timedelta(hours=25))]:
        WorkerProcess.objects.create(worker_id=worker_id, hostname="h", pid=1, started_at=now - timedelta(days=2),
                                     heartbeat_at=now - silent)
    Liveness(worker_id="sweeper:1:a", backend=task_backends["default"], held=list, register=lambda: None,
             clock=None).take_back_stale(now)
    assert list(WorkerProcess.objects.values_list("worker_id", flat=True)) == ["lost:2:b"]
    assert "lost:2:b" in admin_client.get(OVERVIEW).content.decode().split('id="workers-lost"', 1)[1]


def test_the_admin_index_shows_the_queues_state_beside_the_apps(admin_client):
    now = timezone.now()
    make_jobs(2, JobStatus.FAILED, finished_at=now - timedelta(hours=1))
    make_jobs(1, JobStatus.FAILED, finished_at=now - timedelta(hours=30))
    make_jobs(1, JobStatus.READY, run_after=now - timedelta(minutes=3))
    WorkerProcess.objects.create(worker_id="w:1:a", hostname="w", pid=1, started_at=now, heartbeat_at=now)
    page = admin_client.get("/admin/").content.decode()
    state = page.split('id="jobs-index-state"', 1)[1].split("</div>", 1)[0]
    assert '<strong id="jobs-index-failed">2</strong> failed in 24 h' in state
    assert '<strong id="jobs-index-lag">3 min' in state or '<strong id="jobs-index-lag">3m' in state, state
    assert 'href="/admin/jobs/queuestate/"' in state and 'href="/admin/jobs/job/failures/"' in state
    assert page.index('id="jobs-index-state"') < page.index("app-jobs")  # beside (above) the Jobs app


def test_the_admin_index_shows_no_queue_state_to_users_who_may_not_see_jobs(client, django_user_model):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    assert "jobs-index-state" not in client.get("/admin/").content.decode()


def test_the_overview_counts_jobs_held_back_by_their_keys_limits(admin_client):
    from jobs.models import Job
    from tests import tasks

    tasks.one_at_a_time.enqueue("/tmp/unused", "first", 0)
    claim(worker_id="w", limit=1, now=timezone.now())  # the key's one slot taken
    tasks.one_at_a_time.enqueue("/tmp/unused", "second", 0)
    tasks.one_at_a_time.enqueue("/tmp/unused", "third", 0)
    response = admin_client.get(OVERVIEW)
    assert response.context["overview"].held_back == 2
    page = response.content.decode()
    assert '<span class="jobs-stat-value" id="stat-held-back">2</span>' in page
    assert "1 of 1 running" in page.split('id="limit-keys"', 1)[1]

    Job.objects.filter(status=JobStatus.RUNNING).update(status=JobStatus.SUCCESSFUL)
    from jobs.models import JobLimit

    JobLimit.objects.update(running=0)  # as the finishing worker does
    assert admin_client.get(OVERVIEW).context["overview"].held_back == 0
