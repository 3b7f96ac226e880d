"""The jobs admin: the job list and the read-only job page (``JobAdmin``), the queue overview
(``QueueStateAdmin``). Importing this package registers both, as admin autodiscovery expects.

One module per page or concern:

- ``jobs.py``: ``JobAdmin``, the list's configuration and the job page's views;
- ``columns.py``, ``filters.py``, ``changelist.py``: the list's columns, its filters, and
  what it reads (deferred columns, the last error in SQL, bounded counts, search);
- ``actions.py``: bulk actions and the job page's one-job buttons, each one statement
  plus one INSERT of history;
- ``job_page.py``: what the job page shows (origins come from ``jobs.origins``);
- ``batches.py``: the batches' pages (counts, callbacks, members) and cancelling a batch;
- ``queues.py``, ``chart.py``: the overview, pause and resume, the throughput chart's geometry;
- ``common.py``: breadcrumbs, status labels and badges, job URLs, JSON as shown.

Counting lives in ``jobs.counts`` and ``jobs.stats``, shared with ``jobs_status`` and metrics.
"""

from .batches import JobBatchAdmin
from .jobs import JobAdmin
from .queues import QueueStateAdmin

__all__ = ["JobAdmin", "JobBatchAdmin", "QueueStateAdmin"]
