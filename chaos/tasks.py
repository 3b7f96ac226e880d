"""The fault test's tasks. Each records its effect (``Effect``) when it reaches its end,
then returns or raises; ``token`` is the producer's name for the call (see chaos.load).
A batch's callbacks (``batch_succeeded``, ``batch_failed``, ``batch_finished``) take only
``batch_id``, as every callback does: the queue enqueues them, not the producer.
"""

import time

from django.utils import timezone

from jobs import cancel_requested, task

from .models import Begun, Effect


class PlannedFailure(Exception):
    """Raised on purpose; the checker expects it from ``flaky`` and ``doomed``."""


def _begun(context):
    """Record that this attempt began (see ``Begun``); returns its start, for ``_effect``."""
    result, started = context.task_result, timezone.now()
    Begun.objects.create(job_id=int(result.id), attempt=context.attempt, worker_id=result.worker_ids[-1],
                         started_at=started)
    return started


def _effect(context, started, *, raised: bool = False) -> None:
    result = context.task_result
    Effect.objects.create(job_id=int(result.id), attempt=context.attempt, worker_id=result.worker_ids[-1],
                          started_at=started, ended_at=timezone.now(), raised=raised)
    if raised:
        raise PlannedFailure(f"attempt {context.attempt} fails as planned")


@task(takes_context=True)
def quick(context, token):
    _effect(context, timezone.now())


@task(takes_context=True)
def slow(context, token, seconds):
    started = timezone.now()
    time.sleep(seconds)
    _effect(context, started)


@task(takes_context=True)
def flaky(context, token, failures):
    """Fails its first ``failures`` attempts, then succeeds."""
    _effect(context, timezone.now(), raised=context.attempt <= failures)


@task(takes_context=True)
def doomed(context, token):
    _effect(context, timezone.now(), raised=True)


@task(takes_context=True, timeout=1)
def overrun(context, token, seconds):
    """Overruns its 1 s timeout on the first attempt, then is quick."""
    started = timezone.now()
    if context.attempt == 1:
        time.sleep(seconds)
    _effect(context, started)


ACCOUNTS = 3  # concurrency keys of ``limited``
LIMIT = 2  # jobs of one account RUNNING at once, at most
SLOTS = 5  # unique keys of ``once``: few, so that enqueues meet a READY job of theirs often


@task(takes_context=True, concurrency_key=lambda token, account, seconds: f"account-{account}",
      concurrency_limit=LIMIT)
def limited(context, token, account, seconds):
    """A sync of one account: at most LIMIT of an account at once, over every host."""
    started = timezone.now()
    time.sleep(seconds)
    _effect(context, started)


STUCK_KEYS = 2  # concurrency keys of ``stuck``, each with limit 1


@task(takes_context=True, timeout=1, concurrency_key=lambda token, slot, seconds: f"stuck-{slot}",
      concurrency_limit=1)
def stuck(context, token, slot, seconds):
    """Blocks in one C call (time.sleep) past its 1 s timeout on its first attempt: the worker gives
    up on it while its code runs on, and must keep its key's place, and hold its retry, until the
    call returns. Records its effect however it ends, so the checker sees the whole run."""
    started = _begun(context)  # on a --processes host, its process may be ended before the finally
    try:
        time.sleep(seconds if context.attempt == 1 else 0.1)
    finally:  # the interrupt lands as the call returns: this still runs
        _effect(context, started)


# The ``hard`` kinds: only the hosts that run ``process_tasks --processes`` serve their queue
# (chaos.hosts), whose parent process heartbeats for its children and ends a process whose job
# ran past its timeout. Each records that it began: its process may be ended before its end.
# They are declared on the default queue, so that this module imports under any settings (the
# suite's, for tests/test_chaos_check.py); the producer enqueues them on HARD (chaos.mix).
HARD = "hard"
BLOCKED_KEYS = 2  # concurrency keys of ``blocked``, each with limit 1


def _hold_gil(seconds: float) -> None:
    """One C call that keeps the GIL for ``seconds`` (libc's usleep through ``ctypes.PyDLL``, which
    does not release it): no other thread of the process runs meanwhile, its heartbeat's included."""
    import ctypes

    ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))


@task(takes_context=True)
def gil(context, token, seconds):
    """Holds the GIL past stale_after: while its process lives (the parent beats for it) it must
    not be taken back, and it runs once per attempt."""
    started = _begun(context)
    _hold_gil(seconds)
    _effect(context, started)


@task(takes_context=True, timeout=2)
def gil_timeout(context, token, seconds):
    """Holds the GIL past its 2 s timeout on its first attempt: no interrupt reaches it, so its
    parent ends its process (the attempt timed out); the retry is quick."""
    started = _begun(context)
    _hold_gil(seconds if context.attempt == 1 else 0.1)
    _effect(context, started)


@task(takes_context=True, timeout=1, concurrency_key=lambda token, slot, seconds: f"blocked-{slot}",
      concurrency_limit=1)
def blocked(context, token, slot, seconds):
    """Blocked in one C call (time.sleep) well past its 1 s timeout, on its first attempt: its
    parent ends its process; the key is freed only then, so the retry never runs beside it."""
    started = _begun(context)
    time.sleep(seconds if context.attempt == 1 else 0.1)
    _effect(context, started)


@task(takes_context=True, unique=lambda token, slot: f"slot-{slot}")
def once(context, token, slot):
    """While a job of its slot is READY, an enqueue returns that job instead of a new one."""
    _effect(context, timezone.now())


@task(takes_context=True)
def cancellable(context, token, seconds):
    """Works ``seconds`` unless cancelled first (the producer cancels most of them); heeds the
    request within 50 ms and returns without an effect, as a well-behaved task does."""
    started = timezone.now()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancel_requested():
            return
        time.sleep(0.05)
    _effect(context, started)


@task(takes_context=True)
def batch_succeeded(context, batch_id):
    """A batch's on_success callback."""
    _effect(context, timezone.now())


@task(takes_context=True)
def batch_failed(context, batch_id):
    """A batch's on_failure callback."""
    _effect(context, timezone.now())


@task(takes_context=True)
def batch_finished(context, batch_id):
    """A batch's on_finish callback."""
    _effect(context, timezone.now())
