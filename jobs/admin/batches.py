"""The batches' pages: each batch's counts and state, its callbacks and their jobs, its members.

A batch's counts are read from its row (each member's end added one, ``jobs.settle``):
the list costs one query per page however many members the batches have. Its members
are the job list filtered on ``batch_id``. Cancelling a batch cancels its members that
have not started (READY, and children still waiting), recorded in the job history.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from ..control import cancel_ready
from ..models import NOT_STARTED, Job, JobBatch
from .actions import cancel_reason, record_change
from .common import job_url


@admin.register(JobBatch)
class JobBatchAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "state", "total", "successful", "failed", "cancelled", "members_link")
    list_filter = (("finished_at", admin.EmptyFieldListFilter),)
    search_fields = ("=id",)
    ordering = ("-created_at",)
    actions = ["cancel_members"]
    fields = ("id", "state", "created_at", "sealed_at", "finished_at", "total", "successful", "failed", "cancelled",
              "members_link", "on_success", "on_failure", "on_finish", "callback_jobs")
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # counts are the members' to write; the page is read-only

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # pruning's; a batch's members need it until it finishes

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("jobs.change_job")  # as cancelling jobs from the job list

    @admin.display(description="State")
    def state(self, batch: JobBatch) -> str:
        if batch.finished_at:
            outcome = "succeeded" if not (batch.failed or batch.cancelled) else "failed"
            return f"finished: {outcome}"
        if batch.sealed_at is None:
            return "being enqueued"
        return f"running ({max(batch.total - batch.successful - batch.failed - batch.cancelled, 0):,} pending)"

    @admin.display(description="Members")
    def members_link(self, batch: JobBatch):
        return format_html('<a href="{}?batch_id={}">members</a>', reverse("admin:jobs_job_changelist"), batch.pk)

    @admin.display(description="Callback jobs")
    def callback_jobs(self, batch: JobBatch):
        entries = batch.callbacks if isinstance(batch.callbacks, list) else []
        if not entries:
            return "none yet" if not batch.finished_at else "none"
        return format_html_join(
            ", ", "{}", ((format_html('<a href="{}">#{}</a> <code>{}</code>', job_url(entry["job"]), entry["job"],
                                      entry.get("task", "")) if isinstance(entry.get("job"), int)
                          else format_html("<code>{}</code>: not enqueued ({})", entry.get("task", "?"),
                                           entry.get("error", "")),) for entry in entries if isinstance(entry, dict)))

    @admin.action(description="Cancel the members that have not started", permissions=["cancel"])
    def cancel_members(self, request, queryset):
        reason = cancel_reason(self, request)
        if reason is None:
            return
        by = request.user.get_username()
        ids = list(queryset.values_list("pk", flat=True))
        cancelled = record_change(
            request, lambda: cancel_ready(Job.objects.filter(batch_id__in=ids, status__in=NOT_STARTED), reason, by=by),
            f"Cancelled with its batch: {reason}")
        self.message_user(request, f"Cancelled {cancelled:,} job{'s' if cancelled != 1 else ''} of "
                                   f"{len(ids):,} batch{'es' if len(ids) != 1 else ''}.", messages.SUCCESS)
