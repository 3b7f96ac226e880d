"""Batches with callbacks and jobs that wait for other jobs (``jobs.batch``, ``jobs.enqueue_after``).

On every database: callbacks enqueued exactly once with the right outcome, children that
run only after their parents succeeded (and never after one failed), the admin's changes
(cancel, requeue, delete) settling what waits on them, and real workers SIGKILLed
mid-batch and mid-chain losing and doubling nothing.
"""

import signal
from collections import Counter
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from jobs import batch, enqueue_after, get_batch
from jobs.control import cancel_ready, delete_jobs
from jobs.framework import TaskResultStatus
from jobs.models import Job, JobBatch, JobDependency, JobStatus
from jobs.rows import ClaimedJob
from jobs.store import WorkerStore
from tests import tasks
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CALLBACKS = ("tests.tasks.batch_succeeded", "tests.tasks.batch_failed", "tests.tasks.batch_finished")


def callbacks_of(batch_id: str) -> Counter:
    """How many jobs of each callback task were enqueued for ``batch_id``."""
    return Counter(task for task, kwargs in Job.objects.filter(task_path__in=CALLBACKS).values_list(
        "task_path", "kwargs") if kwargs == {"batch_id": batch_id})


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- batches ------------------------------------------------------------------------------------

def test_a_batch_that_succeeds_enqueues_on_success_and_on_finish_once_after_its_last_member(run_worker,
                                                                                            record_dir):
    path = str(record_dir / "runs")
    with batch(on_success=tasks.batch_succeeded, on_failure=tasks.batch_failed,
               on_finish=tasks.batch_finished) as b:
        for i in range(5):
            tasks.member.enqueue(path, f"m{i}")
    assert isinstance(b.id, str)
    state = get_batch(b.id)
    assert (state.total, state.pending, state.finished) == (5, 5, False)
    assert callbacks_of(b.id) == Counter()
    run_worker()
    assert callbacks_of(b.id) == Counter({"tests.tasks.batch_succeeded": 1, "tests.tasks.batch_finished": 1})
    state = get_batch(b.id)
    assert (state.total, state.pending, state.successful, state.failed, state.cancelled, state.finished) == (
        5, 0, 5, 0, 0, True)
    # Each callback ran after the batch had finished, and saw every member counted.
    for job in Job.objects.filter(task_path__in=CALLBACKS):
        assert job.status == JobStatus.SUCCESSFUL
        assert job.return_value == {"finished": True, "total": 5, "pending": 0, "successful": 5, "failed": 0,
                                    "cancelled": 0}
    assert sorted(JobBatch.objects.get(pk=b.id).callbacks, key=lambda c: c["task"]) == sorted(
        [{"task": t, "job": pk} for t, pk in Job.objects.filter(task_path__in=CALLBACKS).values_list("task_path", "pk")],
        key=lambda c: c["task"])


def test_bulk_enqueue_inside_a_batch_makes_members_and_a_retried_member_is_counted_only_when_it_ends(
        run_worker, record_dir):
    from jobs import enqueue_many

    path = str(record_dir / "runs")
    with batch(on_failure=tasks.batch_failed, on_finish=tasks.batch_finished) as b:
        enqueue_many(tasks.member, [((path, f"bulk{i}"), {}) for i in range(20)])
        tasks.member.enqueue(path, "flaky", "flaky")  # fails once, then succeeds: SUCCESSFUL in the end
        tasks.member.enqueue(path, "bad", "fail")  # fails both attempts
    assert Job.objects.filter(batch_id=b.id).count() == 22
    run_worker()
    state = get_batch(b.id)
    assert (state.total, state.successful, state.failed, state.cancelled, state.finished) == (22, 21, 1, 0, True)
    assert callbacks_of(b.id) == Counter({"tests.tasks.batch_failed": 1, "tests.tasks.batch_finished": 1})
    assert lines(Path(path)).count("failed flaky") == 1 and "end flaky" in lines(Path(path))


def test_a_batch_without_members_finishes_at_the_end_of_its_block(db):
    with batch(on_success=tasks.batch_succeeded, on_finish=tasks.batch_finished) as b:
        pass
    assert get_batch(b.id).finished
    assert callbacks_of(b.id) == Counter({"tests.tasks.batch_succeeded": 1, "tests.tasks.batch_finished": 1})


