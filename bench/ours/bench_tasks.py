"""Tasks the benchmark enqueues into our queue (``bench_tasks`` is on the worker's PYTHONPATH)."""

import os

from benchcommon import write_stamp

from jobs import task

RECORD_FILE_ENV = "BENCH_RECORD_FILE"


@task
def noop():
    pass


@task
def stamp(token):
    write_stamp(token)


@task(takes_context=True)
def record(context):
    """W4: append this job's id to a shared file, one line per run (O_APPEND: whole lines, any process)."""
    line = f"{context.task_result.id}\n".encode()
    fd = os.open(os.environ[RECORD_FILE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@task(concurrency_key=lambda key: key, concurrency_limit=1)
def keyed(key):
    """W6: one of many jobs of an account whose key is at its limit (one RUNNING)."""


@task(takes_context=True)
def record_io(context):
    """W8: 50 ms of waiting (I/O: the GIL is free meanwhile), then ``record``."""
    import time

    time.sleep(0.05)
    record.func(context)


@task
def batch_stamp(batch_id):
    """W9: a batch's callback; records when it started (the token names the batch)."""
    write_stamp(f"callback-{batch_id}")
