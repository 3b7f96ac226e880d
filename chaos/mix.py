"""The kinds of job the producer enqueues, and the final states each may end in.

A new kind is one line in ``KINDS``: its task, its share of the load, the keyword
arguments it is called with (drawn from the run's random generator), whether it may
end SUCCESSFUL, the errors it raises by design, and the largest bulk call of it (slow
jobs come in small batches, or one batch would hold every worker for a minute).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from . import tasks

PLANNED = "chaos.tasks.PlannedFailure"
TIMEOUT = "jobs.exceptions.JobTimeout"
LOST = "jobs.exceptions.WorkerLost"
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


KINDS = (
    Kind("quick", tasks.quick, 60),
    Kind("slow", tasks.slow, 8, lambda rng: {"seconds": round(rng.uniform(1, 5), 2)}, bulk=10),
    Kind("flaky", tasks.flaky, 12, lambda rng: {"failures": rng.randint(1, 3)}, planned=frozenset({PLANNED})),
    Kind("doomed", tasks.doomed, 5, succeeds=False, planned=frozenset({PLANNED})),
    Kind("overrun", tasks.overrun, 5, lambda rng: {"seconds": 2.5}, planned=frozenset({TIMEOUT}), bulk=20),
)
BY_NAME = {kind.name: kind for kind in KINDS}
BY_TASK_PATH = {kind.task.module_path: kind for kind in KINDS}
