"""The distribution: build the wheel and the sdist, read what is in them, and install the
wheel into a fresh virtualenv beside a project made by ``django-admin startproject``.

That project knows nothing of this repository (no ``queue_project``, no ``TASKS``): it adds
the apps as README.md and docs/howto/install.md say, and must check, migrate, run a
task, run a schedule and serve the admin. pip reaches PyPI for Django and the rest, through
its usual cache. It runs once per ``make test`` (the SQLite run; marker ``package``), and in
``.ci/run`` once more on Python 3.11, where the wheel brings Django 5.2 and the backport.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from contextlib import closing
from email.parser import Parser
from pathlib import Path

import pytest

import jobs
from tests.conftest import REPO, wait_for

pytestmark = [pytest.mark.package, pytest.mark.sqlite_only]

NAME = "django-dbjobs"
DIST_NAME = NAME.replace("-", "_")
APPS = ("jobs", "scheduler")
# Nothing of the host project, the demo, the suite, the benchmark or the docs ships in the wheel.
NOT_SHIPPED = ("queue_project/", "example/", "tests/", "bench/", "scripts/", "docs/", "manage.py")
STEP_TIMEOUT = 600


def run(*command, cwd: Path, env: dict | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=STEP_TIMEOUT, check=False)
    if ok and proc.returncode:
        raise AssertionError(f"{' '.join(map(str, command))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """``python -m build``: the sdist, then the wheel built from that sdist."""
    outdir = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", outdir, REPO, cwd=REPO)
    [wheel] = outdir.glob("*.whl")
    [sdist] = outdir.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def tracked_files(*folders: str) -> set[str]:
    listed = run("git", "ls-files", "-z", "--", *folders, cwd=REPO).stdout
    return {path for path in listed.split("\0") if path and (REPO / path).exists()}


def test_wheel_holds_the_two_apps_with_their_data_and_nothing_else(dist):
    wheel = dist["wheel"]
    assert wheel.name == f"{DIST_NAME}-{jobs.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    dist_info = f"{DIST_NAME}-{jobs.__version__}.dist-info/"
    shipped = {name for name in names if not name.startswith(dist_info)}

    assert tracked_files(*APPS) <= shipped, "a file of the apps is missing from the wheel"
    assert {name.split("/")[0] for name in shipped} == set(APPS)
    assert not [name for name in names if name.startswith(NOT_SHIPPED) or "__pycache__" in name or name.endswith(".pyc")]
    for kind, pattern in {
        "typed marker": r"(jobs|scheduler)/py\.typed",
        "migrations": r"(jobs|scheduler)/migrations/0001_initial\.py",
        "templates": r"jobs/templates/admin/jobs/.+\.html",
        "static files": r"jobs/static/jobs/admin\.css",
        "template tags": r"jobs/templatetags/jobs_admin\.py",
        "management commands": r"(jobs/management/commands/process_tasks|scheduler/management/commands/run_scheduler)\.py",
    }.items():
        found = [name for name in shipped if re.fullmatch(pattern, name)]
        assert found, f"no {kind} in the wheel"
    assert {"jobs/py.typed", "scheduler/py.typed", "jobs/migrations/0002_queuestate_admin_indexes.py"} <= shipped
    assert f"{dist_info}licenses/LICENSE" in names


def test_wheel_metadata(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        metadata = Parser().parsestr(wheel.read(f"{DIST_NAME}-{jobs.__version__}.dist-info/METADATA").decode())
    assert metadata["Name"] == NAME and metadata["Version"] == jobs.__version__
    assert metadata["License-Expression"] == "MIT" and metadata["Requires-Python"] == ">=3.11"
    requires = {re.sub(r"\s+", "", line) for line in metadata.get_all("Requires-Dist")}
    assert {
        "django<5.3,>=5.2;python_version<'3.12'",
        "django-tasks>=0.12;python_version<'3.12'",
        "django<7,>=6.1;python_version>='3.12'",
        "croniter>=2.0",
        "cron-descriptor>=1.4",
        "psycopg[binary]>=3.2;extra=='postgres'",
        "prometheus-client>=0.17;extra=='metrics'",
    } <= requires
    assert not [line for line in requires if "dj-database-url" in line.lower()]  # the demo project's, not ours
    assert {"postgres", "metrics"} <= set(metadata.get_all("Provides-Extra"))
    classifiers = set(metadata.get_all("Classifier"))
    assert {"Framework :: Django :: 5.2", "Framework :: Django :: 6", "Programming Language :: Python :: 3.11",
            "Programming Language :: Python :: 3.13", "Typing :: Typed"} <= classifiers
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().strip() == (REPO / "README.md").read_text().strip()


def test_sdist_holds_the_sources_and_the_project_files(dist):
    with tarfile.open(dist["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE", "PKG-INFO"} <= names
    assert tracked_files(*APPS) <= names
    assert not [name for name in names if name.startswith(NOT_SHIPPED) or "__pycache__" in name]


# -- a project of someone else's -------------------------------------------------------------------

TASKS_MODULE = '''
try:
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task


@task
def add(a, b):
    return a + b
'''

EVERY_SECOND = 'SCHEDULED_JOBS["add-every-second"] = {"task": "shop.tasks.add", "cron": "* * * * * *", "args": [20, 22]}\n'
# What README.md and docs/howto/install.md tell a user to add, and a schedule to watch.
SETTINGS_ADDITIONS = '''
import django

INSTALLED_APPS += ["jobs", "scheduler", "shop"]
if django.VERSION < (6, 0):
    INSTALLED_APPS.insert(0, "django_tasks")
SCHEDULED_JOBS = {}
''' + EVERY_SECOND

ENQUEUE = "from shop.tasks import add; print(add.enqueue(2, 3).id)"
RESULT = ("import json; from shop.tasks import add; r = add.get_result({job_id!r}); "
          "print(json.dumps([r.status, r.return_value]))")
ADMIN = '''
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import setup_test_environment
from jobs.models import Job

setup_test_environment()
client = Client()
client.force_login(get_user_model().objects.create_superuser("admin", "a@example.com", "pw"))
job = Job.objects.order_by("id").first()
for url in ["/admin/", "/admin/jobs/job/", f"/admin/jobs/job/{job.pk}/change/", "/admin/jobs/queuestate/",
            "/admin/scheduler/schedule/", "/admin/scheduler/schedulerun/"]:
    print(url, client.get(url).status_code)
'''


def docs_snippet(name: str) -> str:
    """The python block after ``<!-- snippet: NAME -->`` in the README or a docs page (a
    ``% doc-test:`` line may stand between), so the docs are what is tested."""
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        if "_build" in page.parts:
            continue
        match = re.search(rf"<!-- snippet: {name} -->\n(?:%[^\n]*\n)?```python\n(.*?)```", page.read_text(), re.DOTALL)
        if match:
            return match.group(1)
    raise AssertionError(f"no python block marked 'snippet: {name}' in README.md or docs/")


class Project:
    """A ``django-admin startproject`` site in its own virtualenv, driven through ``manage.py``."""

    def __init__(self, root: Path):
        self.root, self.venv = root, root / "venv"
        self.python = self.venv / "bin" / "python"
        # Nothing of this test run leaks in: not its settings, its sys.path or its virtualenv.
        self.env = {key: value for key, value in os.environ.items()
                    if key not in {"DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV"} and not key.startswith("JOBS_")}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.db = root / "site" / "db.sqlite3"

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        return run(self.python, "-m", "pip", "--disable-pip-version-check", *args, cwd=self.root, env=self.env)

    def manage(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        return run(self.python, "manage.py", *args, cwd=self.root / "site", env=self.env, ok=ok)

    def shell(self, code: str) -> str:
        return self.manage("shell", "-v", "0", "-c", code).stdout

    def result(self, job_id) -> list:
        """[status, return value] of a job, through Django's own ``get_result``."""
        return json.loads(self.shell(RESULT.format(job_id=str(job_id))))

    def append_settings(self, text: str) -> None:
        with open(self.root / "site" / "mysite" / "settings.py", "a") as settings:
            settings.write("\n" + text)


