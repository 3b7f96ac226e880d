"""Tasks declared with ``jobs.compat.background``, for the compat tests.

Each run appends a JSON line to the file named by its ``path`` argument, so runs
can be counted across processes.
"""

import json
import os

from jobs.compat import background


def _record(path, task, *args, **kwargs):
    line = json.dumps({"task": task, "args": list(args), "kwargs": kwargs}, sort_keys=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@background
def notify(path, user_id, message="hello"):
    _record(path, "notify", user_id, message=message)
    return object()  # django-background-tasks ignored return values: not JSON must not fail the job


@background(schedule=60)
def later(path, token):
    _record(path, "later", token)


@background(name="custom.cleanup", queue="emails", schedule={"priority": 7})
def cleanup(path, token):
    _record(path, "cleanup", token)


@background(remove_existing_tasks=True)
def refresh(path, key):
    _record(path, "refresh", key)


@background
def shout(text):
    """Prints, for ``process_tasks --log-std``."""
    print(f"shouting {text}")
    return text.upper()


@background
def fails(path, token):
    _record(path, "fails", token)
    raise RuntimeError(f"failing on purpose: {token}")


@background
def ordered(path, token):
    _record(path, "ordered", token)


def plain(x):
    return x


aliased = background(plain)  # not importable as tests.bgtasks_tasks.plain's task: refused at enqueue


@background
def invalid(path, token):
    """Raises django-background-tasks' "do not reschedule" error."""
    from jobs.compat import InvalidTaskError

    _record(path, "invalid", token)
    raise InvalidTaskError(f"cannot be done: {token}")
