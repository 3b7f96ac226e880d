"""The checker: what the producer sent, what the tasks did and what the workers said,
held against the job rows once everything has drained.

Four invariants, each failure naming the job (or worker) and what is wrong:

- lost: every job the producer enqueued (a call that returned, or one that raised but
  committed, found by its token) exists and ended in a state its kind allows, and a
  SUCCESSFUL job's task really reached its end (its effect is there).
- stuck: no job is RUNNING or READY; no worker hung: each exits on SIGTERM, heartbeats
  again within a minute of each outage of its own ending, never goes silent for two
  stale_after while nothing excuses it, and never exits by itself.
- duplicated: no job was enqueued twice, and every effect of a job is explained: the
  counted success, an attempt that counted as failed (its error entry names the same
  worker: its own failure, a timeout, or a take-back as lost), or an attempt the worker
  handed back on shutdown. Two effects of one attempt of one worker are a duplicate.
- wrong attempts: attempts, error entries and worker ids agree; never past
  max_attempts; every take-back a worker logged is recorded as a lost worker; and no
  attempt was taken back from a worker that was alive and reachable (no fault on it and
  no database restart around the time).

Job control is held to the same four: an enqueue of a unique kind that returned another
call's job must have met a job of its own key (else lost), and two READY jobs of one
unique key seen at once are duplicated; a concurrency key seen with more RUNNING jobs
than its limit, or more attempts of it running at once than the limit by the tasks'
own start and end times (attempts taken back or handed back aside), is wrong attempts,
and a key whose count of RUNNING jobs is not 0 after the drain is stuck (its jobs would
be held back for ever). A job cancelled READY must end CANCELLED, one cancelled RUNNING
CANCELLED or (when it was finishing just then) SUCCESSFUL; CANCELLED with no cancel
asked is lost, unless a hand-back met a READY job of its unique key.

The ``--processes`` hosts (chaos.hosts) add: a worker id is a child's, attributed to its
host's worker through the parent's log; a take-back from a child its parent ended (a job
past its timeout) or that a ``kill-child`` fault killed is explained, a child that died
otherwise is stuck (a crash); an attempt of the hard kinds that overran its timeout in C
(``gil_timeout``, ``blocked``, attempt 1) must end as a timeout of that attempt, with its
parent's log saying it ended the process and no effect of it (wrong attempts otherwise);
and an attempt whose process was ended, which began (``Begun``) but wrote no effect, holds
its concurrency key's place from its start until its timeout was recorded.

Batches and chains of dependencies add a fifth, wrong callbacks (what a job's end sets
off: a batch's callbacks, a waiting child's release or cancel):

- every batch the producer made holds exactly the jobs its call enqueued, its counts
  agree with its members' ends, and once every member has ended it is finished, with
  exactly one job of each callback it calls for (on_success when every member ended
  SUCCESSFUL, on_failure when any ended FAILED or CANCELLED, on_finish always), none
  of the others, each listed on the batch, and each starting only after every member
  had ended (its first effect after each member's finish and counted attempt);
- every child waits for exactly the parents the producer gave it; one whose parents all
  ended SUCCESSFUL ran, its first effect after each parent's finish and counted
  attempt; one with a parent that ended FAILED or CANCELLED never ran and ended
  CANCELLED with no attempt, its error naming such a parent. A job still WAITING after
  the drain is stuck.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from jobs.limits import unique_key

from .mix import BY_NAME, BY_TASK_PATH, CALLBACK_BY_TASK_PATH, CANCELLED, FAULT_ERRORS, LOST, PLANNED, TIMEOUT

INVARIANTS = ("lost", "stuck", "duplicated", "wrong attempts", "wrong callbacks")
ENDED = ("SUCCESSFUL", "FAILED", "CANCELLED")
# The error of a child cancelled because a parent did not succeed (jobs.settle).
PARENT_ENDED = "jobs.exceptions.ParentDidNotSucceed"
# After a partition heals, TCP may take a while to deliver again (retransmission backoff,
# then the keepalive or user timeout and a reconnect with the worker's backoff).
AFTER_PARTITION = 60.0
# After a database restart, each worker reconnects on its own backoff (capped at 10 s).
AFTER_RESTART = 15.0
# After SIGCONT, the worker's next heartbeat is at most a heartbeat interval away.
AFTER_STOP = 5.0

_STARTED = re.compile(r"(?:worker|supervisor) started worker=(\S+)")
# A --processes parent's lines (its children write in its log too).
_CHILD_STARTED = re.compile(r"worker process started slot=\d+ pid=(\d+) worker=(\S+)")
_CHILD_ENDED = re.compile(r"worker process ended slot=\d+ pid=(\d+): job id=(\d+) attempt=(\d+)")
_CHILD_DIED = re.compile(r"worker process died slot=\d+ pid=(\d+) (.*)")
_TAKEN = re.compile(r"job taken back id=(\d+) task=\S+ attempt=(\d+)/\d+ lost_worker=(\S+)")
_HANDED = re.compile(r"job handed back id=(\d+) task=\S+ attempt=(\d+)")
_DISCARDED = re.compile(r"job outcome discarded id=(\d+) task=\S+ attempt=(\d+)")


@dataclass
class WorkerLog:
    label: str
    pid: int
    worker_id: str | None = None
    taken_back: list[tuple[int, int, str]] = field(default_factory=list)  # (job, attempt, lost worker)
    handed_back: list[tuple[int, int]] = field(default_factory=list)  # (job, attempt)
    discarded: list[tuple[int, int]] = field(default_factory=list)  # zombie outcomes dropped by fencing
    # A --processes host: every worker id in the log (the parent's and each child's), each child's
    # by its PID, the children the parent ended for a job that would not stop (PID -> (job,
    # attempt)), and the children it saw die (PID, how).
    worker_ids: list[str] = field(default_factory=list)
    children: dict[int, str] = field(default_factory=dict)
    ended: dict[int, tuple[int, int]] = field(default_factory=dict)
    ended_at: dict[int, float] = field(default_factory=dict)  # PID -> when the parent said it ended it
    died: list[tuple[int, str]] = field(default_factory=list)


def read_worker_log(path: Path, label: str, pid: int) -> WorkerLog:
    log = WorkerLog(label, pid)
    for line in path.read_text(errors="replace").splitlines():
        if m := _STARTED.search(line):
            log.worker_id = log.worker_id or m[1]
            log.worker_ids.append(m[1])
        elif m := _CHILD_STARTED.search(line):
            log.children[int(m[1])] = m[2]
        elif m := _CHILD_ENDED.search(line):
            log.ended[int(m[1])] = (int(m[2]), int(m[3]))
            log.ended_at[int(m[1])] = _line_time(line)
        elif m := _CHILD_DIED.search(line):
            log.died.append((int(m[1]), m[2]))
        elif m := _TAKEN.search(line):
            log.taken_back.append((int(m[1]), int(m[2]), m[3]))
        elif m := _HANDED.search(line):
            log.handed_back.append((int(m[1]), int(m[2])))
        elif m := _DISCARDED.search(line):
            log.discarded.append((int(m[1]), int(m[2])))
    return log


def _line_time(line: str) -> float:
    """When a worker's log line was written (its asctime, this machine's local time); 0 when unreadable."""
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return 0.0


def _read_entries(path: Path, key: str) -> dict:
    """The producer's record lines that have ``key``, merged by its value (before and after a call)."""
    merged: dict = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if key in entry:
            merged.setdefault(entry[key], {}).update(entry)
    return merged