@pytest.fixture(scope="module")
def project(dist, tmp_path_factory) -> Project:
    """Install the wheel (without extras) in a new virtualenv; start a project and an app there."""
    project = Project(tmp_path_factory.mktemp("fresh"))
    run(sys.executable, "-m", "venv", project.venv, cwd=project.root)
    project.pip("install", "--quiet", dist["wheel"])
    (project.root / "site").mkdir()
    run(project.venv / "bin" / "django-admin", "startproject", "mysite", ".", cwd=project.root / "site", env=project.env)
    project.manage("startapp", "shop")
    (project.root / "site" / "shop" / "tasks.py").write_text(TASKS_MODULE)
    project.append_settings(SETTINGS_ADDITIONS)
    return project


def test_the_installed_packages_are_the_wheels_and_consistent(project):
    located = run(project.python, "-c", "import jobs, scheduler; print(jobs.__file__, scheduler.__file__)",
                  cwd=project.root, env=project.env).stdout.split()
    assert all(Path(path).is_relative_to(project.venv) for path in located), located
    assert "No broken requirements found" in project.pip("check").stdout
    installed = {re.sub(r"[-_.]+", "-", entry["name"]).lower()  # PEP 503 names: cron_descriptor is cron-descriptor
                 for entry in json.loads(project.pip("list", "--format", "json").stdout)}
    django_line = {"django-tasks"} if sys.version_info < (3, 12) else set()
    assert {NAME, "django", "croniter", "cron-descriptor"} | django_line <= installed
    assert not installed & {"psycopg", "dj-database-url"}  # the [postgres] extra was not asked for


