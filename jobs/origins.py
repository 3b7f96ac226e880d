"""Where a job came from, in the words of the app that enqueued it: renderers registered by key.

A job's ``meta`` holds what its enqueuer wrote there: the scheduler its schedule and fire
time, the django-background-tasks shim a verbose name and a creator. Only the writer knows
its keys, so the writer registers a renderer here, from its ``AppConfig.ready()``, as the
scheduler registers its tick in ``jobs.loops``; the job page (jobs/admin/job_page.py) asks
every renderer and shows what they return. ``jobs`` never parses another app's keys and
never imports ``scheduler``.

A renderer takes the job's meta (a read-only mapping) and returns an ``Origin``, or None
when the meta is not its own. It must not query the database: the job page's queries are
counted. A renderer that raises, or returns anything but an ``Origin``, is logged and
skipped, so one bad app never costs the page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    text: str
    url: str


@dataclass(frozen=True)
class Origin:
    """What the job page's "Origin" says: ``label: text`` and links, e.g.
    ``Schedule: nightly-report, fire time ... (the schedule) (the run)``.

    ``consumed`` names the meta keys this origin has said all there is to say about:
    the page does not show them again under "Meta" (keys not consumed are shown there).
    """

    label: str
    text: str = ""
    links: tuple[Link, ...] = ()
    consumed: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self):  # lists and sets are welcome; what is kept cannot change
        object.__setattr__(self, "links", tuple(self.links))
        object.__setattr__(self, "consumed", frozenset(self.consumed))


OriginRenderer = Callable[[Mapping[str, Any]], Origin | None]

_registry: dict[str, OriginRenderer] = {}


def register_origin(key: str, renderer: OriginRenderer) -> None:
    """Register (or replace: ``ready()`` may run twice) the renderer named ``key``."""
    if not callable(renderer):
        raise TypeError(f"origin renderer {key!r} must be callable, got {renderer!r}")
    _registry[key] = renderer


def unregister_origin(key: str) -> None:
    _registry.pop(key, None)


def origin_renderers() -> dict[str, OriginRenderer]:
    return dict(_registry)


def origins_of(meta: Mapping[str, Any]) -> list[Origin]:
    """What every registered renderer says of ``meta``, in the order they were registered."""
    view = MappingProxyType(dict(meta))  # a renderer cannot change what the next one (or the page) reads
    found = []
    for key, renderer in _registry.items():
        try:
            origin = renderer(view)
        except Exception:
            logger.exception("origin renderer failed, skipped: renderer=%s", key)
            continue
        if origin is None:
            continue
        if not isinstance(origin, Origin):
            logger.error("origin renderer returned %s, not an Origin, skipped: renderer=%s",
                         type(origin).__name__, key)
            continue
        found.append(origin)
    return found


def consumed_keys(origins: Iterable[Origin]) -> set[str]:
    return {key for origin in origins for key in origin.consumed}
