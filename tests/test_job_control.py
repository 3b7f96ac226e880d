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
from django.db import connection, transaction
from django.utils import timezone

import jobs
from jobs.models import Job, JobLimit, JobStatus
from jobs.sql import claim
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
    claim(worker_id="gone", limit=1, now=timezone.now())
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
    claimed = claim(worker_id="w", limit=3, now=timezone.now())
    assert [job.id for job in claimed] == [int(r.id) for r in best]
    more = claim(worker_id="w", limit=1000, now=timezone.now())  # more than a worker asks for
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


# -- damaged job-control rows, abandoned attempts (issue 18) -------------------------------------

def damage_limit(key: str, **columns) -> None:
    """Write raw SQL values into a key's JobLimit row, past the ORM, as any other writer could."""
    sets = ", ".join(f"{column} = {value}" for column, value in columns.items())
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":  # JSON deeper than SQLite's own checks allow: as another writer could
            cursor.execute("PRAGMA ignore_check_constraints = ON")
        cursor.execute(f"UPDATE jobs_joblimit SET {sets} WHERE {connection.ops.quote_name('key')} = %s", [key])
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA ignore_check_constraints = OFF")


def damage_job(job_id, **columns) -> None:
    sets = ", ".join(f"{column} = {value}" for column, value in columns.items())
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE jobs_job SET {sets} WHERE id = %s", [int(job_id)])


def finish_all(procs, workers, count: int, timeout: float = 60) -> None:
    """Wait until ``count`` jobs are SUCCESSFUL or FAILED (failing if a worker died), then stop the workers."""
    done = [JobStatus.SUCCESSFUL, JobStatus.FAILED]
    wait_for(lambda: Job.objects.filter(status__in=done).count() == count or any(p.poll() is not None for p in procs),
             timeout=timeout, message=f"{count} jobs to finish")
    for proc in procs:
        assert proc.poll() is None, workers.output(proc)[-3000:]
        workers.wait_for_output(proc, "worker started")  # its SIGTERM handler is in place
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(30) == 0, workers.output(proc)[-3000:]


DEEP = "'" + "[" * 10_000 + "]" * 10_000 + "'"


@pytest.mark.parametrize("columns", [
    pytest.param({"running": "'x'"}, marks=pytest.mark.sqlite_only, id="running-text"),
    pytest.param({"running": "0.5"}, marks=pytest.mark.sqlite_only, id="running-half"),
    pytest.param({"running": "1e300"}, marks=pytest.mark.sqlite_only, id="running-huge"),
    pytest.param({"starts": DEEP}, marks=pytest.mark.sqlite_only, id="starts-deep-text"),
    pytest.param({"starts": DEEP + "::jsonb"}, marks=pytest.mark.postgres_only, id="starts-deep-jsonb"),
    pytest.param({"running": 2_147_483_647}, id="running-max"),
])
def test_a_damaged_limit_row_stops_no_claim_and_its_key_is_mended(workers, record_dir, columns, caplog):
    """Before: one damaged jobs_joblimit row made every claim of every worker raise, for good."""
    path = record_dir / "spans"
    keyed = [tasks.one_at_a_time.enqueue(str(path), f"k{i}", 0) for i in range(3)]
    others = [tasks.limited.enqueue("other", str(path), f"other:{i}", 0) for i in range(2)]
    plain = [tasks.add.enqueue(i, i) for i in range(3)]
    damage_limit("one-at-a-time", **columns)
    procs = [workers.start("--concurrency", "2"), workers.start()]
    finish_all(procs, workers, 8)
    assert {Job.objects.get(pk=int(r.id)).status for r in keyed + others + plain} == {JobStatus.SUCCESSFUL}
    assert list(JobLimit.objects.values_list("running", flat=True)) == [0, 0]
    logs = "".join(workers.output(proc) for proc in procs)
    if "running" in columns:  # by the claim that found it, or the stale sweep, whichever came first
        assert "mended key='one-at-a-time'" in logs, logs[-3000:]


@pytest.mark.parametrize("running", [-3, pytest.param("'-3'", marks=pytest.mark.sqlite_only, id="text")])
def test_a_negative_running_count_lets_no_more_than_the_limit_run(workers, record_dir, running):
    """Before: running = -3 let four jobs of a key with limit 1 run at once."""
    path = record_dir / "spans"
    for i in range(4):
        tasks.one_at_a_time.enqueue(str(path), f"k{i}", 0.3)
    damage_limit("one-at-a-time", running=running)
    proc = workers.start("--concurrency", "4")
    finish_all([proc], workers, 4)
    assert most_at_once(spans(path)["k0"] + spans(path)["k1"] + spans(path)["k2"] + spans(path)["k3"]) == 1
    assert JobLimit.objects.get(key="one-at-a-time").running == 0


