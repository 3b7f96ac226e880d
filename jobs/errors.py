"""One failed attempt as stored in ``Job.errors``, described so that describing never fails.

An exception is user code: its ``__str__`` may raise, its class may lie about its
module, its message may be fifty megabytes. The entry is built from what can be
read safely and is capped in size, so one bad exception can neither kill the
thread that records it nor bloat the row (and every admin page that shows it).
"""

from __future__ import annotations

import re
import traceback as traceback_module
from datetime import datetime

# Longest message and traceback kept per attempt; longer ones keep their head and tail.
MAX_MESSAGE = 2000
MAX_TRACEBACK = 16000


# Characters a database text column refuses (PostgreSQL: NUL; UTF-8: lone surrogates).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clip(text: str, limit: int) -> str:
    """``text`` storable and within ``limit`` characters, keeping the start and the end (where the error is)."""
    text = _UNSTORABLE.sub("\ufffd", text)
    if len(text) <= limit:
        return text
    marker = f"\n[... {len(text) - limit:,} characters cut ...]\n"
    head = limit // 4
    return text[:head] + marker + text[len(text) - (limit - head - len(marker)):]


def _safe(fn, fallback: str) -> str:
    try:
        value = fn()
        return value if isinstance(value, str) else fallback
    except BaseException:  # noqa: BLE001 - describing user code must not fail
        return fallback


def exception_class_path(exc: BaseException) -> str:
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str):
        return "builtins.BaseException"
    return clip(f"{module}.{name}", 300)


def exception_message(exc: BaseException) -> str:
    name = _safe(lambda: type(exc).__name__, "exception")
    return clip(_safe(lambda: str(exc), f"<{name} whose str() raised>"), MAX_MESSAGE)


def exception_traceback(exc: BaseException) -> str:
    def formatted() -> str:
        return "".join(traceback_module.format_exception(exc))

    return clip(_safe(formatted, f"{exception_class_path(exc)}: {exception_message(exc)}\n"), MAX_TRACEBACK)


def error_entry(exc: BaseException, *, attempt: int, worker_id: str, when: datetime,
                traceback: str | None = None) -> dict:
    """One failed attempt: attempt number, class path, message, traceback, worker, time."""
    return {
        "attempt": attempt,
        "exception_class_path": exception_class_path(exc),
        "message": exception_message(exc),
        "traceback": clip(traceback, MAX_TRACEBACK) if traceback is not None else exception_traceback(exc),
        "worker_id": worker_id,
        "at": when.isoformat(),
    }


def entry_from_traceback(text: str, *, attempt: int, worker_id: str, when: datetime) -> dict:
    """An entry for a failure known only by its formatted traceback (django-background-tasks'
    ``last_error``): the class and message are read off its last line."""
    last = next((line for line in reversed(text.strip().splitlines()) if line.strip()), "")
    match = re.match(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$", last)
    cls, message = (match.group(1), match.group(2) or "") if match else ("Exception", last)
    return {
        "attempt": attempt,
        "exception_class_path": clip(cls if "." in cls else f"builtins.{cls}", 300),
        "message": clip(message, MAX_MESSAGE),
        "traceback": clip(text, MAX_TRACEBACK),
        "worker_id": worker_id,
        "at": when.isoformat(),
    }
