"""``JobAdmin``: the job list (its columns, filters, search and actions) and the read-only job page.

The parts live in their own modules: columns.py, filters.py, changelist.py (what the
list reads and how it counts and searches), actions.py, job_page.py (what the job page
shows). Jobs are made by code, never through a form: there is no add page, and the
job page is read-only, with buttons that POST one-job actions.

Permissions are Django's: staff users with the model's view permission see jobs;
actions and the job page's buttons need the change (or delete) permission.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from ..models import Job, JobStatus, UnreadableJSON
from . import actions, columns
from .changelist import EstimatedCountPaginator, JobChangeList, search_jobs
from .common import as_json, crumbs
from .damage import readable
from .failures import failure_groups
from .filters import (
    BackendFilter,
    ErrorClassFilter,
    LimitKeyFilter,
    QueueFilter,
    StatusFilter,
    TaskFilter,
    paused_queues,
)
from .job_page import DOWNLOADS, job_page


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", columns.task_column, columns.queue_column, "priority", columns.status_column,
                    columns.attempts_column, columns.progress_column, columns.enqueued_column,
                    columns.started_column, columns.finished_column, columns.duration_column)
    list_display_links = ("id",)
    list_filter = (StatusFilter, QueueFilter, BackendFilter, TaskFilter, ErrorClassFilter, LimitKeyFilter,
                   ("enqueued_at", admin.DateFieldListFilter))
    search_fields = ("task_path",)  # the search itself is get_search_results below
    search_help_text = "Job id (#123), part of a task path, or text of an error message or traceback."
    ordering = ("-id",)
    sortable_by = ("id", columns.enqueued_column)
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts would scan the table once per choice
    paginator = EstimatedCountPaginator
    action_form = actions.JobActionForm
    actions = [actions.requeue_jobs, actions.cancel_jobs, actions.run_jobs_now, actions.delete_selected]

    class Media:
        css = {"all": ["jobs/admin.css"]}

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # A running attempt belongs to its worker: not deleted from here (the actions skip them too).
        if obj is not None and obj.status == JobStatus.RUNNING:
            return False
        return super().has_delete_permission(request, obj)

    # -- the list --

    def get_queryset(self, request):
        # Every value a row holds renders: a damaged one reads as empty and is named (jobs/admin/damage.py).
        return readable(super().get_queryset(request))

    def get_changelist(self, request, **kwargs):
        return JobChangeList

    def get_changelist_instance(self, request):
        # Kept for the actions: "select all N" reports against the list's own count (actions.selected_count).
        request._jobs_changelist = changelist = super().get_changelist_instance(request)
        return changelist

    def get_search_results(self, request, queryset, search_term):
        return search_jobs(queryset, search_term), False

    def changelist_view(self, request, extra_context=None):
        extra_context = {"title": "Jobs", **(extra_context or {}), "paused_queues": sorted(paused_queues(request)),
                         "overview_url": reverse("admin:jobs_queuestate_changelist"),
                         "failures_url": reverse("admin:jobs_job_failures")}
        return super().changelist_view(request, extra_context)

    def failures_view(self, request):
        """Failed jobs grouped by task and exception class (jobs/admin/failures.py)."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        now = timezone.now()
        context = {
            **self.admin_site.each_context(request),
            "title": "Failures by cause",
            "opts": self.opts,
            "now": now,
            "groups": failure_groups(now),
            "jobs_url": reverse("admin:jobs_job_changelist"),
            "overview_url": reverse("admin:jobs_queuestate_changelist"),
            **crumbs((reverse("admin:jobs_job_changelist"), "Jobs"), ("", "Failures by cause")),
        }
        return TemplateResponse(request, "admin/jobs/job/failures.html", context)

    # -- the job page --

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("failures/", view(self.failures_view), name="jobs_job_failures"),
            path("<path:object_id>/requeue/", view(self.job_action_view), {"verb": "requeue"},
                 name="jobs_job_requeue"),
            path("<path:object_id>/cancel/", view(self.job_action_view), {"verb": "cancel"}, name="jobs_job_cancel"),
            path("<path:object_id>/run-now/", view(self.job_action_view), {"verb": "run-now"},
                 name="jobs_job_run_now"),
            path("<path:object_id>/download/<str:field>.json", view(self.download_view), name="jobs_job_download"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        job = self.get_object(request, unquote(object_id))
        if job is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_or_change_permission(request, job):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": f"Job #{job.pk}",
            "subtitle": job.task_path,
            "opts": self.opts,
            "original": job,
            "job": job,
            "has_view_permission": True,
            "has_change_permission": self.has_change_permission(request, job),
            "has_delete_permission": self.has_delete_permission(request, job),
            **job_page(job),
            **crumbs((reverse("admin:jobs_job_changelist"), "Jobs"), ("", f"#{job.pk} {job.task_name}")),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/jobs/job/detail.html", context)

    def download_view(self, request, object_id, field):
        """One JSON value of the job, whole, as a file: the page shows only its start."""
        if field not in DOWNLOADS:
            raise Http404(f"no such value: {field}")
        job = self.get_object(request, unquote(object_id))
        if job is None or not self.has_view_or_change_permission(request, job):
            raise PermissionDenied
        value = getattr(job, field)
        body = value if isinstance(value, UnreadableJSON) else as_json(value)
        response = HttpResponse(body, content_type="application/json; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="job-{job.pk}-{field}.json"'
        return response

    def job_action_view(self, request, object_id, verb):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self.get_object(request, unquote(object_id))
        if job is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_change_permission(request, job):
            raise PermissionDenied
        actions.act_on_one(self, request, job.pk, verb)
        return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.pk]))