def test_a_batch_inside_a_transaction_that_rolls_back_leaves_nothing(db, record_dir):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        with batch(on_finish=tasks.batch_finished) as b:
            tasks.member.enqueue(str(record_dir / "runs"), "gone")
            1 / 0  # noqa: B018
    assert not JobBatch.objects.exists() and not Job.objects.exists()
    with pytest.raises(LookupError):
        get_batch(b.id)


def test_jobs_enqueued_outside_the_block_or_in_another_thread_are_not_members(db, record_dir):
    import threading

    path = str(record_dir / "runs")
    with batch() as b:
        tasks.member.enqueue(path, "in")
        def other_thread():
            from django.db import connection

            tasks.member.enqueue(path, "other-thread")
            connection.close()

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    tasks.member.enqueue(path, "after")
    assert list(Job.objects.filter(batch_id=b.id).values_list("args", flat=True)) == [[path, "in"]]


def test_batch_arguments_are_checked_and_blocks_do_not_nest(db):
    with pytest.raises(TypeError, match="on_success"):
        with batch(on_success="tests.tasks.batch_succeeded"):
            pass
    with pytest.raises(RuntimeError, match="do not nest"):
        with batch(), batch():
            pass
    with pytest.raises(LookupError, match="no batch"):
        get_batch("nope")


def test_cancel_of_a_member_counts_it_cancelled_and_fails_the_batch(db, record_dir):
    path = str(record_dir / "runs")
    with batch(on_success=tasks.batch_succeeded, on_failure=tasks.batch_failed) as b:
        results = [tasks.member.enqueue(path, f"m{i}") for i in range(2)]
    cancel_ready(Job.objects.filter(pk__in=[int(r.id) for r in results]), "not needed")
    state = get_batch(b.id)
    assert (state.cancelled, state.finished) == (2, True)
    assert callbacks_of(b.id) == Counter({"tests.tasks.batch_failed": 1})


def test_a_requeued_member_of_an_open_batch_is_counted_again_when_it_ends_and_a_finished_batch_stays_finished(
        run_worker, record_dir):
    path = str(record_dir / "runs")
    with batch(on_finish=tasks.batch_finished) as b:
        bad = tasks.member.enqueue(path, "bad", "fail")
        waiting = tasks.member.enqueue(path, "later").id
    Job.objects.filter(pk=waiting).update(run_after=timezone.now() + timezone.timedelta(days=1))
    run_worker()
    assert get_batch(b.id).failed == 1 and not get_batch(b.id).finished
    Job.objects.filter(pk=int(bad.id)).requeue()
    assert get_batch(b.id).failed == 0  # no longer counted: it will be when it ends again
    Job.objects.filter(pk=waiting).update(run_after=timezone.now())
    run_worker()
    state = get_batch(b.id)
    assert (state.failed, state.successful, state.finished) == (1, 1, True)
    assert callbacks_of(b.id) == Counter({"tests.tasks.batch_finished": 1})
    Job.objects.filter(pk=int(bad.id)).requeue()  # after the batch finished
    run_worker()
    assert callbacks_of(b.id) == Counter({"tests.tasks.batch_finished": 1})
    assert get_batch(b.id).failed == 1


def test_a_callback_whose_task_is_gone_is_noted_on_the_batch_and_the_members_outcome_stands(run_worker,
                                                                                            record_dir):
    with batch(on_finish=tasks.batch_finished) as b:
        member = tasks.member.enqueue(str(record_dir / "runs"), "m")
    JobBatch.objects.filter(pk=b.id).update(on_finish="tests.tasks.no_such_callback")
    run_worker()
    assert Job.objects.get(pk=int(member.id)).status == JobStatus.SUCCESSFUL
    [noted] = JobBatch.objects.get(pk=b.id).callbacks
    assert noted["task"] == "tests.tasks.no_such_callback" and "error" in noted


# -- dependencies ---------------------------------------------------------------------------------

