"""The fault test's checker (chaos/check.py) on made-up evidence: it must see a broken
promise of job control, of a batch's callbacks or of a chain, and must not blame the queue
for what the faults explain."""

from datetime import UTC, datetime

from chaos.check import PARENT_ENDED, Evidence, check
from chaos.mix import BY_NAME, CALLBACKS, LOST, PLANNED
from jobs.limits import unique_key

T0 = 1_800_000_000.0


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def _job(kind: str, token: str, *, status="SUCCESSFUL", attempts=1, worker="w1", errors=(), finished=60.0,
         **kwargs):
    errors = list(errors)
    return {"task_path": BY_NAME[kind].task.module_path, "status": status, "attempts": attempts, "max_attempts": 5,
            "worker_id": worker, "worker_ids": [e["worker_id"] for e in errors] + ([worker] if status == "SUCCESSFUL"
                                                                                   else []),
            "errors": errors, "kwargs": {"token": token, **kwargs}, "finished_at": _at(finished), "meta": {},
            "limit_key": f"account-{kwargs['account']}" if "account" in kwargs else None,
            "unique_key": unique_key(BY_NAME[kind].task, [], {"token": token, **kwargs})}


def _effect(attempt: int, worker: str, start: float, end: float, raised=False) -> dict:
    return {"attempt": attempt, "worker_id": worker, "raised": raised, "started_at": _at(start), "ended_at": _at(end)}


def _evidence(jobs: dict, effects: dict, calls: list, **extra) -> Evidence:
    record = {n: {"mode": "one", "jobs": [[t, k, kw] for t, k, kw in call[0]], "ids": [str(i) for i in call[1]],
                  **(call[2] if len(call) > 2 else {})}
              for n, call in enumerate(calls)}
    return Evidence(calls=record, jobs=jobs, effects=effects, logs=[], faults=[], restarts=[], **extra)


def _limited(spans: list[tuple[float, float]], errors_of=None) -> Evidence:
    jobs, effects, calls = {}, {}, []
    for i, (start, end) in enumerate(spans, start=1):
        errors = (errors_of or {}).get(i, [])
        jobs[i] = _job("limited", f"t{i}", account=1, seconds=1, attempts=len(errors) + 1, errors=errors)
        effects[i] = [_effect(e["attempt"], e["worker_id"], start - 5, start - 4) for e in errors]
        effects[i].append(_effect(len(errors) + 1, "w1", start, end))
        calls.append(([(f"t{i}", "limited", {"account": 1, "seconds": 1})], [i]))
    return _evidence(jobs, effects, calls)


def test_three_attempts_of_a_key_limited_to_two_at_once_are_wrong_attempts():
    verdict = check(_limited([(0, 2), (1, 3), (1.5, 2.5)]))
    assert verdict.count("wrong attempts") == 1, verdict.failures
    assert "3 attempts of concurrency key account-1 ran at once (limit 2)" in str(verdict.failures)
    assert verdict.most_running == {"account-1": 3}


def test_attempts_that_follow_each_other_are_within_the_limit():
    verdict = check(_limited([(0, 1), (1, 2), (0.5, 1.5)]))
    assert all(verdict.count(name) == 0 for name in verdict.failures), verdict.failures
    assert verdict.most_running == {"account-1": 2}


def test_an_attempt_taken_back_gave_its_place_away():
    lost = {"attempt": 1, "worker_id": "zombie", "exception_class_path": LOST, "message": "lost", "at": _at(1).isoformat()}
    evidence = _limited([(0, 2), (1, 3), (3, 4)], errors_of={3: [lost]})
    evidence.effects[3][0] = _effect(1, "zombie", 0.5, 2.8)  # the zombie woke up and finished its attempt
    evidence.faults = [{"kind": "stop", "pid": None, "start": T0, "end": None}]
    verdict = check(evidence)
    assert all(verdict.count(name) == 0 for name in verdict.failures), verdict.failures
    assert verdict.most_running == {"account-1": 2}
    evidence.jobs[3]["errors"][0]["exception_class_path"] = "builtins.RuntimeError"  # not taken back: it counts
    assert check(evidence).most_running == {"account-1": 3}


