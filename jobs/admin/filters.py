"""The job list's filters (besides status and date, Django's own): queue, backend, task, limit key.

Choices never come from a scan of the table: queues and tasks from a loose index scan
(``jobs.counts.distinct_values``, one probe per value), backends from settings. A new
filter on a column is a ``ColumnFilter`` with its choices, and one entry in
``JobAdmin.list_filter``.
"""

from __future__ import annotations

from django.contrib import admin

from ..counts import distinct_values
from ..models import JobLimit, JobStatus, QueueState
from ..stats import configured_queues, database_backends


def paused_queues(request) -> set[str]:
    """Names of paused queues, read once per request."""
    if not hasattr(request, "_jobs_paused"):
        request._jobs_paused = set(QueueState.objects.filter(paused=True).values_list("name", flat=True))
    return request._jobs_paused


RETRYING = "RETRYING"  # not a status: READY jobs waiting for another attempt after a failed one


class StatusFilter(admin.SimpleListFilter):
    """The statuses by name (``?status__exact=FAILED``, as Django's own filter), and "Retrying":
    READY after a failed attempt (attempts counted, so a requeued job, which starts again from
    zero, is not one). Read through ``jobs_job_retrying_idx``."""

    title = "status"
    parameter_name = "status__exact"

    def lookups(self, request, model_admin):
        choices = [(status.value, status.label) for status in JobStatus]
        choices.insert(1, (RETRYING, "Retrying"))
        return choices

    def queryset(self, request, queryset):
        value = self.value()
        if value == RETRYING:
            return queryset.retrying()
        return queryset.filter(status=value) if value else queryset


class ColumnFilter(admin.SimpleListFilter):
    """Jobs whose ``field`` equals the chosen value (``?<parameter_name>=value``); choices from ``lookups``."""

    field: str

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class QueueFilter(ColumnFilter):
    title = parameter_name = "queue"
    field = "queue_name"

    def lookups(self, request, model_admin):
        paused = paused_queues(request)
        names = sorted(set(configured_queues()) | set(distinct_values("queue_name")) | paused)
        return [(name, f"{name} (paused)" if name in paused else name) for name in names]


class BackendFilter(ColumnFilter):
    """Shown when several TASKS aliases store jobs here; the choices come from settings, not a query."""

    title = parameter_name = field = "backend"

    def lookups(self, request, model_admin):
        aliases = sorted(database_backends())
        return [(alias, alias) for alias in aliases] if len(aliases) > 1 else []


class TaskFilter(ColumnFilter):
    title = parameter_name = "task"
    field = "task_path"

    def lookups(self, request, model_admin):
        return [(name, name) for name in distinct_values("task_path")]


class ErrorClassFilter(ColumnFilter):
    """Jobs whose latest error is of one exception class (the failures page links here); shown
    only while in use, since its choices would be every class that ever failed."""

    title = "exception"
    parameter_name = field = "error_class"

    def lookups(self, request, model_admin):
        value = self.value()
        return [(value, value)] if value else []


class LimitKeyFilter(ColumnFilter):
    """Jobs of one concurrency (or rate) key; choices from the keys' own small table."""

    title = "limit key"
    parameter_name = "limit_key"
    field = "limit_key"

    def lookups(self, request, model_admin):
        return [(key, key) for key in JobLimit.objects.order_by("key").values_list("key", flat=True)[:200]]
