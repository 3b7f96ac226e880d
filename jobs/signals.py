"""Signals of this queue beyond Django's own ``task_enqueued``, ``task_started`` and ``task_finished``.

``job_failed`` is sent once per job that failed for good (FAILED, not retried), by
the worker that wrote that outcome, after the write: a job whose attempts are used
up, a task that raised ``DoNotRetry``, a row whose path is refused or whose row is
damaged, and the last attempt of a worker that was lost (sent by the worker that
took it back). An attempt that will be retried sends nothing, nor does an outcome
the database discarded because the attempt was no longer its worker's (another
worker took it back and reports it instead), nor a cancelled job.

Its keyword arguments:

``sender``
    The backend class (``jobs.backends.DatabaseBackend``), as for Django's signals.
``backend``
    The ``TASKS`` alias the job belongs to.
``job_id``
    The job's id (``int``); ``TaskResult.id`` is its text.
``task_path``
    The dotted path of its task, as stored.
``attempts``
    The attempts made, this last one included.
``error``
    The last attempt's error as stored in the job's history (a ``dict`` with
    ``attempt``, ``exception_class_path``, ``message``, ``traceback``, ``worker_id``, ``at``).
``exception``
    The exception itself (for a lost worker's attempt, a ``jobs.exceptions.WorkerLost``
    describing it; for a refused or damaged row, the ``JobError`` saying why).
``task_result``
    The job's ``TaskResult`` as ``get_result`` returns it now (FAILED, every error), or
    None when the row cannot be described as one (a path that is not a task, a row
    too damaged to read). It costs one query, made only when the signal has receivers.

Receivers run in the worker's main loop (or its liveness thread, for a take-back):
keep them quick, and hand slow work (a mail, an HTTP call) to something else, such
as a job of its own. A receiver that raises is logged and does not stop the worker
or the other receivers.
"""

from django.dispatch import Signal

job_failed = Signal()