def test_samples_over_a_limit_two_ready_of_a_unique_key_and_a_key_left_running_are_failures():
    evidence = _evidence({}, {}, [], limit_peaks={"account-2": (3, 2), "account-3": (2, 2)},
                         unique_doubled={"chaos.tasks.once:slot-1": 2}, keys_left_running={"account-1": 1})
    verdict = check(evidence)
    assert list(verdict.failures["wrong attempts"]) == ["account-2"]
    assert list(verdict.failures["duplicated"]) == ["chaos.tasks.once:slot-1"]
    assert list(verdict.failures["stuck"]) == ["account-1"]


def test_a_unique_enqueue_may_get_the_ready_job_of_its_own_key_only():
    jobs = {1: _job("unique", "a", slot=1), 2: _job("unique", "c", slot=2)}
    calls = [([("a", "unique", {"slot": 1})], [1]), ([("b", "unique", {"slot": 1})], [1]),
             ([("c", "unique", {"slot": 2})], [2]), ([("d", "unique", {"slot": 3})], [2])]
    verdict = check(_evidence(jobs, {1: [_effect(1, "w1", 0, 1)], 2: [_effect(1, "w1", 0, 1)]}, calls))
    assert verdict.collapsed == {"b": 1}
    assert list(verdict.failures["lost"]) == ["d"]


def test_a_job_cancelled_ready_that_ran_anyway_is_caught():
    jobs = {1: _job("cancelled", "a", seconds=1), 2: _job("cancelled", "b", status="CANCELLED", attempts=0,
                                                          worker="", seconds=1)}
    calls = [([("a", "cancelled", {"seconds": 1})], [1]), ([("b", "cancelled", {"seconds": 1})], [2])]
    evidence = _evidence(jobs, {1: [_effect(1, "w1", 5, 6)]}, calls,
                         cancels={"a": {"id": 1, "at": T0 + 1, "said": "cancelled"},
                                  "b": {"id": 2, "at": T0 + 1, "said": "cancelled"}})
    verdict = check(evidence)
    assert list(verdict.failures["lost"]) == ["1"]  # said cancelled, ended SUCCESSFUL
    assert list(verdict.failures["duplicated"]) == ["1"]  # and its attempt began after the cancel


def test_a_cancelled_job_nobody_cancelled_is_lost():
    jobs = {1: _job("quick", "a", status="CANCELLED", attempts=0, worker="")}
    verdict = check(_evidence(jobs, {}, [([("a", "quick", {})], [1])]))
    assert "which nobody asked for" in verdict.failures["lost"]["1"]


CALLBACK = {kind.name: kind.task.module_path for kind in CALLBACKS}