def test_a_fresh_project_checks_migrates_runs_a_job_and_a_schedule_and_serves_the_admin(project):
    # Django's default SQLite settings: a warning naming the options (not an error).
    check = project.manage("check")
    assert "(jobs.W001) DATABASES['default'] holds the jobs and is SQLite" in check.stderr
    assert "'transaction_mode': 'IMMEDIATE'" in check.stderr

    project.manage("migrate", "--noinput")
    job_id = project.shell(ENQUEUE).strip()
    burst = project.manage("process_tasks", "--burst")
    assert "job finished id=" in burst.stderr and "outcome=SUCCESSFUL" in burst.stderr
    assert "state=SUCCESSFUL" not in burst.stderr + burst.stdout  # the framework's own per-job line is quiet at -v 1
    assert project.result(job_id) == ["SUCCESSFUL", 5]

    # The docs' SQLite options and pruning schedule: no warning at all any more.
    project.append_settings(docs_snippet("sqlite-options"))
    project.append_settings(docs_snippet("prune-schedule") + EVERY_SECOND)
    clean = project.manage("check", "--fail-level", "WARNING")
    assert "no issues" in clean.stdout, clean.stderr

    # The scheduler alone, until it has enqueued a run of the every-second schedule; then a worker runs it.
    scheduler = subprocess.Popen([project.python, "manage.py", "run_scheduler"], cwd=project.root / "site",
                                 env=project.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: scheduled_job_ids(project.db), timeout=60, message="a run of the every-second schedule")
    finally:
        scheduler.send_signal(signal.SIGTERM)
        output = scheduler.communicate(timeout=30)[0]
    assert scheduler.returncode == 0, output
    project.manage("process_tasks", "--burst")
    scheduled = scheduled_job_ids(project.db)
    assert [project.result(job) for job in scheduled] == [["SUCCESSFUL", 42]] * len(scheduled)

    admin = project.shell(ADMIN).split("\n")
    assert [line.split()[-1] for line in admin if line] == ["200"] * 6, admin
    assert project.manage("findstatic", "jobs/admin.css").returncode == 0


def scheduled_job_ids(db: Path) -> list[int]:
    """Jobs the scheduler enqueued, read straight from the project's SQLite file."""
    try:
        with closing(sqlite3.connect(db, timeout=5)) as conn:
            rows = conn.execute("SELECT run.job_id FROM scheduler_schedulerun run JOIN scheduler_schedule schedule"
                                " ON schedule.id = run.schedule_id WHERE schedule.name = 'add-every-second'"
                                " AND run.job_id IS NOT NULL ORDER BY run.id")
            return [row[0] for row in rows]
    except sqlite3.OperationalError:  # the table is not there yet
        return []

