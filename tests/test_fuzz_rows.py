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

from jobs.models import Job, JobLimit, JobStatus
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
# Job-control columns of a job with a limit key (issue 18): each such job fails alone.
CONTROL_DAMAGE = [("concurrency_limit", 0), ("concurrency_limit", 100_000), ("rate_limit", "lots"),
                  ("rate_limit", "0/s")]
CONTROL_DAMAGE_SQLITE = [("concurrency_limit", "x"), ("concurrency_limit", 1.5), ("concurrency_limit", b"\x01"),
                         ("rate_limit", b"5/s"), ("rate_limit", "5/s" + " " * 40),
                         ("limit_key", b"fz0")]
# jobs_joblimit rows, as SQL: the keys' good jobs still run, and every count ends at 0.
LIMIT_ROW_DAMAGE = [{"running": "-3"}, {"running": "2147483647"}, {"starts": "'[9e15, 9e15, 9e15]'"}]
LIMIT_ROW_DAMAGE_SQLITE = [{"running": "'x'"}, {"running": "0.5"}, {"starts": "'" + "[" * 5000 + "]" * 5000 + "'"},
                           {"starts": "x'00'"}]
LIMIT_ROW_DAMAGE_POSTGRES = [{"starts": "'" + "[" * 5000 + "]" * 5000 + "'::jsonb"}, {"starts": "'\"x\"'::jsonb"}]
# MySQL/MariaDB check JSON and types; a valid but deeply nested start log still gets in.
LIMIT_ROW_DAMAGE_MYSQL = [{"starts": "'" + "[" * 30 + "]" * 30 + "'"}, {"starts": "'\"x\"'"}]
KEYS = [f"fz{i}" for i in range(4)]

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


def damaged_control(rng: random.Random, index: int, kinds_of: dict, path: str) -> int:
    """A job of a limit key with damaged job-control columns."""
    pk = int(tasks.limited.using(priority=rng.randint(-5, 5)).enqueue(rng.choice(KEYS), path, f"bad:{index}", 0).id)
    catalogue = CONTROL_DAMAGE + (CONTROL_DAMAGE_SQLITE if connection.vendor == "sqlite" else [])
    column, value = rng.choice(catalogue)
    damage(pk, **{column: value})
    kinds_of[pk] = ("tests.tasks.limited", [(column, str(value)[:40])])
    return pk


def damage_limit_rows(rng: random.Random) -> dict:
    """Damage each fuzz key's jobs_joblimit row (past the ORM, checks off on SQLite, as any writer could)."""
    catalogue = LIMIT_ROW_DAMAGE + {"sqlite": LIMIT_ROW_DAMAGE_SQLITE, "postgresql": LIMIT_ROW_DAMAGE_POSTGRES}.get(
        connection.vendor, LIMIT_ROW_DAMAGE_MYSQL)
    done = {}
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA ignore_check_constraints = ON")
        for key in KEYS:
            columns = rng.choice(catalogue)
            cursor.execute(f"UPDATE jobs_joblimit SET {', '.join(f'{c} = {v}' for c, v in columns.items())} "
                           f"WHERE {connection.ops.quote_name('key')} = %s", [key])
            done[key] = {column: value[:40] for column, value in columns.items()}
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA ignore_check_constraints = OFF")
    return done


@pytest.mark.parametrize("seed", [SEED])
def test_random_damage_fails_each_damaged_job_alone(workers, seed, tmp_path):
    rng = random.Random(seed)
    bad_ids, good_ids, kinds_of = [], [], {}
    spans = str(tmp_path / "spans")
    for index in range(GOOD + BAD):
        if rng.random() < BAD / (GOOD + BAD):
            if rng.random() < 0.2:
                bad_ids.append(damaged_control(rng, index, kinds_of, spans))
            else:
                bad_ids.append(damaged_row(rng, index, kinds_of))
        elif rng.random() < 0.25:  # a good job of a limit key, whose jobs_joblimit row is damaged below
            good_ids.append(int(tasks.limited.using(priority=rng.randint(-5, 5)).enqueue(
                rng.choice(KEYS), spans, f"good:{index}", 0).id))
        else:
            good = int(tasks.add.using(priority=rng.randint(-5, 5)).enqueue(index, index).id)
            if rng.random() < 0.2:
                column, value = rng.choice(HARMLESS + HARMLESS_BY_VENDOR.get(connection.vendor, HARMLESS_SQLITE))
                damage(good, **{column: value})
            good_ids.append(good)
    limit_rows = damage_limit_rows(rng)
    # Not --burst: a job whose call fails is retried (after 0.05 s here), which a burst leaves for later.
    procs = [workers.start("--concurrency", "2"), workers.start()]
    finished = [JobStatus.SUCCESSFUL, JobStatus.FAILED]
    wait_for(lambda: not Job.objects.exclude(status__in=finished).exists() or any(p.poll() is not None for p in procs),
             timeout=120, message=f"seed {seed}: every job to finish")
    # A count too high for any job to explain is mended by the stale sweep (every stale_after / 3 s).
    wait_for(lambda: set(JobLimit.objects.values_list("running", flat=True)) <= {0}
             or any(p.poll() is not None for p in procs), timeout=30, message=f"seed {seed}: every key's count at 0")
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
    counts = dict(JobLimit.objects.values_list("key", "running"))
    assert set(counts.values()) == {0}, f"seed {seed}: {counts}, damaged as {limit_rows}"