def read_record(path: Path) -> dict[int, dict]:
    """The producer's calls: call number -> {mode, jobs: [[token, kind, kwargs]], ids | error}."""
    return _read_entries(path, "call")


def read_cancels(path: Path) -> dict[str, dict]:
    """The producer's cancels: token -> {id, at, said | error} (neither: it died mid-call)."""
    return _read_entries(path, "cancel")


@dataclass
class Evidence:
    calls: dict[int, dict]
    jobs: dict[int, dict]  # id -> row (task_path, status, attempts, max_attempts, worker_id, worker_ids, errors, kwargs)
    effects: dict[int, list[dict]]  # job id -> [{attempt, worker_id, raised}]
    logs: list[WorkerLog]
    faults: list[dict]  # from the injector: kind, pid, start, end
    restarts: list[dict]  # from the database: began, up
    bad_workers: list[str] = field(default_factory=list)  # hung or crashed, said by the harness
    cancels: dict[str, dict] = field(default_factory=dict)  # token -> what the producer's cancel said
    limit_peaks: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (most RUNNING seen, limit)
    unique_doubled: dict[str, int] = field(default_factory=dict)  # unique key -> most READY seen at once
    limit_samples: int = 0
    keys_left_running: dict[str, int] = field(default_factory=dict)  # JobLimit rows not at 0 after the drain
    batches: dict[str, dict] = field(default_factory=dict)  # id -> row (counts, sealed_at, finished_at, callbacks)
    parents: dict[int, list[int]] = field(default_factory=dict)  # child id -> its parents' ids, in order
    begun: dict[int, list[dict]] = field(default_factory=dict)  # job id -> [{attempt, worker_id, started_at}]


@dataclass
class Verdict:
    failures: dict[str, dict[str, str]]  # invariant -> {culprit: message}
    enqueued: dict[str, int]  # token -> job id, for every job the producer did enqueue
    reconciled: Counter  # calls that raised: committed / not committed
    taken_back_by_cause: Counter
    collapsed: dict[str, int] = field(default_factory=dict)  # token -> the READY job of its unique key it got
    most_running: dict[str, int] = field(default_factory=dict)  # concurrency key -> most attempts at once (effects)
    batches: dict = field(default_factory=dict)  # figures of the batches checked (see _check_batches)
    chains: dict = field(default_factory=dict)  # figures of the chains checked (see _check_chains)

    def count(self, invariant: str) -> int:
        return len(self.failures[invariant])