def _batch(member_ends: list[tuple[str, float]], callbacks: list[tuple[str, float]]) -> Evidence:
    """A batch of quick or doomed members ending at the given moments, and callback jobs (kind,
    start of their one attempt), each SUCCESSFUL; what the batch row lists is what was fired."""
    jobs, effects, sent = {}, {}, []
    for i, (kind, end) in enumerate(member_ends, start=1):
        if kind == "doomed":
            errors = [{"attempt": a, "worker_id": "w1", "exception_class_path": PLANNED, "message": "planned",
                       "at": _at(end).isoformat()} for a in range(1, 6)]
            jobs[i] = _job("doomed", f"m{i}", status="FAILED", attempts=5, errors=errors, finished=end)
            effects[i] = [_effect(a, "w1", end - 0.5, end - 0.1, raised=True) for a in range(1, 6)]
        else:
            jobs[i] = _job("quick", f"m{i}", finished=end)
            effects[i] = [_effect(1, "w1", end - 0.5, end - 0.1)]
        jobs[i]["batch_id"] = "b1"
        sent.append((f"m{i}", kind, {}))
    for i, (kind, start) in enumerate(callbacks, start=100):
        jobs[i] = {**_job("quick", "", finished=start + 1), "task_path": CALLBACK[kind], "kwargs": {"batch_id": "b1"}}
        effects[i] = [_effect(1, "w1", start, start + 0.1)]
    ends = [status for status in (job["status"] for job in jobs.values() if job.get("batch_id"))]
    row = {"total": len(ends), "successful": ends.count("SUCCESSFUL"), "failed": ends.count("FAILED"),
           "cancelled": 0, "sealed_at": _at(0), "finished_at": _at(max(end for _, end in member_ends)),
           "callbacks": [{"task": CALLBACK[kind], "job": i} for i, (kind, _) in enumerate(callbacks, start=100)]}
    call = ([(t, k, kw) for t, k, kw in sent], list(range(1, len(sent) + 1)), {"mode": "batch", "batch_id": "b1"})
    return _evidence(jobs, effects, [call], batches={"b1": row})


def test_a_batch_whose_callbacks_fired_once_each_after_its_members_passes():
    verdict = check(_batch([("quick", 10), ("quick", 12)], [("on_success", 12.5), ("on_finish", 12.6)]))
    assert all(verdict.count(name) == 0 for name in verdict.failures), verdict.failures
    assert verdict.batches["made"] == 1 and verdict.batches["by_outcome"] == {"successful": 1}
    verdict = check(_batch([("quick", 10), ("doomed", 12)], [("on_failure", 12.5), ("on_finish", 12.6)]))
    assert all(verdict.count(name) == 0 for name in verdict.failures), verdict.failures


def test_a_doubled_callback_is_a_wrong_callback():
    verdict = check(_batch([("quick", 10), ("quick", 12)],
                           [("on_success", 12.5), ("on_finish", 12.6), ("on_finish", 13)]))
    assert list(verdict.failures["wrong callbacks"]) == ["batch b1 on_finish"], verdict.failures
    assert "on_finish fired 2 times (jobs [101, 102])" in verdict.failures["wrong callbacks"]["batch b1 on_finish"]


def test_a_callback_that_started_before_the_last_member_ended_is_a_wrong_callback():
    verdict = check(_batch([("quick", 10), ("quick", 12)], [("on_success", 11), ("on_finish", 12.6)]))
    assert list(verdict.failures["wrong callbacks"]) == ["batch b1 on_success early"], verdict.failures
    assert "before its member 2 ended" in verdict.failures["wrong callbacks"]["batch b1 on_success early"]


def test_the_wrong_callback_and_a_lost_one_are_wrong_callbacks():
    verdict = check(_batch([("quick", 10), ("doomed", 12)], [("on_success", 12.5)]))
    assert sorted(verdict.failures["wrong callbacks"]) == ["batch b1 on_failure", "batch b1 on_finish",
                                                           "batch b1 on_success"], verdict.failures
    evidence = _batch([("quick", 10), ("quick", 12)], [])
    evidence.batches["b1"]["finished_at"] = None  # every member ended, the batch never finished
    verdict = check(evidence)
    assert "its callbacks are lost" in verdict.failures["wrong callbacks"]["batch b1"]


