"""prune_jobs: old finished jobs go, recent and unfinished ones stay."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from jobs.models import Job, JobStatus
from jobs.pruning import prune


def make(status, finished_days_ago=None, n=1):
    now = timezone.now()
    finished = now - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
    Job.objects.bulk_create([Job(task_path="tests.tasks.add", status=status, run_after=now, enqueued_at=now,
                                 finished_at=finished) for _ in range(n)])


@pytest.fixture
def mixed(db):
    make(JobStatus.SUCCESSFUL, 10, n=25)   # old: goes (retain 7 d)
    make(JobStatus.SUCCESSFUL, 1, n=3)     # recent: stays
    make(JobStatus.FAILED, 10, n=4)        # failed, 10 d: stays (retain 30 d)
    make(JobStatus.FAILED, 40, n=5)        # failed, 40 d: goes
    make(JobStatus.CANCELLED, 40, n=2)     # cancelled, 40 d: goes
    make(JobStatus.READY, None, n=6)       # never finished: stays
    make(JobStatus.RUNNING, None, n=1)


def test_prune_deletes_in_batches_and_keeps_the_rest(mixed):
    counts = prune(now=timezone.now(), retain_successful=7 * 86400, retain_failed=30 * 86400, batch_size=10)
    assert counts == {"successful": 25, "failed": 7}
    left = dict((s, Job.objects.filter(status=s).count()) for s in JobStatus.values)
    assert left == {"READY": 6, "RUNNING": 1, "SUCCESSFUL": 3, "FAILED": 4, "CANCELLED": 0, "WAITING": 0}


def test_dry_run_deletes_nothing(mixed):
    out = StringIO()
    call_command("prune_jobs", "--dry-run", stdout=out)
    assert "Would delete 25 successful and 7 failed/cancelled jobs." in out.getvalue()
    assert Job.objects.count() == 46


def test_command_overrides(mixed):
    out = StringIO()
    call_command("prune_jobs", "--successful-after", "0", "--failed-after", str(20 * 86400), stdout=out)
    assert "Deleted 28 successful and 7 failed/cancelled jobs." in out.getvalue()


def test_prune_task_runs_on_the_worker(run_worker):
    from jobs.tasks import prune_jobs

    make(JobStatus.SUCCESSFUL, 10, n=3)
    result = prune_jobs.enqueue()
    run_worker()
    assert prune_jobs.get_result(result.id).return_value == {"successful": 3, "failed": 0}