def check(ev: Evidence) -> Verdict:
    failures = {name: {} for name in INVARIANTS}

    def fail(invariant: str, culprit, message: str) -> None:
        failures[invariant].setdefault(str(culprit), f"{invariant}: {message}")

    enqueued, reconciled, collapsed = _reconcile(ev, fail)
    callbacks = [job_id for job_id, job in ev.jobs.items() if job["task_path"] in CALLBACK_BY_TASK_PATH]
    by_id_kind = {job_id: BY_TASK_PATH.get(ev.jobs[job_id]["task_path"]) for job_id in [*enqueued.values(), *callbacks]}
    handed_back = {(j, a, w) for log in ev.logs for j, a in log.handed_back for w in log.worker_ids}
    for job_id, kind in by_id_kind.items():
        job = ev.jobs[job_id]
        _check_final_state(job_id, job, kind, ev.effects.get(job_id, []), fail)
        _check_effects(job_id, job, ev.effects.get(job_id, []), handed_back, fail)
        if not _cancelled_by_parent(job):  # no attempt: the chain's check holds it
            _check_attempts(job_id, job, fail)
    _check_cancels(ev, enqueued, fail)
    batches = _check_batches(ev, enqueued, fail)
    chains = _check_chains(ev, enqueued, fail)
    most_running = _check_limits(ev, enqueued, handed_back, fail)
    _check_hard(ev, enqueued, handed_back, fail)
    for label in ev.bad_workers:
        fail("stuck", label, f"worker {label}")
    causes = _check_take_backs(ev, fail)
    return Verdict(failures, enqueued, reconciled, causes, collapsed, most_running, batches, chains)


def _reconcile(ev: Evidence, fail) -> tuple[dict[str, int], Counter, dict[str, int]]:
    """Tokens the producer sent -> the one job each made (or, for a unique kind, the READY job
    of its key it was given); flags lost, doubled and stray jobs."""
    rows_by_token = defaultdict(list)
    for job_id, job in ev.jobs.items():
        if job["task_path"] not in CALLBACK_BY_TASK_PATH:  # the queue enqueues those: no token
            rows_by_token[job["kwargs"].get("token")].append(job_id)
    enqueued: dict[str, int] = {}
    collapsed: dict[str, int] = {}
    reconciled = Counter()
    sent = set()
    for number, call in sorted(ev.calls.items()):
        sent_jobs = [(token, BY_NAME.get(kind), kwargs) for token, kind, kwargs in call["jobs"]]
        tokens = [token for token, _, _ in sent_jobs]
        sent.update(tokens)
        if "ids" in call:
            for (token, kind, kwargs), job_id in zip(sent_jobs, call["ids"]):
                rows, job = rows_by_token.get(token, []), ev.jobs.get(int(job_id))
                if int(job_id) in rows:
                    enqueued[token] = int(job_id)
                elif kind and kind.unique and job and BY_TASK_PATH.get(job["task_path"]) is kind \
                        and job["unique_key"] == unique_key(kind.task, [], {"token": token, **kwargs}):
                    collapsed[token] = int(job_id)  # it met a READY job of its key: that job stands for it
                else:
                    fail("lost", token, f"job {job_id} ({token}, enqueued by call {number}) is not in the table"
                         + (f" (it holds {job['kwargs'].get('token')}, another key)" if job else ""))
            continue
        # Raised (or the producer died mid-call): committed or not, all of the call or none
        # (a unique kind's job may have met a READY job of its key and made no row).
        found = [token for token in tokens if rows_by_token.get(token)]
        certain = [token for token, kind, _ in sent_jobs if not (kind and kind.unique)]
        reconciled["committed" if found else "not committed"] += 1
        if found and not set(certain) <= set(found):
            fail("lost", f"call {number}", f"call {number} ({call['mode']}) committed {len(found)} of "
                 f"{len(tokens)} jobs: a call is all or nothing")
        for token in found:
            enqueued[token] = rows_by_token[token][0]
    for token, rows in rows_by_token.items():
        if len(rows) > 1:
            fail("duplicated", token, f"{token} was enqueued once but is in {len(rows)} rows: {rows}")
        if token not in sent:
            fail("lost", f"job {rows[0]}", f"jobs {rows} have a token ({token}) the producer never sent")
    return enqueued, reconciled, collapsed


