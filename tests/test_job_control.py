"""Job control (issue 12): unique jobs, concurrency keys, rate limits. Cancel and progress are in
tests/test_cancel_progress.py, the scheduler's overlap in tests/test_scheduler_runner.py."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

import jobs
from jobs.models import Job, JobLimit, JobStatus
from tests import tasks
from tests.conftest import REPO, subprocess_env, sweep, wait_for


def rows(task) -> list[Job]:
    return list(Job.objects.filter(task_path=task.module_path).order_by("id"))


# -- unique jobs ---------------------------------------------------------------------------------

def test_a_duplicate_of_a_ready_unique_job_writes_nothing_and_returns_it(db):
    first = tasks.unique_add.enqueue(1, 2)
    again = tasks.unique_add.enqueue(1, 2)
    other = tasks.unique_add.enqueue(2, 1)
    assert again.id == first.id and other.id != first.id
    assert len(rows(tasks.unique_add)) == 2
    assert tasks.unique_add.using(priority=50).enqueue(1, 2).id == first.id  # options do not make it new


def test_the_key_is_free_again_once_the_job_runs(run_worker):
    first = tasks.unique_add.enqueue(1, 2)
    run_worker()
    assert Job.objects.get(pk=int(first.id)).status == JobStatus.SUCCESSFUL
    assert tasks.unique_add.enqueue(1, 2).id != first.id


def test_a_rolled_back_enqueue_frees_the_key(transactional_db):
    with pytest.raises(RuntimeError), transaction.atomic():
        inside = tasks.unique_add.enqueue(1, 2)
        assert tasks.unique_add.enqueue(1, 2).id == inside.id  # its own transaction sees it
        raise RuntimeError("roll back")
    assert not Job.objects.exists()
    tasks.unique_add.enqueue(1, 2)
    assert Job.objects.count() == 1


def test_a_callable_key_and_bulk_enqueue_collapse_duplicates(db):
    earlier = tasks.sync_account.enqueue(7, note="first")
    results = jobs.enqueue_many(tasks.sync_account, [((7,), {"note": "second"}), ((8,), {}), ((8,), {"note": "x"}),
                                                     ((9,), {})])
    assert [r.id for r in results][0] == earlier.id  # the READY job of account 7
    assert results[1].id == results[2].id != results[3].id
    assert Job.objects.count() == 3
    assert Job.objects.get(pk=int(results[0].id)).kwargs == {"note": "first"}


def test_five_processes_enqueueing_the_same_unique_job_at_once_make_one_row(transactional_db, tmp_path):
    gate = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.race_enqueue", str(gate), "20"], cwd=REPO,
                              env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(5)]
    gate.write_text("go")
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert len(set(" ".join(outputs).split())) == 1, outputs  # every call got the same id
    assert Job.objects.filter(task_path=tasks.unique_add.module_path).count() == 1


def test_a_retry_whose_key_was_taken_meanwhile_ends_failed_saying_why(run_worker):
    job = tasks.sync_account.enqueue(5, note="fail")
    Job.objects.filter(pk=int(job.id)).update(status=JobStatus.RUNNING, attempts=1, worker_id="w",
                                              heartbeat_at=timezone.now() - timedelta(minutes=5))
    newer = tasks.sync_account.enqueue(5)  # the key is free while the first one runs
    assert newer.id != job.id
    assert sweep() == 1  # its worker is lost: the take-back would retry it, but the key is taken
    failed = Job.objects.get(pk=int(job.id))
    assert failed.status == JobStatus.FAILED and "same unique key is queued" in failed.errors[-1]["message"]
    assert Job.objects.get(pk=int(newer.id)).status == JobStatus.READY


def test_requeue_leaves_a_unique_job_whose_key_a_ready_job_holds(run_worker):
    done = tasks.unique_add.enqueue(1, 2)
    run_worker()
    waiting = tasks.unique_add.enqueue(1, 2)
    assert Job.objects.filter(pk=int(done.id)).requeue() == []
    Job.objects.filter(pk=int(waiting.id)).delete_jobs()
    assert [j.pk for j in Job.objects.filter(pk=int(done.id)).requeue()] == [int(done.id)]


# -- concurrency limits ---------------------------------------------------------------------------

def spans(path: Path) -> dict[str, list[tuple[float, float]]]:
    """key -> [(start, end)] of each run recorded by tests.tasks._span."""
    found = defaultdict(list)
    for line in path.read_text().splitlines():
        token, start, end, _pid = line.split()
        found[token.split(":")[0]].append((float(start), float(end)))
    return found


def most_at_once(runs: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in runs] + [(end, -1) for _, end in runs])
    running = peak = 0
    for _, step in events:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def test_no_more_than_the_limit_run_at_once_over_several_workers(workers, record_dir):
    path = record_dir / "spans"
    quick_path = record_dir / "quick"
    procs = [workers.start("--concurrency", "4") for _ in range(3)]
    for proc in procs:
        workers.wait_for_output(proc, "worker started")
    with transaction.atomic():
        jobs.enqueue_many(tasks.limited, [(("a", str(path), str(i), 0.3), {}) for i in range(20)]
                          + [(("b", str(path), str(i), 0.3), {}) for i in range(20)])
        for i in range(10):  # enqueued after: they must not wait behind the held-back backlog
            tasks.quick.using(priority=-10).enqueue(str(quick_path), str(i))
    wait_for(lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 50, timeout=120,
             message="every job to finish")
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(30) == 0, workers.output(proc)
    found = spans(path)
    assert {key: most_at_once(runs) for key, runs in found.items()} == {"a": 2, "b": 2}
    assert len(found["a"]) == len(found["b"]) == 20
    last_quick = max(float(line.split()[1]) for line in quick_path.read_text().splitlines())
    last_limited = max(end for runs in found.values() for _, end in runs)
    assert last_quick < last_limited - 2  # the unrelated jobs were done long before the limited backlog
    assert JobLimit.objects.get(key="a").running == JobLimit.objects.get(key="b").running == 0


def test_a_lost_workers_job_frees_its_place(run_worker, record_dir):
    path = record_dir / "spans"
    lost = tasks.one_at_a_time.enqueue(str(path), "lost", 0)
    Job.objects.claim(worker_id="gone", limit=1, now=timezone.now())
    waiting = tasks.one_at_a_time.enqueue(str(path), "waiting", 0)
    run_worker()
    assert Job.objects.get(pk=int(waiting.id)).status == JobStatus.READY  # held back: the key's place is taken
    Job.objects.filter(pk=int(lost.id)).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert sweep() == 1
    run_worker()
    statuses = {Job.objects.get(pk=int(r.id)).status for r in (waiting, lost)}
    assert JobStatus.SUCCESSFUL in statuses and Job.objects.get(pk=int(waiting.id)).status == JobStatus.SUCCESSFUL


def test_a_claim_over_many_keys_with_room_takes_the_best_jobs_first(transactional_db):
    """1,200 keys each with a job and room (more keys than SQLite lets one statement name): a claim
    of 3 takes the three jobs first in claim order, whichever keys they are on."""
    jobs.enqueue_many(tasks.one_per_key, [((f"k{i:04}",), {}) for i in range(1200)])
    best = [tasks.one_per_key.using(priority=priority).enqueue(f"k{i:04}")
            for i, priority in ((700, 9), (5, 8), (1100, 7))]
    claimed = Job.objects.claim(worker_id="w", limit=3, now=timezone.now())
    assert [job.id for job in claimed] == [int(r.id) for r in best]
    more = Job.objects.claim(worker_id="w", limit=1000, now=timezone.now())  # more than a worker asks for
    assert len(more) >= 400 and len({job.limit_key for job in more}) == len(more)
    assert {job.limit_key for job in more}.isdisjoint({"k0700", "k0005", "k1100"})  # still at their limit


# -- rate limits -------------------------------------------------------------------------------

def test_a_rate_limit_holds_over_every_window_and_the_worker_does_not_spin(workers, record_dir):
    path = record_dir / "rated"
    procs = [workers.start("--concurrency", "4") for _ in range(2)]
    for proc in procs:
        workers.wait_for_output(proc, "worker started")
    jobs.enqueue_many(tasks.rated, [((str(path), str(i)), {}) for i in range(15)])
    wait_for(lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 15, timeout=60,
             message="every rate-limited job to run")
    cpu = [_cpu_seconds(proc.pid) for proc in procs]
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(30) == 0, workers.output(proc)
    assert len(path.read_text().splitlines()) == 15  # each ran once
    # An attempt starts when a worker claims it: the time it wrote then (the task itself runs a moment later).
    starts = sorted(job.last_attempted_at.timestamp() for job in Job.objects.all())
    seen = " ".join(f"{s - starts[0]:.3f}" for s in starts)
    assert max(sum(1 for s in starts if start <= s < start + 1.0) for start in starts) <= 5, seen
    assert starts[-1] - starts[0] >= 2.0  # 15 at 5/s take two windows at least
    assert all(seconds < 2.0 for seconds in cpu), cpu  # waiting, not polling in a loop


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
