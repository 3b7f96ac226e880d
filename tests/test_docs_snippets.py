"""Every Python and shell block of the docs site runs, page by page, in a scratch Django site.

A block is a fenced ```python, ```sh or ```console block of a page under docs/. The line just
before its fence (a MyST comment, invisible on the site) may say what to do with it:

    % doc-test: file PATH        the block is that file of the scratch site (written, dirs made)
    % doc-test: append PATH      the block is appended to that file
    % doc-test: background       (sh) started and left running for the rest of the page; at the
                                 page's end it gets SIGTERM and must exit 0
    % doc-test: exit N           (sh, console) the block's last command must exit with N
    % doc-test: exit N expect    and what it printed must hold the next block's lines
    % doc-test: expect           (python, sh) run it; every line of the next fenced block (its
                                 output as shown on the page) must appear in what it printed
    % doc-test: skip REASON      illustration only (a systemd unit's command, another server);
                                 kept few: test_few_blocks_are_illustrations counts them

Unmarked Python runs in the site with ``python manage.py shell -c``; unmarked shell blocks run
with bash -e in the site's directory (``console`` blocks: the lines after ``$ ``). ``pip install``
is not run (the test's venv already has this checkout installed): it prints what it would do.

Each page starts from a fresh copy of a site made once per session: ``django-admin
startproject mysite`` plus an app ``shop``, with "jobs", "scheduler" and "shop" installed, the
SQLite OPTIONS of the install guide, and ``migrate`` run. A page whose first line is
``% doc-test-page: bare`` starts in an empty directory instead (the tutorial makes its own), and
one whose first line is ``% doc-test-page: plain`` in the startproject site with ``shop`` only,
before any of the settings above (the install guide adds them).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
RUN_LANGUAGES = {"python", "sh", "console"}
# Blocks in these languages are never ours to run (units, configs, output, SQL).
FENCE = re.compile(r"^(?P<fence>```+|~~~+)(?P<lang>[\w+-]*)[^\n]*$")
DIRECTIVE = re.compile(r"^%\s*doc-test:\s*(?P<kind>\w+)\s*(?P<arg>.*)$")
MAX_ILLUSTRATIONS = 20

pytestmark = [
    pytest.mark.sqlite_only,
    pytest.mark.needs_django(6, 0),  # the docs show Django 6's imports (django.tasks)
]


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    kind: str = "run"
    arg: str = ""
    expected: str = ""

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line} ({self.lang}, {self.kind})"


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if not {"_build", "_pending"} & set(p.relative_to(DOCS).parts))


def blocks(page: Path) -> list[Block]:
    """The page's fenced blocks in our languages, each with the directive written above it."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, lang, start = match["fence"], match["lang"], i
        end = start + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        if end == len(lines):
            raise AssertionError(f"{page.relative_to(REPO)}:{start + 1}: unclosed code fence")
        if lang in RUN_LANGUAGES:
            block = Block(page, start + 1, lang, "\n".join(lines[start + 1:end]) + "\n")
            above = start - 1
            if above >= 0 and (directive := DIRECTIVE.match(lines[above].strip())):
                block.kind, block.arg = directive["kind"], directive["arg"].strip()
                if block.kind not in {"file", "append", "background", "exit", "skip", "run", "expect"}:
                    raise AssertionError(f"{block.where()}: unknown doc-test directive {block.kind!r}")
            if block.kind == "expect" or (block.kind == "exit" and block.arg.endswith(" expect")):
                block.expected = next_block_text(lines, end + 1, block)
            found.append(block)
        i = end + 1
    return found


def next_block_text(lines: list[str], start: int, block: Block) -> str:
    for i in range(start, len(lines)):
        if match := FENCE.match(lines[i]):
            end = i + 1
            while end < len(lines) and not lines[end].startswith(match["fence"]):
                end += 1
            return "\n".join(lines[i + 1:end])
    raise AssertionError(f"{block.where()}: '% doc-test: expect' but no block of output follows")


def check_output(block: Block, output: str) -> None:
    for line in block.expected.splitlines():
        assert line.strip() in output, (f"{block.where()}: the page shows {line.strip()!r}, "
                                        f"which the block did not print:\n{output[-4000:]}")


def runnable_pages() -> list[Path]:
    return [page for page in pages() if any(b.kind != "skip" for b in blocks(page))]


def site_env(site: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in {"DJANGO_SETTINGS_MODULE", "PYTHONPATH", "JOBS_TEST_DB_NAME", "DATABASE_URL"}}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = str(site)
    return env


