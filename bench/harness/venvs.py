"""Per-peer virtual environments, created on demand so a fresh clone can run the benchmark.

Each peer needs its own Django (django-background-tasks is stuck on old
Django, django-tasks-db wants Django 6 which needs Python 3.12+), so each gets
a venv under ``.bench/venvs/<peer>`` built from its ``requirements.txt``. A
hash of that file is kept in the venv: editing the pins rebuilds it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


class InterpreterNotFound(RuntimeError):
    """No interpreter of the wanted X.Y version was found."""


def find_python(version: str) -> str:
    """An interpreter for ``version`` ("3.13"): the running one, pyenv's, then PATH.

    pyenv is looked at before PATH because a pyenv shim such as
    ``python3.13`` is on PATH yet fails unless that version is selected.
    """
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    candidates: list[str] = []
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True)
    candidates += [
        p
        for p in (shutil.which(f"python{version}"), f"/usr/bin/python{version}", f"/usr/local/bin/python{version}")
        if p
    ]
    for candidate in candidates:
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    raise InterpreterNotFound(f"no Python {version} found (tried pyenv and PATH)")


@dataclass
class VenvResult:
    python: str  # the venv's interpreter
    created: bool
    seconds: float  # time spent creating + installing (0 when reused)


def _digest(requirements: Path, python_version: str) -> str:
    return hashlib.sha256(python_version.encode() + b"\0" + requirements.read_bytes()).hexdigest()


def ensure_venv(venv_dir: Path, python_version: str, requirements: Path, log=print) -> VenvResult:
    """Create (or reuse) ``venv_dir`` with ``requirements`` installed; report how long it took."""
    marker = venv_dir / ".bench-requirements.sha256"
    venv_python = venv_dir / "bin" / "python"
    digest = _digest(requirements, python_version)
    if venv_python.exists() and marker.exists() and marker.read_text().strip() == digest:
        return VenvResult(str(venv_python), created=False, seconds=0.0)

    base = find_python(python_version)
    log(f"creating {venv_dir} with {base} from {requirements}")
    started = time.perf_counter()
    if venv_dir.exists():
        shutil.rmtree(venv_dir)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    install_log = venv_dir.parent / f"{venv_dir.name}-install.log"
    with open(install_log, "w") as out:
        steps = (
            [base, "-m", "venv", str(venv_dir)],
            [
                str(venv_python),
                "-m",
                "pip",
                "--disable-pip-version-check",
                "--no-input",
                "install",
                "-r",
                str(requirements),
            ],
        )
        for step in steps:
            out.write(f"$ {' '.join(step)}\n")
            out.flush()
            if subprocess.run(step, check=False, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                tail = "".join(install_log.read_text().splitlines(keepends=True)[-10:])
                raise RuntimeError(f"building {venv_dir} failed (full log: {install_log}):\n{tail}")
    marker.write_text(digest + "\n")  # only once the install succeeded
    seconds = time.perf_counter() - started
    log(f"  {venv_dir.name}: ready in {seconds:.1f}s")
    return VenvResult(str(venv_python), created=True, seconds=seconds)
