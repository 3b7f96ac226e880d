"""The kinds of job the producer enqueues, and the final states each may end in.

A new kind is one line in ``KINDS``: its task, its share of the load, the keyword
arguments it is called with (drawn from the run's random generator), whether it may
end SUCCESSFUL, the errors it raises by design, the largest bulk call of it (slow
jobs come in small batches, or one batch would hold every worker for a minute), the
share of its jobs the producer cancels, and whether its enqueues may collapse into a
READY job of the same unique key.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from . import tasks

PLANNED = "chaos.tasks.PlannedFailure"
TIMEOUT = "jobs.exceptions.JobTimeout"
LOST = "jobs.exceptions.WorkerLost"
CANCELLED = "jobs.exceptions.JobCancelled"
# Failed attempts that a fault explains: a lost worker, or the task's own query cut off
# by a partition or a database restart.
FAULT_ERRORS = frozenset({LOST, "django.db.utils.OperationalError", "django.db.utils.InterfaceError"})


@dataclass(frozen=True)
class Kind:
    name: str
    task: object
    weight: int
    kwargs: Callable[[random.Random], dict] = field(default=lambda rng: {})
    succeeds: bool = True  # False: it must end FAILED, every attempt used
    planned: frozenset[str] = frozenset()  # error classes the task raises itself
    bulk: int = 100  # the most jobs of this kind in one enqueue_many call
    cancels: float = 0.0  # the share of its jobs the producer cancels, 0.1-3 s after enqueueing them
    due_in: float = 0.0  # seconds after enqueueing that its jobs are due (so that some cancels find them READY)
    queue: str = "default"  # the queue its jobs go to (the task itself is declared on the default one)

    @property
    def unique(self) -> bool:
        """Whether an enqueue may return a READY job of the same unique key instead of a new one."""
        return bool(getattr(self.task, "unique", False))


KINDS = (
    Kind("quick", tasks.quick, 60),
    Kind("slow", tasks.slow, 8, lambda rng: {"seconds": round(rng.uniform(1, 5), 2)}, bulk=10),
    Kind("flaky", tasks.flaky, 12, lambda rng: {"failures": rng.randint(1, 3)}, planned=frozenset({PLANNED})),
    Kind("doomed", tasks.doomed, 5, succeeds=False, planned=frozenset({PLANNED})),
    Kind("overrun", tasks.overrun, 5, lambda rng: {"seconds": 2.5}, planned=frozenset({TIMEOUT}), bulk=20),
    Kind("limited", tasks.limited, 6, lambda rng: {"account": rng.randint(1, tasks.ACCOUNTS),
                                                   "seconds": round(rng.uniform(0.2, 1.5), 2)}, bulk=10),
    Kind("stuck", tasks.stuck, 2, lambda rng: {"slot": rng.randint(1, tasks.STUCK_KEYS),
                                               "seconds": round(rng.uniform(1.3, 2), 2)},
         planned=frozenset({TIMEOUT}), bulk=5),
    Kind("unique", tasks.once, 5, lambda rng: {"slot": rng.randint(1, tasks.SLOTS)}, bulk=20),
    Kind("cancelled", tasks.cancellable, 4, lambda rng: {"seconds": round(rng.uniform(1, 4), 2)}, bulk=10,
         cancels=0.7, due_in=2.0, planned=frozenset({CANCELLED})),
    # The hard queue (only the --processes hosts serve it): past stale_after holding the GIL,
    # past a timeout holding the GIL, past a timeout blocked in C under a key of limit 1.
    Kind("gil", tasks.gil, 2, lambda rng: {"seconds": round(rng.uniform(4, 5), 2)}, bulk=3, queue=tasks.HARD),
    Kind("gil_timeout", tasks.gil_timeout, 1, lambda rng: {"seconds": 6}, planned=frozenset({TIMEOUT}), bulk=2,
         queue=tasks.HARD),
    Kind("blocked", tasks.blocked, 2, lambda rng: {"slot": rng.randint(1, tasks.BLOCKED_KEYS), "seconds": 6},
         planned=frozenset({TIMEOUT}), bulk=3, queue=tasks.HARD),
)
BY_NAME = {kind.name: kind for kind in KINDS}

# A batch's callbacks: enqueued by the queue (so without a token) when the batch's last member
# ends, each once, with the one keyword argument batch_id; never drawn by the producer.
CALLBACKS = (
    Kind("on_success", tasks.batch_succeeded, 0),
    Kind("on_failure", tasks.batch_failed, 0),
    Kind("on_finish", tasks.batch_finished, 0),
)
CALLBACK_BY_TASK_PATH = {kind.task.module_path: kind for kind in CALLBACKS}
BY_TASK_PATH = {kind.task.module_path: kind for kind in KINDS + CALLBACKS}

# The kinds batches and chains are made of, with their weights. No unique kind: a unique member
# could collapse into a READY job outside its batch, and a unique task cannot be a child.
BATCH_MEMBERS = {"quick": 6, "flaky": 3, "doomed": 1, "slow": 1, "limited": 1, "overrun": 1, "cancelled": 1}
BATCH_FINE = {"quick": 6, "flaky": 2, "slow": 1, "limited": 1}  # a batch meant to succeed (faults permitting)
BATCH_SIZE = (2, 20)
CHAIN_LINKS = {"quick": 6, "flaky": 2, "slow": 1, "overrun": 1, "limited": 1}
CHAIN_LENGTH = (2, 6)
# A link that fails for good (anywhere but last) or a root the producer may cancel: what
# follows it must end CANCELLED without running.
BROKEN_CHAINS = 0.3
FAN_IN = 0.3  # chains with a link that also waits for 1-2 jobs of their own (2-3 parents in all)
