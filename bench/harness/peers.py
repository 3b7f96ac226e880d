"""The peer queues we compare against, and how each one is built and run.

A peer is a directory under ``bench/peers/`` (tiny Django project + hooks +
pinned ``requirements.txt``) plus the facts below: which Python its pinned
Django needs and which databases it supports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .adapter import DriverAdapter
from .venvs import ensure_venv

PEERS_DIR = Path(__file__).resolve().parents[1] / "peers"


@dataclass(frozen=True)
class PeerSpec:
    name: str
    directory: str  # under bench/peers/
    python: str  # X.Y the venv is built with
    databases: tuple[str, ...]
    # A cap on jobs per drain for peers whose rate is throttled by design, so
    # a full run stays within minutes; jobs/s does not depend on N for them.
    max_jobs: int | None = None
    note: str = ""


PEERS: tuple[PeerSpec, ...] = (
    PeerSpec(
        "django-background-tasks",
        "background_tasks",
        "3.11",
        ("sqlite", "postgres", "mariadb"),
        max_jobs=1000,
        note="worker sleeps 0-0.1 s after every task (library default)",
    ),
    # django-tasks-db tests MySQL in its own CI; it gets a fresh database on the bench's MariaDB.
    PeerSpec("django-tasks-db", "tasks_db", "3.13", ("sqlite", "postgres", "mariadb")),
    PeerSpec("django-q2", "django_q2", "3.11", ("sqlite", "postgres", "mariadb")),
    PeerSpec("procrastinate", "procrastinate", "3.11", ("postgres",)),
)


@dataclass
class PeerAdapter(DriverAdapter):
    """A ``DriverAdapter`` whose interpreter is the peer's own venv, built on first use."""

    spec: PeerSpec | None = None
    venv_root: Path = field(default_factory=Path)
    log: object = print

    def prepare(self) -> dict:
        requirements = self.project_dir / "requirements.txt"
        venv = ensure_venv(self.venv_root / self.spec.directory, self.spec.python, requirements, log=self.log)
        self.python = venv.python
        facts = super().prepare()
        facts.update(venv_created=venv.created, venv_seconds=round(venv.seconds, 1))
        return facts


def make_adapters(names: list[str] | None, venv_root: Path, log_dir: Path | None, log=print) -> list[PeerAdapter]:
    """Adapters for the peers named (all when ``names`` is empty)."""
    known = {spec.name: spec for spec in PEERS}
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise SystemExit(f"unknown peer(s) {unknown}; known: {sorted(known)}")
    chosen = [known[n] for n in names] if names else list(PEERS)
    return [
        PeerAdapter(
            name=spec.name,
            project_dir=PEERS_DIR / spec.directory,
            databases=spec.databases,
            log_dir=log_dir,
            spec=spec,
            venv_root=venv_root,
            log=log,
        )
        for spec in chosen
    ]
