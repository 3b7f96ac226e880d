"""The project's modules import each other one way only, each imports on its own, and the
architecture page's module map matches them.

Over every module of ``jobs``, ``scheduler``, ``queue_project`` and ``example`` (the apps, the
host project and the demo; not the suite, the benchmark or the fault test):

- **The graph has no cycle.** Every import statement of every module is read with ``ast``:
  at the top of the module and inside functions alike (an import inside a function that
  only postpones a cycle is still an edge of it), relative imports resolved. An edge goes to
  the module named: ``from jobs.sql import base`` to ``jobs.sql.base``, ``from jobs.sql import
  statements`` to ``jobs.sql``. The edge Python adds from a module to the packages above it
  (importing ``jobs.sql.base`` runs ``jobs/sql/__init__.py`` first) is left out: a package
  that imports its own modules would otherwise be a cycle with each of them, which it is
  not (the package's ``__init__`` runs first and finishes with them). There is no ``if
  TYPE_CHECKING:`` import in the project; one would count like any other.
- **Each module imports alone.** A fresh interpreter per module (no fork, no reuse), with
  the suite's settings and ``django.setup()``, then ``import`` of that one module; the modules
  ``django.setup()`` imports itself are checked by one interpreter that runs only it.
  Migrations are left out here (Django's migration loader imports each of them in every test
  run) but are in the graph, and so are empty ``__init__.py`` files. The interpreters run two
  to four at a time (about 0.45 s of CPU each).
- **The map matches.** ``docs/explanation/architecture.md`` has one row per module that holds
  code (migrations: one per app), no row for what is no module, and its groups are layers:
  no module imports from a group further down the page. ``jobs`` never imports
  ``scheduler``, and neither app imports the host project or the demo.

To see the graph: ``python tests/test_module_graph.py`` prints each module and what it imports.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("jobs", "scheduler", "queue_project", "example")
MAP = REPO / "docs" / "explanation" / "architecture.md"

pytestmark = pytest.mark.sqlite_only  # nothing here touches a database


def project_modules() -> dict[str, Path]:
    """Every module of PACKAGES: dotted name -> file (a package is its ``__init__.py``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _known(name: str, modules) -> str | None:
    """``name``, or the nearest package above it, that is one of ``modules``; None if neither."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """Module -> {module of the project it imports: the line of its first such import}."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    above = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*above, *([node.module] if node.module else [])])
                # ``from package import module`` names the module; ``from module import name``, the module.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                known = _known(target, modules)
                if known and known != name:
                    edges.setdefault(known, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(graph[target])))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe(component: list[str], graph, modules) -> str:
    lines = [f"{len(component)} modules import each other in a circle: {', '.join(component)}"]
    for name in component:
        for target, line in sorted(graph[name].items(), key=lambda edge: edge[1]):
            if target in component:
                lines.append(f"  {modules[name].relative_to(REPO)}:{line} imports {target}")
    return "\n".join(lines)


def test_the_graph_is_read_whole():
    """The reader finds what it must: imports inside functions, relative ones, ``from package
    import module``; so that an empty graph cannot pass for a clean one."""
    modules = project_modules()
    graph = import_graph(modules)
    assert len(modules) > 100
    assert "jobs.control" in graph["jobs"]  # inside cancel(): ``from .control import cancel``
    assert "jobs.sql.base" in graph["jobs.sql"]  # ``from .base import Statements``
    assert "jobs.sql.postgresql" in graph["jobs.sql"]  # inside statements()
    assert "jobs.control" in graph["jobs.worker.loop"]  # ``from ..control import write_progress``
    assert "jobs.control" in graph["jobs.worker.pool"]  # ``from .. import control``
    assert "jobs.models" in graph["scheduler.runner"]  # ``from jobs.models import Job, JobStatus``


def test_no_import_cycle_among_the_project_modules():
    modules = project_modules()
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, "\n".join(describe(component, graph, modules) for component in found)


def test_the_apps_import_one_way():
    """``scheduler`` plugs into ``jobs`` through its registries: ``jobs`` never imports it, and
    neither app imports the host project or the demo (they do not ship)."""
    graph = import_graph(project_modules())
    wrong = [f"{name} imports {target}" for name, targets in graph.items() for target in targets
             if (name.startswith("jobs") and target.startswith(("scheduler", "queue_project", "example")))
             or (name.startswith("scheduler") and target.startswith(("queue_project", "example")))]
    assert not wrong, wrong


