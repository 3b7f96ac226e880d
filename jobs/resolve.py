"""From a dotted task path to the task object, importing only what the project declared.

A job row names its task by path, and whoever can write a row (a SQL injection
elsewhere in the site, a careless script, a restored backup) chooses that path.
Importing a module runs it: ``venv.__main__`` creates a virtualenv and exits,
``antigravity`` opens a browser, a test module appends to files. So a path is
checked before anything is imported: its module must lie inside the package of an
installed app, or inside a module listed in ``settings.JOBS_TASK_MODULES``, and no
part of it may be ``__main__``. Only then is it imported, and only an object
declared with ``@task`` is handed back. Every caller that turns a stored or
configured path into a task (the worker, ``get_result``, the scheduler, the
django-background-tasks shim and importer) goes through ``resolve_task``.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from django.apps import apps
from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .exceptions import NotATask, TaskNotAllowed, TaskNotFound
from .framework import Task

logger = logging.getLogger(__name__)

SETTING = "JOBS_TASK_MODULES"
MAX_PATH_LENGTH = 255  # Job.task_path's column

_resolved: dict[str, Task] = {}


def _is_dotted_name(value: object) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= MAX_PATH_LENGTH
            and all(part.isascii() and part.isidentifier() for part in value.split(".")))


def listed_modules(raw=None) -> tuple[list[str], list[str]]:
    """(usable entries, problems) of ``JOBS_TASK_MODULES``: a list of dotted module names."""
    raw = getattr(settings, SETTING, ()) if raw is None else raw
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        return [], [f"{SETTING} must be a list of dotted module names, got {type(raw).__name__}"]
    usable, problems = [], []
    for index, entry in enumerate(raw):
        if not _is_dotted_name(entry) or "__main__" in entry.split("."):
            problems.append(f"{SETTING}[{index}] must be a dotted module name (not __main__), got {entry!r}")
        else:
            usable.append(entry)
    return usable, problems


@lru_cache(maxsize=1)
def allowed_roots() -> frozenset[str]:
    """Packages (and modules) whose code may be imported to find a task."""
    listed, problems = listed_modules()
    for problem in problems:  # manage.py check reports these; a worker carries on without them
        logger.error("task modules setting ignored entry: %s", problem)
    return frozenset(config.name for config in apps.get_app_configs()) | frozenset(listed)


def refusal(path: object) -> str | None:
    """Why ``path`` may not be imported, or None when it may. Imports nothing."""
    if not _is_dotted_name(path) or "." not in path:
        return f"task path {path!r} is not a dotted path of identifiers (module.name)"
    parts = path.split(".")
    if "__main__" in parts:
        return f"task path {path!r} names a __main__ module; those are programs, never tasks"
    module = ".".join(parts[:-1])
    if not any(module == root or module.startswith(root + ".") for root in allowed_roots()):
        return (f"task path {path!r} is outside every installed app and {SETTING}; "
                "refusing to import it")
    return None


def resolve_task(path: str) -> Task:
    """The task ``path`` names: TaskNotAllowed, TaskNotFound or NotATask otherwise.

    Only objects declared with ``@task`` come back, so a path naming ``os.system``
    (were ``os`` ever allowed) still runs nothing. Successes are cached: code does
    not change under a running process.
    """
    task = _resolved.get(path)
    if task is not None:
        return task
    reason = refusal(path)
    if reason:
        raise TaskNotAllowed(reason)
    try:
        obj = import_string(path)
    except Exception as exc:  # ImportError, or the module itself raising on import
        raise TaskNotFound(f"task {path!r} does not import: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Task):
        raise NotATask(f"{path!r} is a {type(obj).__name__}, not a task declared with @task; refusing to run it")
    _resolved[path] = obj
    return obj


def _reset(*, setting, **kwargs) -> None:
    if setting in (SETTING, "INSTALLED_APPS"):
        allowed_roots.cache_clear()
        _resolved.clear()


setting_changed.connect(_reset, dispatch_uid="jobs.resolve.reset")