def test_a_child_waits_for_every_parent_then_runs_with_their_results_in_order(run_worker, record_dir):
    path = record_dir / "runs"
    first, second = tasks.link.enqueue(str(path), 1), tasks.link.enqueue(str(path), 2)
    child = enqueue_after([second, first.id], tasks.link, str(path), 3)
    assert child.status == TaskResultStatus.READY and child.refresh() is None
    assert child.status == TaskResultStatus.READY  # to Django's API
    assert Job.objects.get(pk=int(child.id)).status == JobStatus.WAITING
    Job.objects.filter(pk=int(second.id)).update(run_after=timezone.now() + timezone.timedelta(days=1))
    run_worker()
    assert Job.objects.get(pk=int(child.id)).status == JobStatus.WAITING  # one parent still READY
    Job.objects.filter(pk=int(second.id)).update(run_after=timezone.now())
    run_worker()
    child.refresh()
    assert child.status == TaskResultStatus.SUCCESSFUL
    assert lines(path) == ["link 1 after []", "link 2 after []", "link 3 after [2, 1]"]


def test_a_failed_parent_cancels_its_child_and_the_childs_dependents_without_running_them(run_worker,
                                                                                         record_dir):
    path = record_dir / "runs"
    parent = tasks.member.enqueue(str(path), "parent", "fail")
    child = enqueue_after([parent], tasks.link, str(path), 1)
    grandchild = enqueue_after([child], tasks.link, str(path), 2)
    run_worker()
    for result in (child, grandchild):
        job = Job.objects.get(pk=int(result.id))
        assert job.status == JobStatus.CANCELLED and job.attempts == 0
        result.refresh()
        assert result.status == TaskResultStatus.FAILED
    assert f"parent job #{parent.id} (tests.tasks.member) ended FAILED" in Job.objects.get(
        pk=int(child.id)).errors[0]["message"]
    from jobs.exceptions import ParentDidNotSucceed

    assert child.errors[0].exception_class is ParentDidNotSucceed  # Django's TaskError imports the path
    assert f"parent job #{child.id}" in Job.objects.get(pk=int(grandchild.id)).errors[0]["message"]
    assert not [line for line in lines(path) if line.startswith("link")]


def test_parents_already_finished_count_at_once(run_worker, record_dir):
    path = record_dir / "runs"
    done, failed = tasks.link.enqueue(str(path), 1), tasks.member.enqueue(str(path), "x", "fail")
    run_worker()
    ready = enqueue_after([done], tasks.link, str(path), 2)
    assert Job.objects.get(pk=int(ready.id)).status == JobStatus.READY
    cancelled = enqueue_after([done.id, failed.id], tasks.link, str(path), 3)
    assert cancelled.status == TaskResultStatus.FAILED
    assert Job.objects.get(pk=int(cancelled.id)).status == JobStatus.CANCELLED
    run_worker()
    assert "link 2 after [1]" in lines(path) and not any(line.startswith("link 3") for line in lines(path))


def test_enqueue_after_refuses_what_it_cannot_keep(db):
    parent = tasks.link.enqueue("/dev/null", 1)
    with pytest.raises(LookupError, match="no job 999999"):
        enqueue_after([parent, 999999], tasks.link, "/dev/null", 2)
    with pytest.raises(TypeError, match="unique"):
        enqueue_after([parent], tasks.unique_add, 1, 2)
    with pytest.raises(TypeError, match="list"):
        enqueue_after(parent, tasks.link, "/dev/null", 2)
    for bad in ("1; DROP TABLE", -1, 1.5, True, None):
        with pytest.raises(TypeError):
            enqueue_after([bad], tasks.link, "/dev/null", 2)
    with pytest.raises(ValueError, match="at least one parent"):
        enqueue_after([], tasks.link, "/dev/null", 2)
    assert Job.objects.count() == 1 and not JobDependency.objects.exists()