def _chain(child_status: str, child_effects: list, *, parent="doomed", parent_end=20.0) -> Evidence:
    """Job 1 (the parent, doomed: FAILED, or quick: SUCCESSFUL), then job 2 (quick) after it."""
    if parent == "doomed":
        errors = [{"attempt": a, "worker_id": "w1", "exception_class_path": PLANNED, "message": "planned",
                   "at": _at(parent_end).isoformat()} for a in range(1, 6)]
        jobs = {1: _job("doomed", "p", status="FAILED", attempts=5, errors=errors, finished=parent_end)}
        effects = {1: [_effect(a, "w1", parent_end - 1, parent_end - 0.5, raised=True) for a in range(1, 6)]}
    else:
        jobs = {1: _job("quick", "p", finished=parent_end)}
        effects = {1: [_effect(1, "w1", parent_end - 1, parent_end - 0.5)]}
    if child_status == "CANCELLED":
        error = {"attempt": 0, "worker_id": "", "exception_class_path": PARENT_ENDED, "at": _at(parent_end).isoformat(),
                 "message": "not run: its parent job #1 (chaos.tasks.doomed) ended FAILED"}
        jobs[2] = {**_job("quick", "c", status="CANCELLED", attempts=0, worker="", errors=[error],
                          finished=parent_end), "worker_ids": []}
    else:
        jobs[2] = _job("quick", "c", finished=parent_end + 5)
    effects[2] = child_effects
    call = ([("p", parent, {}), ("c", "quick", {})], [1, 2], {"mode": "chain", "parents": {"c": ["p"]}})
    return _evidence(jobs, effects, [call], parents={2: [1]})


def test_a_child_cancelled_unrun_after_its_parent_failed_passes():
    verdict = check(_chain("CANCELLED", []))
    assert all(verdict.count(name) == 0 for name in verdict.failures), verdict.failures
    assert verdict.chains["made"] == 1 and verdict.chains["after a failed or cancelled parent"] == 1
    verdict = check(_chain("SUCCESSFUL", [_effect(1, "w1", 21, 22)], parent="quick"))
    assert all(verdict.count(name) == 0 for name in verdict.failures), verdict.failures


def test_a_child_that_ran_after_its_parent_failed_is_a_wrong_callback():
    verdict = check(_chain("SUCCESSFUL", [_effect(1, "w1", 21, 22)]))
    assert list(verdict.failures["wrong callbacks"]) == ["2"], verdict.failures
    assert "job 2 ran (attempt 1 on w1" in verdict.failures["wrong callbacks"]["2"]


def test_a_child_that_ran_before_its_parent_ended_is_a_wrong_callback():
    verdict = check(_chain("SUCCESSFUL", [_effect(1, "w1", 19, 22)], parent="quick"))
    assert list(verdict.failures["wrong callbacks"]) == ["2"], verdict.failures
    assert "before its parent 1 ended SUCCESSFUL" in verdict.failures["wrong callbacks"]["2"]


def test_a_child_left_waiting_is_stuck():
    evidence = _chain("CANCELLED", [], parent="quick")
    evidence.jobs[2].update(status="WAITING", errors=[], finished_at=None)
    verdict = check(evidence)
    assert "is still WAITING after the drain" in verdict.failures["stuck"]["2"], verdict.failures


def _blocked(*, retry_start: float) -> Evidence:
    """A ``blocked`` job on a --processes host: attempt 1 began at 0 on child 11, which its parent
    ended; the timeout was recorded at 3; attempt 2 ran on child 12 from ``retry_start``."""
    from chaos.check import WorkerLog
    from chaos.mix import TIMEOUT

    timeout = {"attempt": 1, "worker_id": "h:11:a", "exception_class_path": TIMEOUT, "message": "ended",
               "at": _at(3).isoformat()}
    jobs = {1: _job("blocked", "a", attempts=2, worker="h:12:b", errors=[timeout], slot=1, seconds=6)}
    jobs[1]["limit_key"] = "blocked-1"
    log = WorkerLog("h2-w2", 10, "h:10:p", worker_ids=["h:10:p", "h:11:a", "h:12:b"],
                    children={11: "h:11:a", 12: "h:12:b"}, ended={11: (1, 1)})
    evidence = _evidence(jobs, {1: [_effect(2, "h:12:b", retry_start, retry_start + 0.1)]},
                         [([("a", "blocked", {"slot": 1, "seconds": 6})], [1])],
                         begun={1: [{"attempt": 1, "worker_id": "h:11:a", "started_at": _at(0)},
                                    {"attempt": 2, "worker_id": "h:12:b", "started_at": _at(retry_start)}]})
    evidence.logs = [log]
    return evidence


