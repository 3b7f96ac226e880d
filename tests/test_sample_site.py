"""A site owner's own tests of their tasks (tests/sample_site), run as they would run them: with
Django's runner (``manage.py test``) and with pytest-django, on the database of this run."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from django.db import connection

from tests.conftest import REPO
from tests.test_package import docs_snippet

SITE = REPO / "tests" / "sample_site"


def site_copy(tmp_path):
    """The sample site, plus the docs' TestCase example (docs/howto/testing.md) as one more test module of it."""
    site = tmp_path / "site"
    shutil.copytree(SITE, site, ignore=shutil.ignore_patterns("__pycache__"))
    (site / "shop" / "test_readme.py").write_text(docs_snippet("testing-testcase"))
    return site


def site_env(tmp_path, name: str, site=SITE) -> dict:
    """The sample site on this run's database server (SQLite: a file of its own)."""
    ours = connection.settings_dict
    database = {key: ours[key] for key in ("ENGINE", "HOST", "PORT", "USER", "PASSWORD", "OPTIONS") if key in ours}
    database["NAME"] = str(tmp_path / f"{name}.sqlite3") if connection.vendor == "sqlite" else name
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "PYTEST_"))}
    env.update(SAMPLE_DATABASE=json.dumps(database), PYTHONPATH=str(site), PYTHONUNBUFFERED="1")
    return env


def run(command, env, site=SITE) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=site, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.django_db
def test_the_sites_tests_pass_under_djangos_runner(tmp_path):
    site = site_copy(tmp_path)
    done = run([sys.executable, "manage.py", "test", "shop", "--noinput", "-v", "2"],
               site_env(tmp_path, "sample_django", site), site)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Ran 8 tests" in output and "OK" in output, output  # 6 of the site's, 2 of the docs'
    assert "Traceback" not in output, output  # the failures the tests make on purpose print nothing


@pytest.mark.django_db
def test_the_sites_tests_pass_under_pytest_django(tmp_path):
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "shop/pytest_tests.py"],
               site_env(tmp_path, "sample_pytest"))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "4 passed" in output, output
    fixture = docs_snippet("testing-fixture").split("\n\n", 1)[1]  # the docs', less its imports
    assert fixture in (SITE / "shop" / "pytest_tests.py").read_text()
