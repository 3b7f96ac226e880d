"""The admin's text search: part of a task path, or text of a job's errors (messages, tracebacks).

A ``LIKE '%term%'`` over every row reads the whole table (0.4-0.9 s at a million
jobs on PostgreSQL). Here neither half does:

- task paths are few (they are code): the distinct ones come from a loose index scan
  (one probe each, ``jobs.counts.distinct_values``), are matched in Python, and the
  rows are found through ``jobs_job_task_idx``;
- error text is matched only in jobs that have errors, with the expression that the
  trigram index of migration 0004 holds on PostgreSQL (``UPPER(errors::text)``,
  partial on ``errors <> '[]'``), so the planner answers it from that index. Jobs that
  never failed have no error text and are not in the index at all, so enqueueing and
  finishing jobs cost nothing more. Without the index (SQLite, or a database user
  that could not create ``pg_trgm``) the same query reads every row, as before.
"""

from __future__ import annotations

from django.db.models import Q

from .counts import distinct_values

MAX_TASK_PATHS = 10_000  # distinct task paths looked at; a site has tens


def matching_task_paths(term: str) -> list[str]:
    """The task paths that contain ``term``, ignoring case."""
    needle = term.casefold()
    return [path for path in distinct_values("task_path", limit=MAX_TASK_PATHS) if needle in path.casefold()]


def text_search(queryset, term: str):
    """Jobs whose task path or error text contains ``term``, ignoring case (``%`` and ``_`` are literal)."""
    return queryset.filter(Q(task_path__in=matching_task_paths(term)) | (~Q(errors=[]) & Q(errors__icontains=term)))
