"""Parity with the real django-background-tasks, and the move of a project written for it.

The package (1.2.8, the last release) runs in a virtualenv of its own with the
newest Django its metadata names (5.0), created by these tests on first use and
cached in ``.venvs/`` (git-ignored) under a key of the interpreter and the pins.
The small project in ``tests/bgtasks_fixture`` runs there as it is; then its app
runs here with one line changed (the import) and ``INSTALLED_APPS``
(``tests/bgtasks_settings.py``), under ``process_tasks --duration 0 --sleep 5``,
and both must run the same functions, in the same order, with the same arguments.
The tasks it leaves pending in its SQLite file are imported and run here once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.utils.dateparse import parse_datetime

from jobs.models import Job, JobStatus
from tests.conftest import REPO, subprocess_env, wait_for

FIXTURE = REPO / "tests" / "bgtasks_fixture"
REQUIREMENTS = ["django-background-tasks==1.2.8", "Django>=5.0,<5.1"]
OLD_IMPORT = "from background_task import background"
NEW_IMPORT = "from jobs.compat import background"


# -- the real package's virtualenv --------------------------------------------------------------


def venv_dir() -> Path:
    key = hashlib.sha256(json.dumps([REQUIREMENTS, sys.version_info[:2], sys.platform]).encode()).hexdigest()[:12]
    return REPO / ".venvs" / f"bgtasks-py{sys.version_info[0]}{sys.version_info[1]}-{key}"


@pytest.fixture(scope="session")
def bgtasks_python() -> Path:
    """The real package's interpreter; the virtualenv is made once (under a lock) and reused."""
    path = venv_dir()
    python = path / "bin" / "python"
    done = path / ".complete"
    path.parent.mkdir(exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be making it right now
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a half-made one
            steps = [[sys.executable, "-m", "venv", str(path)],
                     [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS]]
            for step in steps:
                proc = subprocess.run(step, check=False, capture_output=True, text=True, timeout=600)
                if proc.returncode:
                    raise RuntimeError(f"making the django-background-tasks virtualenv failed: {' '.join(step)}\n"
                                       f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            done.write_text("\n".join(REQUIREMENTS) + "\n")
    return python


# -- running the project, there and here ----------------------------------------------------------


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def has_record(path: Path, task: str, *args) -> bool:
    return any(r["task"] == task and r["args"] == list(args) for r in records(path))


class RealProject:
    """tests/bgtasks_fixture run with django-background-tasks, on its own SQLite file."""

    def __init__(self, python: Path, folder: Path, **extra_env: str):
        self.python = python
        self.db = folder / "bgtasks.sqlite3"
        self.record = folder / "runs.jsonl"
        self.state = folder / "state"
        self.state.mkdir(parents=True)
        self.env = {key: value for key, value in os.environ.items()
                    if not key.startswith(("DJANGO_", "JOBS_", "PYTHON", "VIRTUAL_ENV", "BGSHOP_"))}
        self.env.update(PYTHONPATH=str(FIXTURE), DJANGO_SETTINGS_MODULE="bgproject.settings",
                        BGSHOP_DB=str(self.db), BGSHOP_RECORD=str(self.record), BGSHOP_STATE=str(self.state),
                        **extra_env)

    def command(self, *args: str) -> list[str]:
        return [str(self.python), str(FIXTURE / "manage.py"), *args]

    def run(self, *args: str) -> str:
        proc = subprocess.run(self.command(*args), check=False, cwd=FIXTURE, env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def pending(self) -> list[dict]:
        with closing(sqlite3.connect(self.db)) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM background_task ORDER BY id")]

    def place_and_run_orders(self) -> None:
        """``place_orders run``, then its own ``process_tasks`` until the last task ran."""
        self.run("migrate", "--verbosity", "0")
        self.run("place_orders", "run")
        with open(self.record.with_suffix(".log"), "w") as log:
            worker = subprocess.Popen(self.command("process_tasks", "--duration", "120", "--sleep", "0.1"),
                                      cwd=FIXTURE, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: has_record(self.record, "all_done", "run"), 60, message="the real worker's last task")
                worker.send_signal(signal.SIGTSTP)  # its graceful stop: finish the task at hand, then exit
                assert worker.wait(30) == 0
            finally:
                if worker.poll() is None:
                    worker.kill()


@pytest.fixture(scope="module")
def real(bgtasks_python, tmp_path_factory) -> RealProject:
    """The project as it runs today: its orders placed and run by django-background-tasks'
    own ``process_tasks`` (stopped once the lowest-priority task ran), then more orders
    placed with no worker running, and one row of a task whose function was removed."""
    project = RealProject(bgtasks_python, tmp_path_factory.mktemp("bgtasks-real"))
    project.place_and_run_orders()
    project.run("place_orders", "pending")
    project.run("shell", "-c", "from background_task.models import Task; "
                "Task.objects.new_task('bgshop.tasks.gift_wrap', [1], {}).save()")
    return project


def moved_app(folder: Path) -> Path:
    """The shop app with its import line changed: the whole code change of the move."""
    root = folder / "moved"
    shutil.copytree(FIXTURE / "bgshop", root / "bgshop", ignore=shutil.ignore_patterns("__pycache__"))
    tasks = root / "bgshop" / "tasks.py"
    source = tasks.read_text()
    assert source.count(OLD_IMPORT) == 1
    tasks.write_text(source.replace(OLD_IMPORT, NEW_IMPORT))
    before, after = (FIXTURE / "bgshop" / "tasks.py").read_text().splitlines(), tasks.read_text().splitlines()
    assert [(a, b) for a, b in zip(before, after, strict=True) if a != b] == [(OLD_IMPORT, NEW_IMPORT)]
    return root


def our_env(app_root: Path, folder: Path, **extra: str) -> dict[str, str]:
    state = folder / "state"
    state.mkdir(exist_ok=True)
    return subprocess_env(
        DJANGO_SETTINGS_MODULE="tests.bgtasks_settings",
        BGTASKS_BASE_SETTINGS=os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings"),
        PYTHONPATH=os.pathsep.join([str(app_root), str(REPO)]), BGSHOP_STATE=str(state), **extra)


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "manage.py"), *args], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc


def count(report: str, label: str) -> int:
    """A number from the import command's report."""
    match = re.search(rf"^  {re.escape(label)}:\s+(\d+)$", report, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{report}"
    return int(match.group(1))


def first_runs(path: Path, until: str) -> list[tuple]:
    """What ran, in order, up to the ``all_done(until)`` task; retries of a failed task left out."""
    seen = []
    for r in records(path):
        if r["task"] == "charge_card":  # the retry of a declined card: due 6 s later there, 0.05 s here
            continue
        seen.append((r["task"], r["args"], r["kwargs"]))
        if r == {"task": "all_done", "args": [until], "kwargs": {}}:
            return seen
    raise AssertionError(f"all_done({until!r}) did not run: {seen}")


# -- the tests ----------------------------------------------------------------------------------


def test_the_real_package_runs_in_its_own_virtualenv(bgtasks_python):
    code = "import background_task, django; print(background_task.__version__, django.__version__)"
    proc = subprocess.run([str(bgtasks_python), "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    package, django_version = proc.stdout.split()
    assert package == "1.2.8" and django_version.startswith("5.0.")


def run_orders_here(workers, tmp_path: Path, **extra_env: str) -> Path:
    """The moved project: ``place_orders run``, then our worker with the unit file's line, unchanged."""
    root = moved_app(tmp_path)
    record = tmp_path / "runs.jsonl"
    env = our_env(root, tmp_path, BGSHOP_RECORD=str(record), **extra_env)
    manage(env, "place_orders", "run")
    worker = workers.start("--duration", "0", "--sleep", "5", env=env)
    wait_for(lambda: has_record(record, "all_done", "run"), 60, message="our worker's last task")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, workers.output(worker)
    return record


def test_a_bgtasks_project_runs_here_after_changing_the_import_line_and_installed_apps(real, workers, tmp_path):
    """Same functions, same order, same arguments as under django-background-tasks itself."""
    record = run_orders_here(workers, tmp_path)
    theirs, ours = first_runs(real.record, "run"), first_runs(record, "run")
    assert ours == theirs
    # The order itself, as django-background-tasks decided it: priority first, then run_at.
    assert [(task, args) for task, args, _ in ours] == [
        ("rebuild_index", ["music"]), ("rebuild_index", ["books"]), ("send_receipt", [3]), ("send_receipt", [4]),
        ("send_receipt", [1]), ("send_receipt", [2]), ("send_reminder", [3]), ("send_newsletter", [7]),
        ("send_receipt", [5]), ("send_receipt", [6]), ("send_newsletter", [8]), ("charge_card_declined", [9, 25]),
        ("tidy_up", []), ("all_done", ["run"]),
    ]
    # Left for later on both sides: the reminders a minute out (schedule=0 set nothing), and there
    # the declined card's retry.
    assert [(r["task_name"], json.loads(r["task_params"])[0]) for r in real.pending()][:3] == [
        ("bgshop.tasks.send_reminder", [1]), ("bgshop.tasks.send_reminder", [2]),
        ("bgshop.tasks.charge_card", [9, 25])]
    waiting = Job.objects.filter(status=JobStatus.READY, task_path="bgshop.tasks.send_reminder").order_by("id")
    assert [job.args for job in waiting] == [[1], [2]]
    job = Job.objects.get(task_path="bgshop.tasks.send_receipt", args=[5])
    assert job.meta["verbose_name"] == "Receipt for order 5"
    assert Job.objects.filter(task_path="bgshop.tasks.send_receipt", args=[6]).count() == 1  # remove_existing_tasks


def test_pending_tasks_of_the_real_package_are_imported_and_run_once(real, workers, tmp_path):
    root = moved_app(tmp_path)
    record = tmp_path / "runs.jsonl"
    env = our_env(root, tmp_path, BGSHOP_RECORD=str(record), BGTASKS_SOURCE_DB=str(real.db))
    env["BGSHOP_STATE"] = str(real.state)  # the card was declined there once already
    pending = real.pending()
    assert len(pending) == 9

    dry = manage(env, "import_background_tasks", "--database", "bgtasks", "--dry-run")
    assert count(dry.stdout, "would import") == 8, dry.stdout
    assert "unregistered task 'bgshop.tasks.gift_wrap': 1 row(s) left out" in dry.stderr
    assert not Job.objects.exists()

    first = manage(env, "import_background_tasks", "--database", "bgtasks", "--batch-size", "3")
    assert count(first.stdout, "imported") == 8, first.stdout
    assert "completed history (background_task_completedtask): 13 succeeded, 0 failed" in first.stdout
    again = manage(env, "import_background_tasks", "--database", "bgtasks")
    assert count(again.stdout, "imported") == 0 and count(again.stdout, "already imported (skipped)") == 8
    assert Job.objects.count() == 8

    by_source = {job.meta["background_task"]["source_id"]: job for job in Job.objects.all()}
    for row in pending:
        if row["task_name"] == "bgshop.tasks.gift_wrap":
            assert row["id"] not in by_source
            continue
        job = by_source[row["id"]]
        args, kwargs = json.loads(row["task_params"])
        assert (job.args, job.kwargs, job.attempts) == (args, kwargs, row["attempts"])
        assert job.run_after == parse_datetime(row["run_at"]).replace(tzinfo=UTC)
        assert job.queue_name == (row["queue"] or "default")
        assert job.priority == max(-100, min(100, row["priority"]))
    card = Job.objects.get(task_path="bgshop.tasks.charge_card")
    assert card.attempts == 1 and "card declined for order 9" in card.errors[0]["message"]
    assert Job.objects.get(meta__background_task__name="shop.rebuild_index").task_path == "bgshop.tasks.rebuild_index"

    worker = workers.start("--sleep", "0.2", env=env)
    due = [("send_receipt", 10), ("send_newsletter", 11), ("rebuild_index", "garden"), ("all_done", "pending"),
           ("charge_card", 9, 25)]
    # The declined card's retry is due when django-background-tasks said: up to 6 s after it failed.
    wait_for(lambda: all(has_record(record, *item) for item in due), 60, message="the imported due tasks")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, workers.output(worker)
    ran = [(r["task"], *r["args"]) for r in records(record)]
    assert sorted(ran, key=repr) == sorted(due, key=repr)  # each exactly once, nothing else
    later = Job.objects.filter(status=JobStatus.READY).order_by("id")
    assert [job.args for job in later] == [[1], [2], [12]]  # the reminders, still a minute out
    assert all(job.run_after > datetime.now(UTC) for job in later)


def test_ascending_priority_ordering_runs_in_the_same_order_as_there(bgtasks_python, workers, tmp_path):
    """``BACKGROUND_TASK_PRIORITY_ORDERING = "ASC"`` (lower numbers first there) kept in settings."""
    real = RealProject(bgtasks_python, tmp_path / "real", BGSHOP_ORDERING="ASC")
    real.place_and_run_orders()
    ours = first_runs(run_orders_here(workers, tmp_path / "ours", BGSHOP_ORDERING="ASC"), "run")
    assert ours == first_runs(real.record, "run")
    assert [task for task, _, _ in ours][:1] == ["tidy_up"]  # priority -5: first, when lower runs first
    assert [(task, args) for task, args, _ in ours][-4:] == [
        ("send_receipt", [3]), ("rebuild_index", ["books"]), ("rebuild_index", ["music"]), ("all_done", ["run"])]
