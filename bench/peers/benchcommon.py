"""Helpers shared by every peer's tiny Django project.

This module is imported *inside each peer's virtual environment* (by the
peer's settings and tasks), so it must stay standard-library only and work on
every Python the peers use (3.11+).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

DB_URL_ENV = "BENCH_DB_URL"
STAMP_DIR_ENV = "BENCH_STAMP_DIR"


def database_from_url(url: str) -> dict:
    """Turn ``sqlite:////abs/path``, ``postgres://user@host:port/name`` or ``mysql://user@host:port/name``
    (MySQL or MariaDB, through Django's mysqlclient backend) into a DATABASES entry.

    Only Django's defaults are used beyond the connection parameters: the
    benchmark compares the queues as their users would run them, so no
    journal-mode, timeout or pooling tweaks are added here.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parts.path)}
    engines = {"postgres": "postgresql", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
    if parts.scheme in engines:
        return {
            "ENGINE": f"django.db.backends.{engines[parts.scheme]}",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    raise ValueError(f"unsupported database URL scheme: {parts.scheme!r}")


def database_from_env() -> dict:
    """The DATABASES["default"] entry for the URL the harness passed in the environment."""
    url = os.environ.get(DB_URL_ENV)
    if not url:
        raise RuntimeError(f"{DB_URL_ENV} is not set; the benchmark driver sets it")
    return database_from_url(url)


def write_stamp(token: str) -> None:
    """Record when a latency-probe task started running (wall clock, shared across processes)."""
    now = time.time()
    directory = Path(os.environ[STAMP_DIR_ENV])
    tmp = directory / f".{token}.tmp"
    tmp.write_text(repr(now))
    tmp.rename(directory / token)  # atomic: the driver never reads a half-written file