def test_cancel_or_delete_of_a_waiting_parent_cancels_what_waits_on_it(db, record_dir):
    path = str(record_dir / "runs")
    parent, other = tasks.link.enqueue(path, 1), tasks.link.enqueue(path, 9)
    child = enqueue_after([parent], tasks.link, path, 2)
    grandchild = enqueue_after([child], tasks.link, path, 3)
    assert [j.pk for j in cancel_ready(Job.objects.filter(pk=int(child.id)), "no")] == [int(child.id)]
    assert Job.objects.get(pk=int(grandchild.id)).status == JobStatus.CANCELLED
    orphan = enqueue_after([other], tasks.link, path, 4)
    delete_jobs(Job.objects.filter(pk=int(other.id)))
    job = Job.objects.get(pk=int(orphan.id))
    assert job.status == JobStatus.CANCELLED and "was deleted" in job.errors[0]["message"]


def test_a_parent_that_became_one_after_its_claim_still_releases_its_child(db, record_dir):
    """enqueue_after on a RUNNING parent: its worker holds a row read before the mark, and the
    success it writes must still release the child (the fast path leaves the row to jobs.settle)."""
    from types import SimpleNamespace

    path = str(record_dir / "runs")
    tasks.link.enqueue(path, 1)
    store = WorkerStore(worker_id="w-race", backend="default")
    [held] = store.finish_and_claim([], limit=1, queues=None, now=timezone.now()).claimed
    assert isinstance(held, ClaimedJob) and not held.coordinated
    child = enqueue_after([str(held.id)], tasks.link, path, 2)

    done = SimpleNamespace(succeeded=True, job=held, return_value=1, decision=None, error=None, final=None)
    written = store.finish_and_claim([done], limit=0, queues=None, now=timezone.now())
    assert written.outcomes[0][1] == JobStatus.SUCCESSFUL
    assert Job.objects.get(pk=int(child.id)).status == JobStatus.READY


def test_pruning_keeps_a_member_of_an_open_batch_and_a_parent_of_a_waiting_child(run_worker, record_dir):
    from jobs.pruning import prune

    path = str(record_dir / "runs")
    with batch() as b:
        member = tasks.member.enqueue(path, "m")
        late = tasks.member.enqueue(path, "late")
    Job.objects.filter(pk=int(late.id)).update(run_after=timezone.now() + timezone.timedelta(days=1))
    parent, slow = tasks.link.enqueue(path, 1), tasks.link.enqueue(path, 2)
    Job.objects.filter(pk=int(slow.id)).update(run_after=timezone.now() + timezone.timedelta(days=1))
    child = enqueue_after([parent, slow], tasks.link, path, 3)
    run_worker()
    plain = tasks.link.enqueue(path, 4)
    run_worker()
    prune(now=timezone.now() + timezone.timedelta(days=30), retain_successful=1, retain_failed=1)
    kept = set(Job.objects.values_list("pk", flat=True))
    assert {int(member.id), int(parent.id), int(child.id)} <= kept
    assert int(plain.id) not in kept
    assert not get_batch(b.id).finished


def test_drain_runs_a_batch_and_a_chain_to_the_end(db, record_dir):
    from jobs.testing import drain

    path = record_dir / "runs"
    with batch(on_success=tasks.batch_succeeded) as b:
        first = tasks.link.enqueue(str(path), 0)
        previous = first
        for n in range(1, 4):
            previous = enqueue_after([previous], tasks.link, str(path), n)
    drained = drain()
    assert [line for line in lines(path)] == ["link 0 after []", "link 1 after [0]", "link 2 after [1]",
                                              "link 3 after [2]"]
    assert callbacks_of(b.id) == Counter({"tests.tasks.batch_succeeded": 1})
    assert Job.objects.get(task_path="tests.tasks.batch_succeeded").status == JobStatus.SUCCESSFUL
    assert drained.ran >= 5


# -- real workers, killed -------------------------------------------------------------------------

