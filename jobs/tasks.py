"""Tasks that come with the queue. Enable pruning as a schedule in settings:

    SCHEDULED_JOBS = {"prune-jobs": {"task": "jobs.tasks.prune_jobs", "cron": "17 * * * *"}}
"""

from django.utils import timezone

from .decorators import task
from .framework import task_backends


@task
def prune_jobs(backend: str = "default") -> dict:
    """Delete the ``backend`` alias's old finished jobs, kept as long as its OPTIONS ``retain_*`` say."""
    from .pruning import prune

    options = task_backends[backend].jobs_options
    return prune(now=timezone.now(), backend=backend, retain_successful=options.retain_successful,
                 retain_failed=options.retain_failed)