@pytest.mark.parametrize("value,shown", [
    pytest.param("'x'", "concurrency_limit", marks=pytest.mark.sqlite_only, id="text"),
    pytest.param("1.5", "concurrency_limit", marks=pytest.mark.sqlite_only, id="fraction"),
    pytest.param("x'01'", "concurrency_limit", marks=pytest.mark.sqlite_only, id="blob"),
    pytest.param("0", "concurrency_limit", id="zero"),
    pytest.param("100000", "concurrency_limit", id="too-high"),
])
def test_a_job_with_a_damaged_concurrency_limit_fails_alone(workers, record_dir, value, shown):
    """Before: 'x', or 1.5 while a job of its key ran, made every claim raise; 0 held its key back for ever."""
    path = record_dir / "spans"
    good = [tasks.one_at_a_time.enqueue(str(path), "good0", 0)]
    claim(worker_id="lost", limit=1, now=timezone.now())  # runs (its worker is lost: taken back later)
    bad = tasks.one_at_a_time.using(priority=5).enqueue(str(path), "bad", 0)
    good.append(tasks.one_at_a_time.enqueue(str(path), "good1", 0))
    plain = [tasks.add.enqueue(i, i) for i in range(3)]
    damage_job(bad.id, concurrency_limit=value)
    procs = [workers.start("--concurrency", "2"), workers.start()]
    finish_all(procs, workers, 6)
    failed = Job.objects.get(pk=int(bad.id))
    assert failed.status == JobStatus.FAILED and failed.attempts == 1
    assert failed.errors[-1]["exception_class_path"] == "jobs.exceptions.DamagedJob"
    assert shown in failed.errors[-1]["message"]
    assert {Job.objects.get(pk=int(r.id)).status for r in good + plain} == {JobStatus.SUCCESSFUL}
    assert JobLimit.objects.get(key="one-at-a-time").running == 0


@pytest.mark.parametrize("starts", ["'[9e15, 9e15, 9e15, 9e15, 9e15]'", "'[1e400, 1e400, 1e400, 1e400, 1e400]'"])
def test_a_start_log_that_would_fill_its_window_for_ever_is_mended(workers, record_dir, starts):
    """Before: five starts in the far future (or infinite) held a 5/s key back for ever."""
    path = record_dir / "rated"
    rated = [tasks.rated.enqueue(str(path), str(i)) for i in range(3)]
    damage_limit(f"task:{tasks.rated.module_path}", starts=starts)
    proc = workers.start()
    finish_all([proc], workers, 3, timeout=20)
    assert {Job.objects.get(pk=int(r.id)).status for r in rated} == {JobStatus.SUCCESSFUL}
    assert "mended key='task:tests.tasks.rated'" in workers.output(proc)


def test_a_job_with_a_damaged_rate_limit_fails_alone(workers, record_dir):
    bad = tasks.rated.using(priority=5).enqueue(str(record_dir / "rated"), "bad")
    good = [tasks.rated.enqueue(str(record_dir / "rated"), f"good{i}") for i in range(2)]
    damage_job(bad.id, rate_limit="'lots'")
    proc = workers.start()
    finish_all([proc], workers, 3)
    failed = Job.objects.get(pk=int(bad.id))
    assert failed.status == JobStatus.FAILED and "rate_limit" in failed.errors[-1]["message"]
    assert {Job.objects.get(pk=int(r.id)).status for r in good} == {JobStatus.SUCCESSFUL}


def test_the_sweep_mends_a_count_that_no_running_job_explains(run_worker, record_dir):
    """Before: deleting a RUNNING limited job through the ORM left its key at 1 for ever."""
    path = record_dir / "spans"
    gone = tasks.one_at_a_time.enqueue(str(path), "gone", 0)
    alive = tasks.limited.enqueue("alive", str(path), "alive:1", 0)
    unrowed = tasks.limited.enqueue("unrowed", str(path), "unrowed:1", 0)
    claimed = claim(worker_id="w", limit=3, now=timezone.now())
    assert {job.id for job in claimed} == {int(gone.id), int(alive.id), int(unrowed.id)}
    Job.objects.filter(pk=int(gone.id)).delete()
    waiting = tasks.one_at_a_time.enqueue(str(path), "waiting", 0)
    JobLimit.objects.filter(key="alive").update(running=2)  # one more than its one RUNNING job
    JobLimit.objects.filter(key="unrowed").delete()  # one less: a new row would count from 0
    assert sweep() == 0  # nothing is stale: the counts alone are wrong
    assert dict(JobLimit.objects.values_list("key", "running")) == {"one-at-a-time": 0, "alive": 1, "unrowed": 1}
    run_worker()
    assert Job.objects.get(pk=int(waiting.id)).status == JobStatus.SUCCESSFUL


