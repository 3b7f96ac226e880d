"""A few hundred READY rows with random damage among good jobs, drained by real workers.

What any writer of the table could leave there (bad JSON shapes, numbers past
Python's limits, NULLs, wrong types, hostile and unknown task paths, times that are
not times) must end FAILED with an error, each job alone: every good job ends
SUCCESSFUL, every worker exits 0, nothing is left RUNNING or due. The seed is in
the test's name; ``JOBS_FUZZ_SEED`` runs another one.
"""

from __future__ import annotations

import os
import random
import signal

import pytest
from django.db import connection
from django.utils import timezone

from jobs.models import Job, JobStatus
from tests import tasks
from tests.conftest import wait_for
from tests.test_hardening import HOSTILE_PATHS, HUGE_INT, damage

SEED = int(os.environ.get("JOBS_FUZZ_SEED", "20261202"))
GOOD, BAD = 150, 150

# Damage that any database takes: (column, raw value). JSON values are JSON text.
JSON_DAMAGE = [
    ("args", '"a string"'), ("args", '{"a": 1}'), ("args", "5"), ("args", "null"), ("args", f"[{HUGE_INT}]"),
    ("kwargs", "[]"), ("kwargs", '"x"'), ("kwargs", f'{{"a": {HUGE_INT}}}'), ("kwargs", '{"no_such_argument": 1}'),
    ("errors", "5"), ("errors", '{"x": 1}'), ("errors", f"[{HUGE_INT}]"),
    ("worker_ids", '"w"'), ("worker_ids", "{}"),
    ("priority", 500), ("priority", -101), ("queue_name", "not-a-configured-queue"),
]
POSTGRES_DAMAGE = [
    ("args", "[" * 1200 + "]" * 1200),  # jsonb stores it; Python's decoder runs out of stack
    ("run_after", "-infinity"), ("enqueued_at", "20000-01-01"), ("started_at", "infinity"),
]
# SQLite keeps whatever type it is given, and times as text.
SQLITE_DAMAGE = [
    ("priority", "high"), ("priority", 1e300), ("max_attempts", "three"), ("attempts", "many"),
    ("run_after", "0"), ("run_after", "2000-13-45 00:00:00"), ("enqueued_at", "yesterday"),
]
# MySQL and MariaDB refuse wrong types and invalid JSON, but a datetime column takes the zero date
# (no NO_ZERO_DATE in the default sql_mode), which Python's datetime cannot hold.
MYSQL_DAMAGE = [("run_after", "0000-00-00 00:00:00"), ("enqueued_at", "0000-00-00 00:00:00"),
                ("started_at", "0000-00-00 00:00:00")]
# Damage to what a run neither reads nor needs: such a job still runs, and ends SUCCESSFUL.
HARMLESS = [("meta", "[]"), ("meta", "7"), ("meta", f"[{HUGE_INT}]")]
HARMLESS_SQLITE = [("finished_at", "soon")]
HARMLESS_POSTGRES = [("finished_at", "infinity")]
HARMLESS_MYSQL = [("finished_at", "0000-00-00 00:00:00")]
DAMAGE = {"postgresql": POSTGRES_DAMAGE, "mysql": MYSQL_DAMAGE}
HARMLESS_BY_VENDOR = {"postgresql": HARMLESS_POSTGRES, "mysql": HARMLESS_MYSQL}


def damaged_row(rng: random.Random, index: int, kinds_of: dict) -> int:
    now = timezone.now()
    path = rng.choice(HOSTILE_PATHS) if rng.random() < 0.25 else "tests.tasks.add"
    if connection.vendor != "sqlite" and ("\x00" in path or len(path) > 255):  # refused, not stored, there
        path = "os.system"
    job = Job.objects.create(task_path=path, args=[index, index], run_after=now, enqueued_at=now,
                             priority=rng.randint(-5, 5))
    catalogue = JSON_DAMAGE + DAMAGE.get(connection.vendor, SQLITE_DAMAGE)
    kinds = rng.sample(catalogue, rng.choice([0, 1, 1, 2])) if path != "tests.tasks.add" else \
        rng.sample(catalogue, rng.choice([1, 1, 2]))
    for column, value in kinds:
        damage(job.pk, **{column: value})
    kinds_of[job.pk] = (path[:40], [(column, str(value)[:40]) for column, value in kinds])
    return job.pk


@pytest.mark.parametrize("seed", [SEED])
def test_random_damage_fails_each_damaged_job_alone(workers, seed):
    rng = random.Random(seed)
    bad_ids, good_ids, kinds_of = [], [], {}
    for index in range(GOOD + BAD):
        if rng.random() < BAD / (GOOD + BAD):
            bad_ids.append(damaged_row(rng, index, kinds_of))
        else:
            good = int(tasks.add.using(priority=rng.randint(-5, 5)).enqueue(index, index).id)
            if rng.random() < 0.2:
                column, value = rng.choice(HARMLESS + HARMLESS_BY_VENDOR.get(connection.vendor, HARMLESS_SQLITE))
                damage(good, **{column: value})
            good_ids.append(good)
    # Not --burst: a job whose call fails is retried (after 0.05 s here), which a burst leaves for later.
    procs = [workers.start("--concurrency", "2"), workers.start()]
    finished = [JobStatus.SUCCESSFUL, JobStatus.FAILED]
    wait_for(lambda: not Job.objects.exclude(status__in=finished).exists() or any(p.poll() is not None for p in procs),
             timeout=120, message=f"seed {seed}: every job to finish")
    for proc in procs:
        assert proc.poll() is None, f"seed {seed}: a worker died: " + workers.output(proc)[-3000:]
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(30) == 0, f"seed {seed}: " + workers.output(proc)[-3000:]
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert {statuses[pk] for pk in good_ids} == {JobStatus.SUCCESSFUL}, f"seed {seed}"
    not_failed = [pk for pk in bad_ids if statuses[pk] != JobStatus.FAILED]
    assert not not_failed, f"seed {seed}: damaged jobs not FAILED: {[(pk, kinds_of[pk]) for pk in not_failed]}"
    errors = dict(Job.objects.filter(pk__in=bad_ids).values_list("pk", "errors"))
    assert all(isinstance(errors[pk], list) and errors[pk] and errors[pk][-1]["message"] for pk in bad_ids)
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()
    assert not Job.objects.filter(status=JobStatus.READY).exists()