def test_workers_sigkilled_mid_batch_and_mid_chain_lose_and_double_nothing(workers, record_dir):
    path = record_dir / "runs"
    with batch(on_success=tasks.batch_succeeded, on_failure=tasks.batch_failed,
               on_finish=tasks.batch_finished) as b:
        for i in range(12):
            tasks.member.enqueue(str(path), f"m{i}", "ok", 0.15)
    previous = tasks.link.enqueue(str(path), 0, 0.1)
    chain = [previous]
    for n in range(1, 8):
        previous = enqueue_after([previous], tasks.link, str(path), n, 0.1)
        chain.append(previous)
    doomed = [workers.start("--concurrency", "2"), workers.start("--concurrency", "2")]
    wait_for(lambda: sum(line.startswith("end m") for line in lines(path)) >= 3
             and sum(line.startswith("link") for line in lines(path)) >= 2, message="the batch and chain under way")
    for proc in doomed:
        proc.send_signal(signal.SIGKILL)
    for proc in doomed:
        proc.wait(10)
    rescuer = workers.start("--concurrency", "3")
    wait_for(lambda: get_batch(b.id).finished and Job.objects.get(pk=int(chain[-1].id)).status == JobStatus.SUCCESSFUL
             and not Job.objects.exclude(status=JobStatus.SUCCESSFUL).exists(), timeout=90,
             message="the batch, its callbacks and the chain to end (stale_after is 3 s in tests)")
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(30) == 0, workers.output(rescuer)
    assert callbacks_of(b.id) == Counter({"tests.tasks.batch_succeeded": 1, "tests.tasks.batch_finished": 1})
    state = get_batch(b.id)
    assert (state.total, state.successful, state.failed, state.cancelled) == (12, 12, 0, 0)
    # Each link started only after its parent had recorded its own start (a link killed mid-run
    # runs again: its later runs come after its parent's too), and saw its parent's result.
    first_start = {}
    for index, line in enumerate(lines(path)):
        if line.startswith("link "):
            n = int(line.split()[1])
            first_start.setdefault(n, index)
            assert line == f"link {n} after {[n - 1] if n else []}"
    assert sorted(first_start) == list(range(8))
    assert all(first_start[n - 1] < first_start[n] for n in range(1, 8))
    for job in Job.objects.filter(task_path__in=CALLBACKS):
        assert job.return_value["finished"] and job.return_value["successful"] == 12


# -- the admin ------------------------------------------------------------------------------------

def test_the_admin_shows_a_childs_parents_and_why_it_waits_and_a_parents_children(admin_client, record_dir):
    path = str(record_dir / "runs")
    parent = tasks.link.enqueue(path, 1)
    child = enqueue_after([parent], tasks.link, path, 2)
    page = admin_client.get(f"/admin/jobs/job/{child.id}/change/").content.decode()
    assert 'id="job-waiting"' in page and f"waiting for its parent #{parent.id} (READY)" in page
    assert f'href="/admin/jobs/job/{parent.id}/change/">#{parent.id}</a>' in page
    page = admin_client.get(f"/admin/jobs/job/{parent.id}/change/").content.decode()
    assert 'id="job-children"' in page and f"#{child.id}</a>" in page
    listing = admin_client.get("/admin/jobs/job/?status=WAITING").content.decode()
    assert f"waiting for its parent #{parent.id}" in listing


def test_the_admin_lists_a_batch_with_its_counts_members_and_callbacks_and_cancels_it(admin_client, run_worker,
                                                                                      record_dir):
    path = str(record_dir / "runs")
    with batch(on_failure=tasks.batch_failed, on_finish=tasks.batch_finished) as b:
        done = tasks.member.enqueue(path, "done")
        later = [tasks.member.enqueue(path, f"later{i}") for i in range(3)]
    Job.objects.filter(pk__in=[int(r.id) for r in later]).update(run_after=timezone.now() + timezone.timedelta(days=1))
    run_worker()
    listing = admin_client.get("/admin/jobs/jobbatch/").content.decode()
    assert b.id in listing and "running (3 pending)" in listing
    members = admin_client.get(f"/admin/jobs/job/?batch_id={b.id}").content.decode()
    assert all(f"/admin/jobs/job/{r.id}/change/" in members for r in [done, *later])
    page = admin_client.get(f"/admin/jobs/job/{done.id}/change/").content.decode()
    assert 'id="job-batch"' in page and b.id in page
    response = admin_client.post("/admin/jobs/jobbatch/", {"action": "cancel_members", "_selected_action": [b.id],
                                                            "reason": "campaign stopped"}, follow=True)
    assert "Cancelled 3 jobs of 1 batch." in response.content.decode()
    state = get_batch(b.id)
    assert (state.successful, state.cancelled, state.finished) == (1, 3, True)
    assert callbacks_of(b.id) == Counter({"tests.tasks.batch_failed": 1, "tests.tasks.batch_finished": 1})
    page = admin_client.get(f"/admin/jobs/jobbatch/{b.id}/change/").content.decode()
    assert "finished: failed" in page and "tests.tasks.batch_failed" in page