def _check_final_state(job_id: int, job: dict, kind, effects: list[dict], fail) -> None:
    status, errors = job["status"], job["errors"]
    if status in ("READY", "RUNNING", "WAITING"):
        fail("stuck", job_id, f"job {job_id} ({kind.name if kind else job['task_path']}) is still {status} "
             f"after the drain (attempt {job['attempts']}, worker {job['worker_id'] or '-'})")
        return
    if kind is None:
        fail("lost", job_id, f"job {job_id} runs {job['task_path']}, which is not a kind of the mix")
        return
    expected = kind.planned | FAULT_ERRORS
    unexpected = sorted({e["exception_class_path"] for e in errors} - expected)
    if status == "SUCCESSFUL":
        if not kind.succeeds:
            fail("lost", job_id, f"job {job_id} ({kind.name}) ended SUCCESSFUL but it always fails")
        elif not any(e["attempt"] == job["attempts"] and e["worker_id"] == job["worker_id"] and not e["raised"]
                     for e in effects):
            fail("lost", job_id, f"job {job_id} ({kind.name}) is SUCCESSFUL at attempt {job['attempts']} by "
                 f"{job['worker_id']}, but that attempt's task never reached its end")
    elif status == "FAILED":
        if job["attempts"] < job["max_attempts"] and not (kind.unique and _superseded(job)):
            fail("lost", job_id, f"job {job_id} ({kind.name}) ended FAILED after {job['attempts']} of "
                 f"{job['max_attempts']} attempts")
        elif unexpected:
            fail("lost", job_id, f"job {job_id} ({kind.name}) ended FAILED with unexpected errors {unexpected}")
    elif status == "CANCELLED":
        if _cancelled_by_parent(job):
            return  # a parent did not succeed: the chain's check holds it
        if not kind.cancels and not (kind.unique and SAME_KEY_QUEUED in _cancel_reason(job)):
            fail("lost", job_id, f"job {job_id} ({kind.name}) ended CANCELLED, which nobody asked for "
                 f"({_cancel_reason(job) or 'no reason'})")
        elif unexpected:
            fail("lost", job_id, f"job {job_id} ({kind.name}) ended CANCELLED with unexpected errors {unexpected}")
    else:
        fail("lost", job_id, f"job {job_id} ({kind.name}) ended {status}")


# What the queue writes when a unique job meets a READY job of its key on its way back.
SAME_KEY_QUEUED = "same unique key"


def _superseded(job: dict) -> bool:
    """A retry that a READY job of the same unique key stands for: FAILED early, saying so."""
    return bool(job["errors"]) and SAME_KEY_QUEUED in job["errors"][-1]["message"]


def _cancelled_by_parent(job: dict) -> bool:
    return job["status"] == "CANCELLED" and any(e["exception_class_path"] == PARENT_ENDED for e in job["errors"])


def _cancel_reason(job: dict) -> str:
    return ((job.get("meta") or {}).get("cancelled") or {}).get("reason", "")


def _check_cancels(ev: Evidence, enqueued: dict[str, int], fail) -> None:
    """Each cancel against the job's end: READY ones end CANCELLED, RUNNING ones CANCELLED or,
    when the attempt was ending just then, SUCCESSFUL; a cancelled job never runs again."""
    allowed = {"cancelled": {"CANCELLED"}, "requested": {"CANCELLED", "SUCCESSFUL"},
               "finished": {"SUCCESSFUL", "FAILED"}}
    for token, cancel in ev.cancels.items():
        job_id = enqueued.get(token)
        if job_id is None:
            continue  # its call is lost or not committed: said elsewhere
        job, said = ev.jobs[job_id], cancel.get("said")
        if said is None:
            continue  # raised or cut off: done or not, either end is right
        if job["status"] not in allowed.get(said, ()):
            fail("lost", job_id, f"job {job_id}: cancel said {said!r}, but the job ended {job['status']}")
        at = cancel["at"]
        late = [e for e in ev.effects.get(job_id, []) if said == "cancelled" and e["started_at"].timestamp() > at]
        if late:
            fail("duplicated", job_id, f"job {job_id} was cancelled READY but attempt {late[0]['attempt']} "
                 f"ran after that on {late[0]['worker_id']}")


def _check_effects(job_id: int, job: dict, effects: list[dict], handed_back: set, fail) -> None:
    seen = Counter((e["attempt"], e["worker_id"]) for e in effects)
    for (attempt, worker), n in seen.items():
        if n > 1:
            fail("duplicated", job_id, f"job {job_id} attempt {attempt} ran {n} times on worker {worker}")
    failed_attempts = {(e["attempt"], e["worker_id"]) for e in job["errors"]}
    for effect in effects:
        key = (effect["attempt"], effect["worker_id"])
        counted_success = (job["status"] == "SUCCESSFUL" and key == (job["attempts"], job["worker_id"])
                           and not effect["raised"])
        if counted_success or key in failed_attempts or (job_id, *key) in handed_back:
            continue
        fail("duplicated", job_id, f"job {job_id} ran at attempt {effect['attempt']} on {effect['worker_id']}, "
             f"an attempt that neither counted nor was taken back or handed back (job {job['status']} at "
             f"attempt {job['attempts']} by {job['worker_id']}, errors at attempts "
             f"{[e['attempt'] for e in job['errors']]})")


