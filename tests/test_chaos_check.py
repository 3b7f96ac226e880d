"""The fault test's checker (chaos/check.py) on made-up evidence: it must see a broken
promise of job control, and must not blame the queue for what the faults explain."""

from datetime import UTC, datetime

from chaos.check import Evidence, check
from chaos.mix import BY_NAME, LOST
from jobs.limits import unique_key

T0 = 1_800_000_000.0


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def _job(kind: str, token: str, *, status="SUCCESSFUL", attempts=1, worker="w1", errors=(), **kwargs):
    errors = list(errors)
    return {"task_path": BY_NAME[kind].task.module_path, "status": status, "attempts": attempts, "max_attempts": 5,
            "worker_id": worker, "worker_ids": [e["worker_id"] for e in errors] + ([worker] if status == "SUCCESSFUL"
                                                                                   else []),
            "errors": errors, "kwargs": {"token": token, **kwargs}, "finished_at": _at(60), "meta": {},
            "limit_key": f"account-{kwargs['account']}" if "account" in kwargs else None,
            "unique_key": unique_key(BY_NAME[kind].task, [], {"token": token, **kwargs})}


def _effect(attempt: int, worker: str, start: float, end: float) -> dict:
    return {"attempt": attempt, "worker_id": worker, "raised": False, "started_at": _at(start), "ended_at": _at(end)}


def _evidence(jobs: dict, effects: dict, calls: list, **extra) -> Evidence:
    record = {n: {"mode": "one", "jobs": [[t, k, kw] for t, k, kw in sent], "ids": [str(i) for i in ids]}
              for n, (sent, ids) in enumerate(calls)}
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
