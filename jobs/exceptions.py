"""Errors the queue itself records on a job; their dotted paths end up in
``TaskResult.errors``, so they must stay importable under these names."""


class JobError(Exception):
    """Base class for failures that come from the queue, not from the task."""


class TaskNotFound(JobError):
    """The job's task path does not import. Never retried: a retry cannot fix it."""


class NotATask(JobError):
    """The job's path names something that is not a declared task (say ``os.system``).

    Never run and never retried: whoever can write a row must not be able to run
    arbitrary code.
    """


class TaskNotAllowed(NotATask):
    """The job's path lies outside every installed app and ``JOBS_TASK_MODULES`` (or names a
    ``__main__`` module): refused without importing anything."""


class DamagedJob(JobError):
    """The job's row cannot be decoded or run as stored (arguments that are not a list and a
    dict, numbers past Python's limits, a missing field): it fails alone, never retried."""


class TransactionLeftOpen(JobError):
    """The task returned (or raised) with a database transaction still open; the worker rolled
    it back, so whatever the task wrote in it is gone."""


class JobTimeout(JobError, TimeoutError):
    """An attempt ran longer than its task's ``timeout``."""


class JobCancelled(JobError):
    """The job was cancelled (``jobs.cancel``) while it ran, or before its claimed attempt began."""


class ParentDidNotSucceed(JobError):
    """A child of ``jobs.enqueue_after`` was cancelled without running: a parent failed, was
    cancelled or was deleted (the error's message names it)."""


class WorkerLost(JobError):
    """The worker running the attempt stopped heartbeating (killed, host lost)."""


class ResultNotSerialisable(JobError, TypeError):
    """The task returned something that JSON cannot hold."""


class DoNotRetry(Exception):  # noqa: N818  (a verdict, not an error kind)
    """Raise it (or a subclass) from a task: the job ends FAILED at once, not retried.

    ``jobs.compat.InvalidTaskError`` is one, as django-background-tasks' was.
    """


# Failures that a retry cannot mend: the job ends FAILED at once.
PERMANENT = (TaskNotFound, NotATask, DamagedJob, JobCancelled)