def _check_attempts(job_id: int, job: dict, fail) -> None:
    status, attempts, errors = job["status"], job["attempts"], job["errors"]
    if status not in ("SUCCESSFUL", "FAILED", "CANCELLED"):
        return
    succeeded = status == "SUCCESSFUL"
    problems = []
    if attempts > job["max_attempts"]:
        problems.append(f"{attempts} attempts, past max_attempts {job['max_attempts']}")
    if [e["attempt"] for e in errors] != list(range(1, attempts + (0 if succeeded else 1))):
        problems.append(f"{attempts} attempts ({status}) but errors for attempts {[e['attempt'] for e in errors]}")
    holders = [e["worker_id"] for e in errors] + ([job["worker_id"]] if succeeded else [])
    if job["worker_ids"] != holders:
        problems.append(f"worker_ids {job['worker_ids']} disagree with the attempts' workers {holders}")
    if problems:
        fail("wrong attempts", job_id, f"job {job_id}: " + "; ".join(problems))


def _check_limits(ev: Evidence, enqueued: dict[str, int], handed_back: set, fail) -> dict[str, int]:
    """Concurrency limits and unique keys, from the harness's samples and the tasks' effects;
    returns the most attempts of each concurrency key the effects show running at once."""
    for key, (n, limit) in sorted(ev.limit_peaks.items()):
        if n > limit:
            fail("wrong attempts", key, f"{n} jobs of concurrency key {key} were RUNNING at once (limit {limit})")
    for key, n in sorted(ev.unique_doubled.items()):
        fail("duplicated", key, f"{n} jobs of unique key {key} were READY at once")
    for key, n in sorted(ev.keys_left_running.items()):
        fail("stuck", key, f"concurrency key {key} counts {n} RUNNING after the drain: its jobs would wait for ever")
    # Each attempt that held a place, as the task saw it: (key, start, end). An attempt taken back
    # or handed back gave its place away while its thread may still run: it is left out.
    spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    limits: dict[str, int] = {}
    for job_id in set(enqueued.values()):
        job = ev.jobs[job_id]
        if not job["limit_key"]:
            continue
        gave_back = {(e["attempt"], e["worker_id"]) for e in job["errors"] if e["exception_class_path"] == LOST}
        ended = {}
        for effect in ev.effects.get(job_id, []):
            attempt = (effect["attempt"], effect["worker_id"])
            ended[attempt] = True
            if attempt in gave_back or (job_id, *attempt) in handed_back:
                continue
            spans[job["limit_key"]].append((effect["started_at"].timestamp(), effect["ended_at"].timestamp(), job_id))
        # An attempt that began and never reached its end, its process ended (by its parent, past
        # its timeout): it held its place until its failure was recorded, and no later.
        timed_out = {(e["attempt"], e["worker_id"]): e["at"] for e in job["errors"]
                     if e["exception_class_path"] != LOST}
        for row in ev.begun.get(job_id, []):
            attempt = (row["attempt"], row["worker_id"])
            if attempt in ended or attempt not in timed_out or (job_id, *attempt) in handed_back:
                continue
            spans[job["limit_key"]].append((row["started_at"].timestamp(),
                                            datetime.fromisoformat(timed_out[attempt]).timestamp(), job_id))
        limits[job["limit_key"]] = BY_TASK_PATH[job["task_path"]].task.concurrency_limit
    most: dict[str, int] = {}
    for key, attempts in spans.items():
        edges = sorted([(start, 1, job) for start, _, job in attempts] + [(end, -1, job) for _, end, job in attempts],
                       key=lambda edge: (edge[0], edge[1]))  # an end before a start at the same instant
        now, at_once = 0, set()
        for moment, step, job in edges:
            now += step
            if step > 0:
                at_once.add(job)
            else:
                at_once.discard(job)
            most[key] = max(most.get(key, 0), now)
            if now > limits[key]:
                fail("wrong attempts", f"{key} at {moment:.3f}", f"{now} attempts of concurrency key {key} ran at "
                     f"once (limit {limits[key]}): jobs {sorted(at_once)}")
    return most


def _check_hard(ev: Evidence, enqueued: dict[str, int], handed_back: set, fail) -> None:
    """The hard kinds' first attempts: one that overran its timeout (``gil_timeout``, ``blocked``)
    must end as a JobTimeout of that attempt and worker, with no effect of it: its process was
    ended (its parent's log says so), or, when the task was still in Python code at its deadline
    (its first query slowed by a fault), the interrupt stopped it. Unless a fault took that
    attempt first (taken back, handed back on SIGTERM, its query cut off). ``gil`` has no
    timeout: never one."""
    ended_for = {job_attempt for log in ev.logs for job_attempt in log.ended.values()}
    for job_id in set(enqueued.values()):
        job = ev.jobs[job_id]
        kind = BY_TASK_PATH.get(job["task_path"])
        if kind is None or kind.name not in ("gil", "gil_timeout", "blocked"):
            continue
        errors = [e for e in job["errors"] if e["attempt"] == 1]
        if kind.name == "gil":
            if any(e["exception_class_path"] == TIMEOUT for e in job["errors"]):
                fail("wrong attempts", job_id, f"job {job_id} (gil) has no timeout but an attempt timed out")
            if any(ended_job == job_id for ended_job, _ in ended_for):
                fail("wrong attempts", job_id, f"job {job_id} (gil) has no timeout but a parent ended its process "
                     "for it")
            continue
        if not errors or errors[0]["exception_class_path"] in FAULT_ERRORS or (job_id, 1, errors[0]["worker_id"]) in \
                handed_back:
            continue  # a fault took attempt 1 (or it never ran): said elsewhere if wrong
        worker = errors[0]["worker_id"]
        problems = []
        if errors[0]["exception_class_path"] != TIMEOUT:
            problems.append(f"it failed with {errors[0]['exception_class_path']}, not a timeout")
        if any(e["attempt"] == 1 and e["worker_id"] == worker for e in ev.effects.get(job_id, [])):
            problems.append("its task reached its end (the process was not ended in time)")
        if problems:
            fail("wrong attempts", job_id, f"job {job_id} ({kind.name}) attempt 1 on {worker} overran its timeout "
                 f"in C: " + "; ".join(problems))


