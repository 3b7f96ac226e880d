"""Our own queue as one more adapter: the project's venv running ``manage.py process_tasks``.

It is a ``DriverAdapter`` like the peers, with ``bench/ours`` as its project
directory and the repository root on ``PYTHONPATH``. The environment is a
deployment's: ``DJANGO_DEBUG=0``, a ``DJANGO_SECRET_KEY`` and ``DATABASE_URL``
pointing at the run's database, so the production settings (and their
database options) apply unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .adapter import DriverAdapter

REPO_ROOT = Path(__file__).resolve().parents[2]
OURS_DIR = REPO_ROOT / "bench" / "ours"


def find_ours_python(explicit: str | None = None) -> str:
    """The interpreter with our requirements: ``--ours-python``, the running one, then ``.venv``.

    ``make bench`` runs the harness with ``.venv/bin/python``, which is the first
    choice; ``python3 bench/run.py`` from a bare interpreter falls back to
    ``.venv`` (``make venv`` builds it).
    """
    candidates = [explicit] if explicit else [sys.executable, str(REPO_ROOT / ".venv" / "bin" / "python")]
    for candidate in candidates:
        if candidate and Path(candidate).exists() and _has_requirements(candidate):
            return candidate
    if explicit:
        raise RuntimeError(f"{explicit} cannot import django, dj_database_url and psycopg")
    raise RuntimeError("no interpreter with the project's requirements: run `make venv` (or pass --ours-python)")


def _has_requirements(python: str) -> bool:
    probe = "import django, dj_database_url, psycopg"
    return subprocess.run([python, "-c", probe], capture_output=True, check=False).returncode == 0


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, check=False, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() or None


@dataclass
class OursAdapter(DriverAdapter):
    explicit_python: str | None = None

    def prepare(self) -> dict:
        self.python = find_ours_python(self.explicit_python)
        facts = super().prepare()
        facts.update(interpreter=self.python, revision=_git_revision())
        return facts


def make_ours(log_dir: Path | None, python: str | None = None) -> OursAdapter:
    return OursAdapter(
        name="ours",
        databases=("sqlite", "postgres", "mariadb"),
        project_dir=OURS_DIR,
        extra_pythonpath=(str(REPO_ROOT),),
        extra_env={"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "bench-not-secret"},
        db_url_env=("DATABASE_URL",),
        log_dir=log_dir,
        explicit_python=python,
    )