# -- damage and size ------------------------------------------------------------------------------

def test_a_parent_with_1200_children_releases_them_all_in_its_one_transaction(run_worker, record_dir):
    path = str(record_dir / "runs")
    parent = tasks.link.enqueue(path, 1)
    Job.objects.filter(pk=int(parent.id)).update(run_after=timezone.now() + timezone.timedelta(days=1))
    children = [enqueue_after([parent], tasks.noop) for _ in range(1200)]
    Job.objects.filter(pk=int(parent.id)).update(run_after=timezone.now())
    store = WorkerStore(worker_id="w-fan", backend="default")
    [held] = store.finish_and_claim([], limit=1, queues=None, now=timezone.now()).claimed
    assert held.id == int(parent.id) and held.coordinated
    from types import SimpleNamespace

    done = SimpleNamespace(succeeded=True, job=held, return_value=1, decision=None, error=None, final=None)
    store.finish_and_claim([done], limit=0, queues=None, now=timezone.now())
    assert Job.objects.filter(pk__in=[int(c.id) for c in children], status=JobStatus.READY).count() == 1200


def test_damaged_children_and_batch_ids_do_not_stop_a_parents_outcome(run_worker, record_dir, caplog):
    path = str(record_dir / "runs")
    parent = tasks.link.enqueue(path, 1)
    child = enqueue_after([parent], tasks.link, path, 2)
    Job.objects.filter(pk=int(parent.id)).update(batch_id="no-such-batch")
    from django.db import connection

    table = connection.ops.quote_name("jobs_job")
    column = connection.ops.quote_name("waiting_for")
    with connection.cursor() as cursor:  # a value no enqueue writes (SQLite keeps text in any column)
        cursor.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s",
                       ["x" if connection.vendor == "sqlite" else 2**31 - 1, int(child.id)])
    run_worker()
    assert Job.objects.get(pk=int(parent.id)).status == JobStatus.SUCCESSFUL
    # The damaged child stays as it was (the admin shows it); nothing else is held up.
    assert Job.objects.get(pk=int(child.id)).status == JobStatus.WAITING
    if connection.vendor == "sqlite":  # 'x' - 1 breaks the column's CHECK: the savepoint is rolled back, logged
        assert f"what the end of jobs [{parent.id}] sets off (children, batch) could not be written" in caplog.text
    other = tasks.link.enqueue(path, 3)
    run_worker()
    assert Job.objects.get(pk=int(other.id)).status == JobStatus.SUCCESSFUL


def test_a_waiting_child_counts_as_enqueued_for_the_testing_helpers(db):
    from jobs.testing import assert_enqueued, enqueued

    parent = tasks.link.enqueue("/dev/null", 1)
    child = enqueue_after([parent], tasks.link, "/dev/null", 2)
    [found] = assert_enqueued(tasks.link, args=["/dev/null", 2])
    assert found.id == child.id and found.status == TaskResultStatus.READY
    assert len(enqueued(tasks.link)) == 2
    with pytest.raises(AssertionError, match=rf"id={child.id} \(waiting for its parents\)"):
        assert_enqueued(tasks.link, args=["/dev/null", 3])


def test_a_burst_worker_runs_a_chain_to_its_end_before_it_quits(workers, record_dir):
    """A link's outcome releases the next: a burst worker that saw its pool idle while that outcome
    was on its way in used to quit with the next link READY (2 runs in 3 of the docs' chain)."""
    path = record_dir / "runs"
    previous = tasks.link.enqueue(str(path), 0)
    for n in range(1, 8):
        previous = enqueue_after([previous], tasks.link, str(path), n)
    proc = workers.start("--burst", "--concurrency", "4")
    assert proc.wait(60) == 0, workers.output(proc)
    assert list(Job.objects.order_by("id").values_list("status", flat=True)) == [JobStatus.SUCCESSFUL] * 8
    assert lines(path) == [f"link {n} after {[n - 1] if n else []}" for n in range(8)]