def _check_take_backs(ev: Evidence, fail) -> Counter:
    """Every logged take-back is recorded as a lost worker; none took a live worker's job."""
    label_of = {w: log.label for log in ev.logs for w in log.worker_ids}
    # A --processes parent that ended a child for a job that would not stop logs that job's end as a
    # take-back too, recorded as what ended it (a timeout): (job, attempt, child's id) -> that error.
    # Unless a fault on the parent's host (or the database's) kept the parent from recording it before
    # another worker took the attempt back as lost (frozen inside its take-back, say).
    stopped = {(job, attempt, log.children.get(pid)) for log in ev.logs for pid, (job, attempt) in log.ended.items()}
    pid_of = {w: log.pid for log in ev.logs for w in log.worker_ids}  # a child's: its parent's

    def recorded(error, attempt, lost, wanted) -> bool:
        if error["attempt"] != attempt or error["worker_id"] != lost:
            return False
        if error["exception_class_path"] in wanted:
            return True
        return LOST not in wanted and error["exception_class_path"] == LOST and _cause(
            pid_of.get(lost), datetime.fromisoformat(error["at"]).timestamp(), ev) is not None

    for log in ev.logs:
        for job_id, attempt, lost in log.taken_back:
            errors = ev.jobs.get(job_id, {}).get("errors", [])
            wanted = (TIMEOUT, CANCELLED) if (job_id, attempt, lost) in stopped else (LOST,)
            if not any(recorded(e, attempt, lost, wanted) for e in errors):
                fail("wrong attempts", job_id, f"job {job_id}: {log.label} took attempt {attempt} back from "
                     f"{label_of.get(lost, '?')} ({lost}), but no {' or '.join(wanted)} error of that attempt is "
                     "recorded")
    # A child its parent ended: the attempts taken back from it then (not before) are explained.
    ended = {log.children.get(pid): log.ended_at.get(pid, 0.0) for log in ev.logs for pid in log.ended}
    for log in ev.logs:
        killed = {f["child_pid"] for f in ev.faults if f["kind"] == "kill-child" and f["pid"] == log.pid}
        for pid, how in log.died:
            if pid not in killed:
                fail("stuck", f"{log.label} child {pid}", f"worker {log.label}: its child process {pid} "
                     f"({log.children.get(pid)}) died by itself ({how})")
    causes = Counter()
    for job_id, job in ev.jobs.items():
        for error in job["errors"]:
            if error["exception_class_path"] != LOST:
                continue
            at = datetime.fromisoformat(error["at"]).timestamp()
            cause = ("ended by its parent" if error["worker_id"] in ended and at >= ended[error["worker_id"]] - 1.0
                     else _cause(pid_of.get(error["worker_id"]), at, ev, child=_pid(error["worker_id"])))
            causes[cause or "none"] += 1
            if cause is None:
                fail("wrong attempts", job_id, f"job {job_id}: attempt {error['attempt']} was taken back from "
                     f"{label_of.get(error['worker_id'], '?')} ({error['worker_id']}) at {error['at']}, a worker "
                     "that was alive and reachable then (no fault on it, no database restart)")
    return causes


def _pid(worker_id: str) -> int | None:
    """The PID in a worker id (``host:pid:tag``)."""
    try:
        return int(worker_id.split(":")[1])
    except (IndexError, ValueError):
        return None


def _cause(pid: int | None, at: float, ev: Evidence, *, child: int | None = None) -> str | None:
    """The fault that explains a take-back at ``at`` from the worker with ``pid`` (the parent's,
    for a --processes child, whose own is ``child``), if any."""
    for fault in ev.faults:
        if fault["kind"] == "kill-child" and fault["child_pid"] == child and fault["start"] <= at:
            return "kill-child"
        if fault["pid"] != pid or fault["start"] > at or fault["kind"] in ("start", "kill-child"):
            continue  # a worker's start explains nothing; a child's kill only that child's jobs
        if fault["kind"] in ("kill", "term", "crash"):
            return fault["kind"]
        grace = AFTER_PARTITION if fault["kind"] == "partition" else AFTER_STOP
        if fault["end"] is None or at <= fault["end"] + grace:
            return fault["kind"]
    for restart in ev.restarts:
        if restart["began"] <= at <= restart["up"] + AFTER_RESTART:
            return "database restart"
    return None


