"""The reference pages and the code name the same settings, OPTIONS keys, command options and check ids.

Read from the code at test time (so an option added by a later change only needs its entry):
- settings: every ``settings.NAME`` / ``getattr(settings, NAME)`` in jobs/ and scheduler/ (names
  given as module constants resolved), less Django's own settings, plus ``TASKS``;
- OPTIONS keys: the fields of ``jobs.conf.JobsOptions``; SCHEDULED_JOBS keys: ``scheduler.conf.KEYS``;
- command options: the argparse parser of every management command in jobs/ and scheduler/, less
  the options every Django command has;
- check ids: every string ``"jobs.E001"``-like in the code.
Read from the pages: headings ``### `NAME` `` (settings), ``### `OPTIONS["key"]` ``,
``### `SCHEDULED_JOBS[...]["key"]` `` (docs/reference/settings.md); per ``## `command` `` section
of docs/reference/commands.md the options in the first cell of its table rows; the ids in the
first cell of the table rows of docs/reference/checks.md.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import fields
from pathlib import Path

import pytest
from django.conf import global_settings
from django.core.management.base import BaseCommand

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "docs" / "reference"
PACKAGES = ("jobs", "scheduler")
CHECK_ID = re.compile(r"""["']((?:jobs|scheduler)\.[EWIC]\d{3})["']""")

pytestmark = pytest.mark.sqlite_only


def code_files():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def settings_read_by_code() -> dict[str, str]:
    """Setting name -> the first file that reads it."""
    found: dict[str, str] = {}
    trees = {path: ast.parse(path.read_text()) for path in code_files()}
    # Module-level string constants (SETTING = "JOBS_TASK_MODULES"), of this module first, then of
    # any module (a constant imported from elsewhere).
    module_constants = {path: {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                               and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                               for target in node.targets if isinstance(target, ast.Name)}
                        for path, tree in trees.items()}
    everywhere = {name: value for constants in module_constants.values() for name, value in constants.items()}
    for path, tree in trees.items():
        constants = {**everywhere, **module_constants[path]}
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "settings":
                name = node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in {"getattr", "hasattr"} and len(node.args) >= 2
                  and isinstance(node.args[0], ast.Name) and node.args[0].id == "settings"):
                arg = node.args[1]
                if isinstance(arg, ast.Constant):
                    name = arg.value
                elif isinstance(arg, ast.Name):
                    name = constants.get(arg.id)
            if isinstance(name, str) and name.isupper():
                found.setdefault(name, str(path.relative_to(REPO)))
    return {name: where for name, where in found.items()
            if name == "TASKS" or not hasattr(global_settings, name)}


def headings(page: Path, pattern: str) -> set[str]:
    return set(re.findall(pattern, page.read_text(), flags=re.MULTILINE))


def both_ways(in_code: set[str], in_docs: set[str], what: str, page: str) -> None:
    missing, stale = sorted(in_code - in_docs), sorted(in_docs - in_code)
    problems = []
    if missing:
        problems.append(f"{what} in the code but not in {page}: {', '.join(missing)}")
    if stale:
        problems.append(f"{what} in {page} but not in the code: {', '.join(stale)}")
    assert not problems, "\n".join(problems)


def test_settings_are_documented():
    in_code = settings_read_by_code()
    assert {"TASKS", "SCHEDULED_JOBS", "JOBS_TASK_MODULES"} <= set(in_code), "the scan lost its way"
    documented = headings(REFERENCE / "settings.md", r"^###\s+`([A-Z][A-Z0-9_]+)`\s*$")
    both_ways(set(in_code), documented, "settings", "docs/reference/settings.md")


def test_options_keys_are_documented():
    from jobs.conf import JobsOptions

    documented = headings(REFERENCE / "settings.md", r'^###\s+`OPTIONS\["(\w+)"\]`\s*$')
    both_ways({f.name for f in fields(JobsOptions)}, documented, "TASKS OPTIONS keys", "docs/reference/settings.md")


def test_scheduled_jobs_keys_are_documented():
    from scheduler.conf import KEYS

    documented = headings(REFERENCE / "settings.md", r'^###\s+`SCHEDULED_JOBS\[\.\.\.\]\["(\w+)"\]`\s*$')
    both_ways(set(KEYS), documented, "SCHEDULED_JOBS keys", "docs/reference/settings.md")


def command_modules() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package / "management" / "commands").glob("*.py")):
            if not path.name.startswith("_"):
                found[path.stem] = f"{package}.management.commands.{path.stem}"
    return found


def options_of(module: str, name: str) -> set[str]:
    common = {opt for action in BaseCommand().create_parser("manage.py", name)._actions for opt in action.option_strings}
    command = importlib.import_module(module).Command()
    parser = command.create_parser("manage.py", name)
    found = set()
    for action in parser._actions:
        if action.option_strings:
            found.update(opt for opt in action.option_strings if opt not in common)
        elif action.dest != "help":
            found.add(action.dest)  # a positional argument, documented by its name
    return found


def documented_commands() -> dict[str, set[str]]:
    text = (REFERENCE / "commands.md").read_text()
    sections = re.split(r"^##\s+`(\w+)`\s*$", text, flags=re.MULTILINE)
    documented = {}
    for name, body in zip(sections[1::2], sections[2::2]):
        options = set()
        for row in re.findall(r"^\|\s*([^|\n]*?)\s*\|", body, flags=re.MULTILINE):
            options.update(re.findall(r"`(--[\w-]+|-\w)\b", row))
        documented[name] = options
    return documented


def test_commands_are_documented():
    in_code = command_modules()
    assert {"process_tasks", "prune_jobs", "jobs_status", "run_scheduler"} <= set(in_code)
    documented = documented_commands()
    both_ways(set(in_code), set(documented), "management commands", "docs/reference/commands.md")


@pytest.mark.parametrize("name", sorted(command_modules()))
def test_command_options_are_documented(name):
    documented = documented_commands().get(name, set())
    both_ways(options_of(command_modules()[name], name), documented - {"-v"},
              f"options of {name}", "docs/reference/commands.md")


def test_check_ids_are_documented():
    in_code = {match for path in code_files() for match in CHECK_ID.findall(path.read_text())}
    assert {"jobs.E001", "scheduler.E001"} <= in_code
    documented = headings(REFERENCE / "checks.md", r"^\|\s*`((?:jobs|scheduler)\.[EWIC]\d{3})`")
    both_ways(in_code, documented, "system check ids", "docs/reference/checks.md")