SHELL_PRELUDE = """\
pip() { echo "doc-test: not running 'pip $*' (this venv has the checkout installed)"; }
"""


def shell_script(block: Block) -> str:
    if block.lang == "console":
        commands, current = [], None
        for line in block.code.splitlines():
            if line.startswith("$ "):
                current = line[2:]
                commands.append(current)
            elif current is not None and commands[-1].endswith("\\"):
                commands[-1] += "\n" + line
        return "\n".join(commands) + "\n"
    return block.code


def run(command: list[str], site: Path, block: Block, expect: int = 0, timeout: float = 120) -> str:
    proc = subprocess.run(command, cwd=site, env=site_env(site), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != expect:
        raise AssertionError(f"{block.where()} exited {proc.returncode}, expected {expect}:\n{block.code}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def plain_site(tmp_path_factory) -> Path:
    """``django-admin startproject mysite`` and ``startapp shop``, nothing more."""
    site = tmp_path_factory.mktemp("docs-plain-site")
    env = site_env(site)
    python = sys.executable
    subprocess.run([python, "-m", "django", "startproject", "mysite", "."], cwd=site, env=env, check=True)
    subprocess.run([python, "manage.py", "startapp", "shop"], cwd=site, env=env, check=True)
    (site / "shop" / "tasks.py").write_text("from django.tasks import task\n")
    return site


@pytest.fixture(scope="session")
def template_site(tmp_path_factory, plain_site) -> Path:
    """The plain site with jobs, scheduler and ``shop`` installed, migrated, on SQLite."""
    site = tmp_path_factory.mktemp("docs-site") / "site"
    shutil.copytree(plain_site, site)
    env = site_env(site)
    python = sys.executable
    with open(site / "mysite" / "settings.py", "a") as settings:
        settings.write(
            '\nINSTALLED_APPS += ["jobs", "scheduler", "shop"]\n'
            'DATABASES["default"]["OPTIONS"] = {\n'
            '    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",\n'
            '    "timeout": 20,\n'
            '    "transaction_mode": "IMMEDIATE",\n'
            "}\n")
    subprocess.run([python, "manage.py", "migrate", "-v", "0"], cwd=site, env=env, check=True)
    return site


def test_blocks_are_found_and_directives_known():
    found = [block for page in pages() for block in blocks(page)]
    assert len(found) > 20, "the docs lost their code blocks, or the parser lost them"


def test_few_blocks_are_illustrations():
    skipped = [block for page in pages() for block in blocks(page) if block.kind == "skip"]
    for block in skipped:
        assert block.arg, f"{block.where()}: say why the block cannot run (% doc-test: skip REASON)"
    assert len(skipped) <= MAX_ILLUSTRATIONS, "\n".join(b.where() for b in skipped)


@pytest.mark.parametrize("page", runnable_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_blocks_run(page: Path, request, tmp_path: Path):
    site = tmp_path / "site"
    first_line = page.read_text().partition("\n")[0]
    if first_line == "% doc-test-page: bare":
        site.mkdir()
    elif first_line == "% doc-test-page: plain":
        shutil.copytree(request.getfixturevalue("plain_site"), site)
    else:
        template_site = request.getfixturevalue("template_site")
        shutil.copytree(template_site, site)
    background: list[tuple[Block, subprocess.Popen]] = []
    try:
        for block in blocks(page):
            if block.kind == "skip":
                continue
            if block.kind in {"file", "append"}:
                target = site / block.arg
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "a" if block.kind == "append" else "w") as out:
                    out.write(("\n" if block.kind == "append" else "") + block.code)
                continue
            expect = int(block.arg.split()[0]) if block.kind == "exit" else 0
            if block.lang == "python":
                output = run([sys.executable, "manage.py", "shell", "-v", "0", "-c", block.code], site, block, expect)
                check_output(block, output)
            elif block.kind == "background":
                proc = subprocess.Popen(["bash", "-c", f"exec {block.code.strip()}"], cwd=site, env=site_env(site),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                background.append((block, proc))
            else:
                output = run(["bash", "-e", "-c", SHELL_PRELUDE + shell_script(block)], site, block, expect)
                check_output(block, output)
    finally:
        for block, proc in background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                output, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            assert proc.returncode == 0, f"{block.where()} exited {proc.returncode} on SIGTERM:\n{output[-4000:]}"