def map_groups() -> list[tuple[str, list[str]]]:
    """The architecture page's module map: (group heading, the first cell of each row of its
    table: `jobs/sql/base.py`, `jobs/sql/`), in the page's order."""
    text = MAP.read_text()
    section = text[text.index("## The module map"):]
    end = section.find("\n## ", 1)
    groups: list[tuple[str, list[str]]] = []
    for line in section[:end if end > 0 else None].splitlines():
        if line.startswith("### "):
            groups.append((line[4:], []))
        elif groups and (row := re.match(r"\| `([^`]+)` \|", line)):
            groups[-1][1].append(row.group(1))
    return groups


def map_entries() -> list[str]:
    return [entry for _, entries in map_groups() for entry in entries]


def _dotted(entry: str) -> str:
    return entry.removesuffix("/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_the_architecture_page_maps_every_module_and_only_those():
    """Each module that holds code has its row in the map, saying what it owns; each row names a
    module or package that exists (migrations: one row per app)."""
    modules = project_modules()
    entries = map_entries()
    named, unknown = set(), []
    for entry in entries:
        dotted = _dotted(entry)
        if dotted not in modules:
            unknown.append(entry)
        named |= {name for name in modules if name == dotted or (entry.endswith("/migrations/")
                                                                    and name.startswith(f"{dotted}."))}
    assert not unknown, f"the map in {MAP.relative_to(REPO)} names what is no module: {', '.join(unknown)}"
    missing = sorted(name for name, path in modules.items() if name not in named and path.stat().st_size)
    assert not missing, f"modules the map in {MAP.relative_to(REPO)} leaves out: {', '.join(missing)}"
    assert len(entries) == len(set(entries)), "a module has two rows in the map"


def test_each_module_imports_only_from_its_group_of_the_map_or_one_above():
    """The map's groups are layers: the page lists them from the bottom of the graph up, so a
    module that imports from a group further down the page contradicts it."""
    modules = project_modules()
    graph = import_graph(modules)
    position = {}
    for index, (_heading, entries) in enumerate(map_groups()):
        for entry in entries:
            dotted = _dotted(entry)
            position.update({name: index for name in modules if name == dotted or (
                entry.endswith("/migrations/") and name.startswith(f"{dotted}."))})
    headings = [heading for heading, _ in map_groups()]
    wrong = [f"{name} ({headings[position[name]]}) imports {target} ({headings[position[target]]})"
             for name, targets in graph.items() if name in position
             for target in targets if target in position and position[target] > position[name]]
    assert not wrong, "imports from a group below, on the map:\n" + "\n".join(wrong)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e2": 1}, "e2": {"e": 1}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e", "e2"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


# A fresh interpreter: settings, django.setup(), then the one module (argv[1]; none: setup alone),
# printing the project's modules loaded by then.
_IMPORT_ALONE = (
    "import importlib, sys, django; django.setup(); sys.argv[1:] and importlib.import_module(sys.argv[1]); "
    f"print(*sorted(name for name in sys.modules if name.partition('.')[0] in {PACKAGES!r}))"
)


def _import_alone(module: str | None) -> tuple[str | None, int, str, str]:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings"))
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALONE, *([module] if module else [])], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    return module, proc.returncode, proc.stdout, proc.stderr


def test_each_module_imports_alone_in_a_fresh_interpreter():
    """A module that ``django.setup()`` itself imports (the apps' configs, models, admin, checks:
    about half of them) is imported by the first interpreter, which does only that; every other
    module gets its own, after setup. (Importing one of the first kind after setup would be a
    no-op: the same check as the first interpreter's, at 0.45 s each.)"""
    modules = [name for name, path in project_modules().items()
               if ".migrations" not in name and path.stat().st_size]  # an empty file imports nothing
    _, code, loaded, stderr = _import_alone(None)
    assert code == 0, f"django.setup() alone fails:\n{stderr.strip()[-2000:]}"
    by_setup = set(loaded.split())
    assert "jobs.models" in by_setup and "jobs.admin" in by_setup, loaded  # the list is read right
    alone = [name for name in modules if name not in by_setup]
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(_import_alone, alone))
    failed = [f"{module} (exit {code}):\n{stderr.strip()[-2000:]}" for module, code, _, stderr in results if code]
    assert not failed, f"{len(failed)} of {len(alone)} modules do not import alone:\n" + "\n".join(failed)
    assert len(alone) > 30  # what setup leaves is imported here, each in its own interpreter


if __name__ == "__main__":
    modules = project_modules()
    graph = import_graph(modules)
    for name in sorted(graph):
        print(name, "->", ", ".join(sorted(graph[name])) or "-")
    for component in cycles(graph):
        print(describe(component, graph, modules))