@pytest.mark.parametrize("key,written", [("with\x00nul", "with~nul"), ("lone\ud800surrogate", "lone^surrogate")])
def test_a_key_no_database_stores_is_refused_naming_it(transactional_db, key, written):
    """Before: declared fine, then every enqueue failed with a driver error."""
    with pytest.raises(ValueError, match="concurrency_key"):
        jobs.task(concurrency_key=key)(tasks.add.func)
    with pytest.raises(ValueError, match="unique"):
        jobs.task(unique=lambda a, b: key)(tasks.add.func).enqueue(1, 2)
    with pytest.raises(ValueError, match="keyed_oddly: concurrency_key.*" + ("NUL" if "~" in written else "surrogate")):
        tasks.keyed_oddly.enqueue(written)
    assert not Job.objects.exists()


def test_a_rate_limit_longer_than_its_column_is_refused_at_declaration(transactional_db):
    with pytest.raises(ValueError, match="rate_limit.*32 characters"):
        jobs.task(rate_limit="5/s" + " " * 40)(tasks.add.func)
    with pytest.raises(ValueError, match="rate_limit"):
        jobs.task(rate_limit="0" * 40 + "5/s")(tasks.add.func)


def test_an_attempt_blocked_in_c_past_its_timeout_holds_its_key_until_it_returns(workers, record_dir):
    """Before: the worker gave the key back when it gave up on the attempt; the next job of the key,
    and the same job's retry, ran beside the first attempt's code for as long as it blocked."""
    path = record_dir / "spans"
    procs = [workers.start("--concurrency", "3") for _ in range(2)]
    for proc in procs:
        workers.wait_for_output(proc, "worker started")
    # Longer than stale_after (3 s here): the job is heartbeaten while its code runs, not taken back.
    first = tasks.blocks_in_c.enqueue(str(path), "c:first", 4.5)
    wait_for(lambda: Job.objects.get(pk=int(first.id)).status == JobStatus.RUNNING, message="the first to start")
    second = tasks.blocks_in_c.enqueue(str(path), "c:second", 0.05)
    finish_all(procs, workers, 2)
    runs = spans(path)["c"]
    assert len(runs) == 3 and most_at_once(runs) == 1, path.read_text()
    done = Job.objects.get(pk=int(first.id))
    assert done.status == JobStatus.SUCCESSFUL and done.attempts == 2
    assert [e["exception_class_path"] for e in done.errors] == ["jobs.exceptions.JobTimeout"]
    assert Job.objects.get(pk=int(second.id)).status == JobStatus.SUCCESSFUL
    assert JobLimit.objects.get(key="blocked-in-c").running == 0


def test_a_cancelled_attempt_blocked_in_c_holds_its_key_until_it_returns(workers, record_dir):
    """Before: interrupted after the cancel's grace, its key was freed while the C call went on."""
    from jobs.control import CANCEL_GRACE

    path = record_dir / "spans"
    proc = workers.start("--concurrency", "2")
    workers.wait_for_output(proc, "worker started")
    first = tasks.blocks_in_c_untimed.enqueue(str(path), "c:first", CANCEL_GRACE + 2)
    wait_for(lambda: Job.objects.get(pk=int(first.id)).status == JobStatus.RUNNING, message="the first to start")
    jobs.cancel(first.id, reason="test")
    second = tasks.blocks_in_c_untimed.enqueue(str(path), "c:second", 0.05)
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == 2, timeout=CANCEL_GRACE + 20,
             message="both runs to end")
    finish_all([proc], workers, 1)  # the second: the first ends CANCELLED
    runs = spans(path)["c"]
    assert len(runs) == 2 and most_at_once(runs) == 1, path.read_text()
    assert Job.objects.get(pk=int(first.id)).status == JobStatus.CANCELLED
    assert Job.objects.get(pk=int(second.id)).status == JobStatus.SUCCESSFUL
    assert JobLimit.objects.get(key="blocked-in-c").running == 0


def test_a_worker_lost_while_a_given_up_attempt_still_runs_leaves_it_to_the_sweep(workers, record_dir):
    """The attempt given up on stays RUNNING (its key counting it) while its code runs; when its
    worker dies, its code dies with it, and the stale sweep takes it back and retries it."""
    path = record_dir / "spans"
    doomed = workers.start("--concurrency", "2")
    workers.wait_for_output(doomed, "worker started")
    first = tasks.blocks_in_c.enqueue(str(path), "c:first", 30)
    workers.wait_for_output(doomed, "given up on but still running")
    row = Job.objects.get(pk=int(first.id))
    assert row.status == JobStatus.RUNNING and row.attempts == 1  # not READY for a retry beside it
    assert JobLimit.objects.get(key="blocked-in-c").running == 1
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    proc = workers.start()
    finish_all([proc], workers, 1, timeout=60)
    done = Job.objects.get(pk=int(first.id))
    assert done.status == JobStatus.SUCCESSFUL and done.attempts == 2
    assert done.errors[0]["exception_class_path"] == "jobs.exceptions.WorkerLost"
    assert JobLimit.objects.get(key="blocked-in-c").running == 0