def test_a_blocked_attempt_its_parent_ended_holds_its_key_until_its_timeout_is_recorded():
    verdict = check(_blocked(retry_start=3.5))
    assert all(verdict.count(name) == 0 for name in verdict.failures), verdict.failures
    verdict = check(_blocked(retry_start=2.0))  # the retry began while the first attempt's process could run
    assert "2 attempts of concurrency key blocked-1 ran at once (limit 1)" in str(verdict.failures["wrong attempts"])


def test_a_blocked_attempt_that_timed_out_but_ran_to_its_end_is_wrong_attempts():
    evidence = _blocked(retry_start=3.5)
    evidence.effects[1].append(_effect(1, "h:11:a", 0, 6))  # its process was not ended: it slept on
    verdict = check(evidence)
    assert "its task reached its end" in verdict.failures["wrong attempts"]["1"]


def test_a_child_that_died_is_a_crash_unless_a_kill_child_fault_killed_it():
    from chaos.check import WorkerLog

    lost = {"attempt": 1, "worker_id": "h:11:a", "exception_class_path": LOST, "message": "lost",
            "at": _at(1).isoformat()}
    jobs = {1: _job("quick", "a", attempts=2, worker="h:12:b", errors=[lost])}
    evidence = _evidence(jobs, {1: [_effect(2, "h:12:b", 2, 2.1)]}, [([("a", "quick", {})], [1])])
    evidence.logs = [WorkerLog("h2-w2", 10, "h:10:p", worker_ids=["h:10:p", "h:11:a", "h:12:b"],
                               children={11: "h:11:a", 12: "h:12:b"}, died=[(11, "signal SIGKILL after 9.0s")])]
    verdict = check(evidence)
    assert list(verdict.failures["stuck"]) == ["h2-w2 child 11"]
    assert "taken back from h2-w2 (h:11:a)" in verdict.failures["wrong attempts"]["1"]
    evidence.faults = [{"kind": "kill-child", "pid": 10, "child_pid": 11, "start": T0 + 0.5, "end": T0 + 0.5}]
    verdict = check(evidence)
    assert all(verdict.count(name) == 0 for name in verdict.failures), verdict.failures
    assert verdict.taken_back_by_cause == {"kill-child": 1}


def test_a_child_its_parent_ended_explains_only_the_attempts_taken_back_from_it_then():
    """A parent that ended a child for one job explains that child's attempts taken back at that
    moment, not one taken back from it earlier, while it was alive and reachable."""
    from chaos.check import WorkerLog

    def evidence(lost_at: float) -> Evidence:
        lost = {"attempt": 1, "worker_id": "h:11:a", "exception_class_path": LOST, "message": "lost",
                "at": _at(lost_at).isoformat()}
        jobs = {1: _job("quick", "a", attempts=2, worker="h:12:b", errors=[lost])}
        made = _evidence(jobs, {1: [_effect(2, "h:12:b", lost_at + 1, lost_at + 1.1)]}, [([("a", "quick", {})], [1])])
        made.logs = [WorkerLog("h2-w2", 10, "h:10:p", worker_ids=["h:10:p", "h:11:a", "h:12:b"],
                               children={11: "h:11:a", 12: "h:12:b"}, ended={11: (9, 1)}, ended_at={11: T0 + 50})]
        return made

    verdict = check(evidence(lost_at=50.2))
    assert all(verdict.count(name) == 0 for name in verdict.failures), verdict.failures
    assert verdict.taken_back_by_cause == {"ended by its parent": 1}
    verdict = check(evidence(lost_at=20))  # 30 s before its parent ended it: nothing explains it
    assert "a worker that was alive and reachable then" in verdict.failures["wrong attempts"]["1"]