def _ended_at(job: dict, effects: list[dict]) -> float:
    """When the job's end was counted, as late as the evidence shows it: its finish, and the end
    of the attempt that counted, when its task reached its end before the outcome was written (a
    success, or a planned failure; a take-back's or a timeout's thread may run on after it)."""
    moments = [job["finished_at"].timestamp()] if job.get("finished_at") else []
    if job["status"] == "SUCCESSFUL":
        counted = (job["attempts"], job["worker_id"])
    elif job["status"] == "FAILED" and job["errors"] and job["errors"][-1]["exception_class_path"] == PLANNED:
        counted = (job["errors"][-1]["attempt"], job["errors"][-1]["worker_id"])
    else:
        counted = None
    moments += [e["ended_at"].timestamp() for e in effects if (e["attempt"], e["worker_id"]) == counted]
    return max(moments, default=float("-inf"))


def _first_start(effects: list[dict]) -> dict | None:
    return min(effects, key=lambda e: e["started_at"], default=None)


def _spread(values: list[float]) -> dict:
    values = sorted(values)
    return {"n": len(values), "median": round(values[len(values) // 2], 3), "max": round(values[-1], 3)} \
        if values else {"n": 0}


def _check_batches(ev: Evidence, enqueued: dict[str, int], fail) -> dict:
    """Each batch the producer made against its members and its callbacks' jobs and effects."""
    members_of: dict[str, list[int]] = defaultdict(list)
    callbacks_of: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for job_id, job in ev.jobs.items():
        if job.get("batch_id"):
            members_of[job["batch_id"]].append(job_id)
        if kind := CALLBACK_BY_TASK_PATH.get(job["task_path"]):
            callbacks_of[str(job["kwargs"].get("batch_id"))].append((kind.name, job_id))
    made: dict[str, int] = {}
    for number, call in sorted(ev.calls.items()):
        ids = [enqueued[token] for token, _, _ in call["jobs"] if token in enqueued]
        if call["mode"] != "batch" or not ids:
            continue  # a call not committed (or lost: said elsewhere)
        in_batches = sorted({str(ev.jobs[job_id].get("batch_id")) for job_id in ids})
        if len(in_batches) != 1 or in_batches[0] == "None" or in_batches[0] in made:
            fail("wrong callbacks", f"call {number}", f"the members of batch call {number} are in batches "
                 f"{in_batches}, not in one batch of their own")
            continue
        batch_id = in_batches[0]
        made[batch_id] = number
        if call.get("batch_id", batch_id) != batch_id:
            fail("wrong callbacks", f"batch {batch_id}", f"call {number} made batch {call['batch_id']}, but its "
                 f"members are in batch {batch_id}")
        if sorted(members_of[batch_id]) != sorted(ids):
            fail("wrong callbacks", f"batch {batch_id}", f"batch {batch_id} (call {number}) holds jobs "
                 f"{sorted(members_of[batch_id])}, but the call enqueued {sorted(ids)}")
    for batch_id in sorted(set(members_of) | set(callbacks_of) | set(ev.batches)):
        if batch_id not in made:
            fail("wrong callbacks", f"batch {batch_id}", f"batch {batch_id} (members {sorted(members_of[batch_id])[:10]}, "
                 f"callbacks {callbacks_of[batch_id]}) is no batch the producer made")
    outcomes, delays = Counter(), []
    for batch_id, number in made.items():
        row, members = ev.batches.get(batch_id), [ev.jobs[job_id] for job_id in members_of[batch_id]]
        name = f"batch {batch_id}"
        if row is None:
            fail("lost", name, f"batch {batch_id} (call {number}) has members but no row")
            continue
        ends = Counter(m["status"] for m in members)
        counts = {"total": len(members), "successful": ends["SUCCESSFUL"], "failed": ends["FAILED"],
                  "cancelled": ends["CANCELLED"]}
        stored = {field: row[field] for field in counts}
        if row["finished_at"] is None:
            if all(m["status"] in ENDED for m in members):
                fail("wrong callbacks", name, f"every member of batch {batch_id} (call {number}) has ended {dict(ends)}, "
                     f"but the batch has not finished (counted {stored}): its callbacks are lost")
            else:
                outcomes["unfinished"] += 1  # its members are stuck: said per job
            continue
        if stored != counts:
            fail("wrong callbacks", name, f"batch {batch_id} (call {number}) counted {stored}, but its members ended "
                 f"{counts}")
        succeeded = ends["SUCCESSFUL"] == len(members)
        outcomes["successful" if succeeded else "failed"] += 1
        wanted = {"on_success" if succeeded else "on_failure", "on_finish"}
        fired = Counter(kind for kind, _ in callbacks_of[batch_id])
        for kind in ("on_success", "on_failure", "on_finish"):
            jobs = [job_id for k, job_id in callbacks_of[batch_id] if k == kind]
            if fired[kind] > 1:
                fail("wrong callbacks", f"{name} {kind}", f"batch {batch_id}: {kind} fired {fired[kind]} times "
                     f"(jobs {jobs})")
            elif fired[kind] and kind not in wanted:
                fail("wrong callbacks", f"{name} {kind}", f"batch {batch_id}: {kind} fired (job {jobs[0]}), but its "
                     f"members ended {dict(ends)}")
            elif not fired[kind] and kind in wanted:
                fail("wrong callbacks", f"{name} {kind}", f"batch {batch_id}: {kind} never fired (members ended "
                     f"{dict(ends)}, the batch finished at {row['finished_at']})")
        listed = sorted(c.get("job") or 0 for c in row["callbacks"] or [])
        if listed != sorted(job_id for _, job_id in callbacks_of[batch_id]):
            fail("wrong callbacks", f"{name} list", f"batch {batch_id} lists callback jobs {listed}, but the jobs of "
                 f"its callbacks are {sorted(callbacks_of[batch_id])}")
        last = max((_ended_at(m, ev.effects.get(job_id, [])), job_id)
                   for job_id, m in zip(members_of[batch_id], members))
        for kind, job_id in callbacks_of[batch_id]:
            first = _first_start(ev.effects.get(job_id, []))
            if first is None:
                continue  # never reached its end: said by its own final state
            start = first["started_at"].timestamp()
            if start <= last[0]:
                fail("wrong callbacks", f"{name} {kind} early", f"batch {batch_id}: {kind} (job {job_id}) started "
                     f"at {first['started_at'].isoformat()}, {last[0] - start:.3f}s before its member {last[1]} "
                     "ended")
            else:
                delays.append(start - last[0])
    return {"made": len(made), "by_outcome": dict(outcomes), "members": sum(len(members_of[b]) for b in made),
            "callbacks_fired": dict(Counter(k for b in made for k, _ in callbacks_of[b])),
            "callback_start_after_last_member_s": _spread(delays)}


def _check_chains(ev: Evidence, enqueued: dict[str, int], fail) -> dict:
    """Each child against the parents the producer gave it and how they ended."""
    chains = 0
    for number, call in sorted(ev.calls.items()):
        if call["mode"] != "chain" or not any(token in enqueued for token, _, _ in call["jobs"]):
            continue
        chains += 1
        for token, parent_tokens in call.get("parents", {}).items():
            child = enqueued.get(token)
            expected = [enqueued.get(t) for t in parent_tokens]
            if child is not None and ev.parents.get(child) != expected:
                fail("wrong callbacks", child, f"job {child} ({token}, call {number}) waits for "
                     f"{ev.parents.get(child)}, but was enqueued after {expected}")
    outcomes, delays = Counter(), []
    for child, parents in sorted(ev.parents.items()):
        job, effects = ev.jobs[child], ev.effects.get(child, [])
        ends = {parent: ev.jobs[parent]["status"] for parent in parents if parent in ev.jobs}
        first = _first_start(effects)
        broken = [parent for parent, status in ends.items() if status in ("FAILED", "CANCELLED")]
        if len(parents) > 1:
            outcomes["fan-in"] += 1
        if first is not None and any(status != "SUCCESSFUL" for status in ends.values()):
            fail("wrong callbacks", child, f"job {child} ran (attempt {first['attempt']} on {first['worker_id']} at "
                 f"{first['started_at'].isoformat()}) though its parents ended {ends}")
        if broken:
            outcomes["after a failed or cancelled parent"] += 1
            if job["status"] != "CANCELLED" or job["attempts"] or job["worker_ids"] or not _cancelled_by_parent(job):
                fail("wrong callbacks", child, f"job {child}'s parents ended {ends}, but it ended {job['status']} "
                     f"after {job['attempts']} attempts (errors {[e['exception_class_path'] for e in job['errors']]})")
            elif not any(f"#{parent} (" in e["message"] for e in job["errors"] for parent in broken):
                fail("wrong callbacks", child, f"job {child} ended CANCELLED, but its error "
                     f"{job['errors'][-1]['message']!r} names none of its parents that ended {broken}")
            continue
        if len(ends) < len(parents) or any(status != "SUCCESSFUL" for status in ends.values()):
            continue  # a parent lost or not ended: said per job
        outcomes["released"] += 1
        if _cancelled_by_parent(job):
            fail("wrong callbacks", child, f"job {child} ended CANCELLED as if a parent had not succeeded, but its "
                 f"parents ended {ends}")
        if first is None:
            continue  # never reached its end: said by its own final state
        start = first["started_at"].timestamp()
        for parent in parents:
            ended = _ended_at(ev.jobs[parent], ev.effects.get(parent, []))
            if start <= ended:
                fail("wrong callbacks", child, f"job {child} started (attempt {first['attempt']} on "
                     f"{first['worker_id']}) {ended - start:.3f}s before its parent {parent} ended SUCCESSFUL")
                break
        else:
            delays.append(start - max(_ended_at(ev.jobs[p], ev.effects.get(p, [])) for p in parents))
    return {"made": chains, "children": len(ev.parents), **dict(outcomes),
            "child_start_after_last_parent_s": _spread(delays)}
