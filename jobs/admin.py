"""The jobs admin: the job list, the read-only job page, bulk actions, the queue overview.

Built to stay fast with millions of rows (PostgreSQL):

- no ``COUNT(*)`` over the table on a page view: ``show_full_result_count`` is off, and
  the filtered count is exact only up to ``EstimatedCountPaginator.exact_up_to`` rows
  (a count over a LIMIT), beyond which the planner's estimate is shown as "about N";
- filter choices come from a loose index scan (one index probe per distinct value), or
  from no query at all (status, date);
- every filter has an index that returns its rows newest first (see ``Job.Meta.indexes``);
- list rows read only the columns the list shows, plus the last error message taken
  out of the JSON in SQL: a constant number of queries whatever the number of rows;
- every action is one UPDATE or DELETE, however many rows are selected, "select all
  N" included.

Permissions are Django's: staff users with the model's view permission see jobs;
actions and the job page's buttons need the change (or delete) permission; pausing a
queue needs the change permission on queues. Every write is a POST through the
admin's CSRF protection.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta

import django
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, DELETION
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import router, transaction
from django.db.models import F, Func, TextField
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode

from . import counts, overview, search
from .backends import DatabaseBackend
from .counts import distinct_values
from .execution import attempt_limit
from .framework import task_backends
from .history import log_actions
from .models import FINISHED_STATUSES, Job, JobStatus, QueueState, UnreadableJSON, WorkerProcess
from .templatetags.jobs_admin import human_duration, relative, when

# Columns the list never shows; the job page reads the whole row. (The backend alias is read:
# the attempt limit shown depends on it.)
LIST_DEFERRED = ("args", "kwargs", "return_value", "errors", "meta", "worker_ids")
# What pages show of values that can be any size; the whole value is a download away.
LIST_ERROR_CHARS = 500  # of the last error's message, per row of the list
PAGE_VALUE_CHARS = 20_000  # of each JSON value on the job page
PAGE_ATTEMPTS = 50  # failed attempts shown on the job page, newest first
PAGE_TRACEBACK_LINES = 400
MAX_SEARCH_LENGTH = 200
# The JSON columns the job page offers as downloads.
DOWNLOADS = ("args", "kwargs", "return_value", "errors", "meta")


# What the admin's history says of a requeue and of "run now" (a cancel adds its reason).
REQUEUED = "Requeued: due now, attempts start again."
MADE_DUE = "Made due now."


# -- counting and choices without scanning the table ---------------------------------------

class EstimatedCountPaginator(Paginator):
    """Exact counts up to ``exact_up_to`` rows, the PostgreSQL planner's estimate above.

    The exact part is ``SELECT COUNT(*) FROM (SELECT id ... LIMIT n+1)``, so its cost
    is bounded whatever the table size. Other databases count exactly.
    """

    exact_up_to = counts.EXACT_UP_TO
    count_is_estimate = False

    @cached_property
    def count(self) -> int:
        number, self.count_is_estimate = counts.count(self.object_list, self.exact_up_to)
        return number


def paused_queues(request) -> set[str]:
    """Names of paused queues, read once per request."""
    if not hasattr(request, "_jobs_paused"):
        request._jobs_paused = set(QueueState.objects.filter(paused=True).values_list("name", flat=True))
    return request._jobs_paused


class LastErrorMessage(Func):
    """The message of a job's latest error, taken out of the JSON by the database."""

    output_field = TextField()

    def __init__(self):
        super().__init__(F("errors"))

    # Only the start of the message is read: the list shows a line of it.
    def as_postgresql(self, compiler, connection, **extra):
        return Func.as_sql(self, compiler, connection,
                           template=f"LEFT(%(expressions)s -> -1 ->> 'message', {LIST_ERROR_CHARS})", **extra)

    def as_sqlite(self, compiler, connection, **extra):
        return Func.as_sql(self, compiler, connection,
                           template=f"substr(json_extract(%(expressions)s, '$[#-1].message'), 1, {LIST_ERROR_CHARS})",
                           **extra)

    def as_mysql(self, compiler, connection, **extra):
        return Func.as_sql(self, compiler, connection,
                           template=f"LEFT(JSON_UNQUOTE(JSON_EXTRACT(%(expressions)s, '$[last].message')), "
                                    f"{LIST_ERROR_CHARS})", **extra)

    def as_sql(self, compiler, connection, **extra):
        return "NULL", []


# -- filters ---------------------------------------------------------------------------

class QueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"

    def lookups(self, request, model_admin):
        paused = paused_queues(request)
        names = sorted(set(overview.configured_queues()) | set(distinct_values("queue_name")) | paused)
        return [(name, f"{name} (paused)" if name in paused else name) for name in names]

    def queryset(self, request, queryset):
        return queryset.filter(queue_name=self.value()) if self.value() else queryset


class BackendFilter(admin.SimpleListFilter):
    """Shown when several TASKS aliases store jobs here; the choices come from settings, not a query."""

    title = "backend"
    parameter_name = "backend"

    def lookups(self, request, model_admin):
        aliases = sorted(overview.database_backends())
        return [(alias, alias) for alias in aliases] if len(aliases) > 1 else []

    def queryset(self, request, queryset):
        return queryset.filter(backend=self.value()) if self.value() else queryset


class TaskFilter(admin.SimpleListFilter):
    title = "task"
    parameter_name = "task"

    def lookups(self, request, model_admin):
        return [(name, name) for name in distinct_values("task_path")]

    def queryset(self, request, queryset):
        return queryset.filter(task_path=self.value()) if self.value() else queryset


class JobChangeList(ChangeList):
    def get_queryset(self, request, *args, **kwargs):
        queryset = super().get_queryset(request, *args, **kwargs)
        return queryset.defer(*LIST_DEFERRED).annotate(last_error=LastErrorMessage())


class JobActionForm(helpers.ActionForm):
    reason = forms.CharField(required=False, max_length=500, label="", widget=forms.TextInput(
        attrs={"placeholder": "Reason (for cancel)", "size": 22, "class": "jobs-reason"}))


# -- the jobs ----------------------------------------------------------------------------

@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "task_column", "queue_column", "priority", "status_column", "attempts_column",
                    "enqueued_column", "started_column", "finished_column", "duration_column")
    list_display_links = ("id",)
    list_filter = ("status", QueueFilter, BackendFilter, TaskFilter, ("enqueued_at", admin.DateFieldListFilter))
    search_fields = ("task_path",)  # the search itself is get_search_results below
    search_help_text = "Job id (#123), part of a task path, or text of an error message or traceback."
    ordering = ("-id",)
    sortable_by = ("id", "enqueued_column")
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts would scan the table once per choice
    paginator = EstimatedCountPaginator
    action_form = JobActionForm
    # Named like the site-wide action it replaces, which would list every row before deleting.
    actions = ["requeue_jobs", "cancel_jobs", "run_jobs_now", "delete_selected"]

    class Media:
        css = {"all": ["jobs/admin.css"]}

    # -- permissions: jobs are made by code, never through a form --

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # A running attempt belongs to its worker: not deleted from here (the actions skip them too).
        if obj is not None and obj.status == JobStatus.RUNNING:
            return False
        return super().has_delete_permission(request, obj)

    def get_changelist(self, request, **kwargs):
        return JobChangeList

    def get_changelist_instance(self, request):
        request._jobs_changelist = changelist = super().get_changelist_instance(request)
        return changelist

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()[:MAX_SEARCH_LENGTH]  # longer patterns only cost the database time
        if not term:
            return queryset, False
        number = term.lstrip("#")
        if number.isascii() and number.isdigit() and len(number) <= 18:  # "²" is a digit to str.isdigit()
            return queryset.filter(pk=int(number)), False
        return search.text_search(queryset, term), False

    def changelist_view(self, request, extra_context=None):
        extra_context = {"title": "Jobs", **(extra_context or {}), "paused_queues": sorted(paused_queues(request)),
                         "overview_url": reverse("admin:jobs_queuestate_changelist")}
        return super().changelist_view(request, extra_context)

    # -- list columns: all from the row itself, no query per row --

    @admin.display(description="task")
    def task_column(self, job):
        module, _, name = job.task_path.rpartition(".")
        url = job_url(job.pk)
        error = ""
        if job.last_error and job.status in (JobStatus.FAILED, JobStatus.READY):
            text = job.last_error if len(job.last_error) <= 140 else job.last_error[:139] + "…"
            # The title (a tooltip) holds the start of the message: LastErrorMessage reads no more.
            error = format_html('<div class="jobs-error-line" title="{}">{}</div>', job.last_error, text)
        return format_html('<a class="jobs-task" href="{}" title="{}">{}</a> <span class="jobs-module">{}</span>{}',
                           url, job.task_path, name, module, error)

    @admin.display(description="queue")
    def queue_column(self, job):
        return job.queue_name

    @admin.display(description="status")
    def status_column(self, job):
        badge = status_badge(job.status)
        note = ""
        if job.status == JobStatus.READY and job.run_after > timezone.now():
            note = ("retry " if job.attempts else "") + relative(job.run_after)
        if note:
            return format_html('{} <span class="jobs-note">{}</span>', badge, note)
        return badge

    @admin.display(description="attempts")
    def attempts_column(self, job):
        css = "jobs-attempts jobs-attempts--retried" if job.attempts > 1 else "jobs-attempts"
        return format_html('<span class="{}">{}<span class="jobs-of"> / {}</span></span>', css, job.attempts,
                           attempt_limit_of(job))

    @admin.display(description="enqueued", ordering="id")
    def enqueued_column(self, job):
        return when(job.enqueued_at)

    @admin.display(description="started")
    def started_column(self, job):
        return when(job.last_attempted_at) if job.last_attempted_at else when(None)

    @admin.display(description="finished")
    def finished_column(self, job):
        return when(job.finished_at)

    @admin.display(description="duration")
    def duration_column(self, job):
        if job.status in (JobStatus.SUCCESSFUL, JobStatus.FAILED) and job.finished_at and job.last_attempted_at:
            return human_duration(job.finished_at - job.last_attempted_at)
        if job.status == JobStatus.RUNNING and job.last_attempted_at:
            return format_html('<span class="jobs-quiet">{}…</span>',
                               human_duration(timezone.now() - job.last_attempted_at))
        return when(None)

    # -- actions: one statement each, whatever the number of rows, plus one INSERT of history --

    def _change(self, request, change, message: str, action_flag: int = CHANGE) -> int:
        """Run ``change`` (it returns the jobs it changed) and record them in the admin's history,
        in one transaction: who did what to which jobs."""
        with transaction.atomic(using=router.db_for_write(Job)):
            changed = change()
            log_actions(request.user.pk, Job, changed, action_flag=action_flag, message=message)
        return len(changed)

    @admin.action(permissions=["change"], description="Requeue selected jobs")
    def requeue_jobs(self, request, queryset):
        changed = self._change(request, lambda: queryset.requeue(by=request.user.get_username()), REQUEUED)
        self._report(request, changed, "Requeued {} (due now, attempts start again).",
                     "only failed, successful or cancelled jobs can be requeued; a running job belongs to "
                     "its worker until its attempt ends, and a ready job is already queued.")

    @admin.action(permissions=["change"], description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        reason = (request.POST.get("reason") or "").strip() or "cancelled from the admin"
        changed = self._change(request, lambda: queryset.cancel(reason, by=request.user.get_username()),
                               f"Cancelled: {reason}")
        self._report(request, changed, "Cancelled {}: they will not run.",
                     "only ready jobs can be cancelled; a running job cannot be stopped from here, and a "
                     "finished one has nothing left to cancel.")

    @admin.action(permissions=["change"], description="Run selected jobs now")
    def run_jobs_now(self, request, queryset):
        changed = self._change(request, queryset.run_now, MADE_DUE)
        self._report(request, changed, "Made {} due now.",
                     "only ready jobs waiting for a later time (a delay or a retry) are moved forward; the "
                     "others were already due, are running or have finished.")

    @admin.action(permissions=["delete"], description="Delete selected jobs")
    def delete_selected(self, request, queryset):
        selected, exact = self._selected(request)
        if request.POST.get("post") == "yes":
            deleted = self._change(request, lambda: queryset.exclude(status=JobStatus.RUNNING).delete_jobs(), "",
                                   action_flag=DELETION)
            self._report(request, deleted, "Deleted {}.", "running jobs are not deleted: their worker holds them.")
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Delete jobs?",
            "opts": self.opts,
            "selected_count": selected,
            "count_is_exact": exact,
            "select_across": request.POST.get("select_across", "0"),
            "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "form_url": request.get_full_path(),
            **crumbs((reverse("admin:jobs_job_changelist"), "Jobs"), ("", "Delete jobs")),
        }
        return TemplateResponse(request, "admin/jobs/job/delete_jobs.html", context)

    def _selected(self, request) -> tuple[int, bool]:
        """How many rows the action was asked to touch, and whether that number is exact."""
        changelist = getattr(request, "_jobs_changelist", None)
        if request.POST.get("select_across") in ("1", "True", "true", "on") and changelist is not None:
            return changelist.result_count, not getattr(changelist.paginator, "count_is_estimate", False)
        return len(request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)), True

    def _report(self, request, changed: int, done: str, rule: str) -> None:
        selected, exact = self._selected(request)
        self.message_user(request, done.format(plural_jobs(changed)), messages.SUCCESS if changed else messages.WARNING)
        left = selected - changed
        if exact and left > 0:
            self.message_user(request, f"{plural_jobs(left).capitalize()} of the selection "
                                       f"{'was' if left == 1 else 'were'} left as "
                                       f"{'it was' if left == 1 else 'they were'}: {rule}", messages.WARNING)
        elif not exact and changed == 0:
            self.message_user(request, f"Nothing changed: {rule}", messages.WARNING)

    # -- the job page: read-only, with buttons that POST one-row actions --

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
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
        body = value if isinstance(value, UnreadableJSON) else _json(value)
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
        one = Job.objects.filter(pk=job.pk)
        by = request.user.get_username()
        if verb == "requeue":
            if self._change(request, lambda: one.requeue(by=by), REQUEUED):
                self.message_user(request, f"Job #{job.pk} requeued: due now, attempts start again; "
                                           "its earlier errors stay below.", messages.SUCCESS)
            else:
                self.message_user(request, f"Job #{job.pk} was not requeued: it is {current_status(job.pk)}, "
                                           "and only finished jobs can be (a running job belongs to its "
                                           "worker until its attempt ends).", messages.WARNING)
        elif verb == "cancel":
            reason = (request.POST.get("reason") or "").strip() or "cancelled from the admin"
            if self._change(request, lambda: one.cancel(reason, by=by), f"Cancelled: {reason}"):
                self.message_user(request, f"Job #{job.pk} cancelled: it will not run.", messages.SUCCESS)
            else:
                self.message_user(request, f"Job #{job.pk} was not cancelled: it is {current_status(job.pk)}, "
                                           "and only ready jobs can be.", messages.WARNING)
        elif self._change(request, one.run_now, MADE_DUE):
            self.message_user(request, f"Job #{job.pk} is due now.", messages.SUCCESS)
        else:
            self.message_user(request, f"Job #{job.pk} was not waiting for a later time.", messages.WARNING)
        return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.pk]))


@functools.lru_cache(maxsize=16)
def _job_url_pattern(prefix: str, urlconf) -> str:
    return reverse("admin:jobs_job_change", args=["__pk__"])


def job_url(pk: int) -> str:
    """A job page's URL, without a ``reverse()`` per row of the list."""
    return _job_url_pattern(get_script_prefix(), get_urlconf()).replace("__pk__", str(pk))


def crumbs(*trail: tuple[str, str]) -> dict:
    """Breadcrumbs from the admin index to this page; the last has no link."""
    home = [(reverse("admin:index"), "Home"), (reverse("admin:app_list", args=["jobs"]), "Jobs")]
    return {"crumbs": [*home, *trail], "crumbs_as_list": django.VERSION >= (6, 0)}


def plural_jobs(n: int) -> str:
    return f"{n:,} job" if n == 1 else f"{n:,} jobs"


def attempt_limit_of(job: Job) -> int | str:
    """The attempt limit a worker of the job's backend alias applies to it now ("?" without one)."""
    try:
        backend = task_backends[job.backend]
    except Exception:  # an alias no longer in TASKS: no worker serves it
        return job.max_attempts or "?"
    if not isinstance(backend, DatabaseBackend):
        return job.max_attempts or "?"
    return attempt_limit(job, backend)


def current_status(pk: int) -> str:
    status = Job.objects.filter(pk=pk).values_list("status", flat=True).first()
    return JobStatus(status).label.lower() if status else "gone"


def status_badge(status: str):
    try:
        label = JobStatus(status).label
    except ValueError:
        label = status
    return format_html('<span class="jobs-badge jobs-badge--{}">{}</span>', status.lower(), label)


# -- what the job page shows -------------------------------------------------------------

def _parse_time(value) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, timezone.get_current_timezone())


def _json(value) -> str:
    if isinstance(value, UnreadableJSON):  # a damaged row: say so rather than pretend
        return f"<{value}>"
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def shown(text: str, limit: int = PAGE_VALUE_CHARS) -> dict:
    """What a page shows of ``text``: its start, and whether (and by how much) it was cut."""
    return {"text": text[:limit], "cut": max(len(text) - limit, 0)}


def call_signature(job: Job) -> str:
    """The call as Python would read it: ``send_mail('a@b.c', retries=2)``."""
    if not isinstance(job.args, list) or not isinstance(job.kwargs, dict):
        return f"{job.task_name}(<arguments unreadable as stored>)"
    parts = []
    for value in [*job.args, *job.kwargs.values()]:
        parts.append(json.dumps(value, ensure_ascii=False)[:400])
        if sum(map(len, parts)) > 400:
            break
    names = [""] * len(job.args) + [f"{k}=" for k in job.kwargs]
    text = f"{job.task_name}({', '.join(name + part for name, part in zip(names, parts))})"
    return text if len(text) <= 400 else text[:399] + "…"


def traceback_lines(text: str) -> list[tuple[str, str]]:
    """Each traceback line with a class: where it happened, the code, the exception."""
    lines = (text if isinstance(text, str) else "").rstrip("\n").split("\n")
    if len(lines) > PAGE_TRACEBACK_LINES:  # the end says what went wrong: keep it
        cut = len(lines) - PAGE_TRACEBACK_LINES
        lines = [*lines[:20], f"[... {cut:,} lines cut: download the errors for all of it ...]",
                 *lines[-(PAGE_TRACEBACK_LINES - 20):]]
    last_exception = max((i for i, line in enumerate(lines) if line and not line.startswith(" ")), default=-1)
    out = []
    for i, line in enumerate(lines):
        if line.startswith('  File "'):
            kind = "file"
        elif line.startswith("Traceback") or line.startswith("During handling") or line.startswith(
                "The above exception"):
            kind = "head"
        elif i == last_exception or (line and not line.startswith(" ")):
            kind = "exc"
        else:
            kind = "code"
        out.append((kind, line))
    return out


def job_page(job: Job) -> dict:
    now = timezone.now()
    meta = job.meta if isinstance(job.meta, dict) else {}
    requeued = meta.get("requeued") if isinstance(meta.get("requeued"), dict) else None
    cancelled = meta.get("cancelled") if isinstance(meta.get("cancelled"), dict) else None
    requeued_at = _parse_time(requeued.get("at")) if requeued else None

    attempts = []
    errors = job.errors if isinstance(job.errors, list) else []
    for index, error in enumerate(errors[-PAGE_ATTEMPTS:], start=max(len(errors) - PAGE_ATTEMPTS, 0)):
        if not isinstance(error, dict):
            continue
        path_ = error.get("exception_class_path", "")
        at = _parse_time(error.get("at"))
        attempts.append({
            "number": error.get("attempt", index + 1),
            "exception": path_.rpartition(".")[2] or path_,
            "exception_path": path_,
            "message": error.get("message", ""),
            "at": at,
            "worker": error.get("worker_id", ""),
            "lines": traceback_lines(error.get("traceback", "")),
            "earlier_run": bool(requeued_at and at and at <= requeued_at),
        })
    attempts.reverse()  # newest first: what went wrong last is what one wants to read

    events = [{"at": job.enqueued_at, "kind": "enqueued", "label": "Enqueued",
               "detail": f"queue {job.queue_name}, priority {job.priority}"}]
    for attempt in attempts:
        if attempt["at"]:
            events.append({"at": attempt["at"], "kind": "failed", "label": f"Attempt {attempt['number']} failed",
                           "detail": f"{attempt['exception']}: {attempt['message']}"[:200],
                           "worker": attempt["worker"]})
    if requeued_at:
        events.append({"at": requeued_at, "kind": "requeued", "label": "Requeued",
                       "detail": f"by {requeued.get('by')}" if requeued.get("by") else ""})
    if cancelled and _parse_time(cancelled.get("at")):
        by = f" (by {cancelled.get('by')})" if cancelled.get("by") else ""
        events.append({"at": _parse_time(cancelled.get("at")), "kind": "cancelled", "label": "Cancelled",
                       "detail": f"{cancelled.get('reason', '')}{by}"})
    if job.started_at and job.started_at != job.last_attempted_at:
        events.append({"at": job.started_at, "kind": "started", "label": "Attempt 1 started", "detail": ""})
    if job.last_attempted_at:
        events.append({"at": job.last_attempted_at, "kind": "started", "label": f"Attempt {job.attempts} started",
                       "detail": "", "worker": job.worker_id})
    if job.status == JobStatus.RUNNING and job.heartbeat_at:
        events.append({"at": job.heartbeat_at, "kind": "running", "label": "Last heartbeat",
                       "detail": "the worker is running it", "worker": job.worker_id})
    if job.finished_at and job.status == JobStatus.SUCCESSFUL:
        took = f", in {human_duration(job.finished_at - job.last_attempted_at)}" if job.last_attempted_at else ""
        events.append({"at": job.finished_at, "kind": "successful", "label": "Succeeded",
                       "detail": f"attempt {job.attempts}{took}"})
    elif job.finished_at and job.status == JobStatus.FAILED:
        events.append({"at": job.finished_at, "kind": "failed-final", "label": "Failed for good",
                       "detail": f"after {job.attempts} of {attempt_limit_of(job)} attempts"})
    if job.status == JobStatus.READY:
        due = job.run_after
        events.append({"at": due, "kind": "due", "label": "Due" if due <= now else "Due " + relative(due),
                       "detail": "waiting for a worker" if due <= now else
                       ("retry after backoff" if job.attempts else "delayed")})
    events.sort(key=lambda e: e["at"])
    for event in events:
        offset = (event["at"] - job.enqueued_at).total_seconds()
        event["offset"] = "" if event["kind"] == "enqueued" else (
            "+" + human_duration(offset) if offset >= 0 else "−" + human_duration(-offset))

    origin = {"kind": "code", "extra": {}}
    known = {"requeued", "cancelled", "schedule_run", "manual"}
    if meta.get("schedule"):
        origin = {"kind": "schedule", "name": meta["schedule"], "fire_time": _parse_time(meta.get("fire_time")),
                  "manual": bool(meta.get("manual"))}
        try:  # by URL name only: jobs does not import the scheduler app
            origin["url"] = reverse("admin:scheduler_schedule_changelist") + "?" + urlencode({"q": meta["schedule"]})
            if isinstance(meta.get("schedule_run"), int):
                origin["run_url"] = reverse("admin:scheduler_schedulerun_change", args=[meta["schedule_run"]])
        except NoReverseMatch:
            origin["url"] = ""
        known |= {"schedule", "fire_time"}
    elif meta.get("verbose_name") or meta.get("creator"):
        creator = meta.get("creator")
        if isinstance(creator, dict):
            creator = creator.get("repr") or f"{creator.get('content_type')} #{creator.get('object_id')}"
        origin = {"kind": "compat", "verbose_name": meta.get("verbose_name"), "creator": creator}
        known |= {"verbose_name", "creator"}
    other_meta = {k: v for k, v in meta.items() if k not in known}

    worker = None
    if job.worker_id:
        process = WorkerProcess.objects.filter(pk=job.worker_id).first()
        if process is not None:
            worker = {"process": process, "alive": process.is_alive(now, overview.stale_after()),
                      "heartbeat_age": (now - process.heartbeat_at).total_seconds()}

    duration = None
    if job.finished_at and job.last_attempted_at and job.status != JobStatus.CANCELLED:
        duration = job.finished_at - job.last_attempted_at
    return {
        "attempts_list": attempts,
        "events": events,
        "origin": origin,
        "other_meta": shown(_json(other_meta)) if other_meta else None,
        "cancelled": cancelled,
        "requeued": requeued,
        "requeued_at": requeued_at,
        "call": call_signature(job),
        "args_json": shown(_json(job.args)),
        "kwargs_json": shown(_json(job.kwargs)),
        "return_json": shown(_json(job.return_value)) if job.status == JobStatus.SUCCESSFUL else None,
        "attempts_hidden": max(len(errors) - PAGE_ATTEMPTS, 0),
        "downloads": {field: reverse("admin:jobs_job_download", args=[job.pk, field]) for field in DOWNLOADS},
        "worker": worker,
        "attempt_workers": list(dict.fromkeys([*(job.worker_ids if isinstance(job.worker_ids, list) else []),
                                               *([job.worker_id] if job.worker_id else [])])),
        "duration": duration,
        "wait": (job.started_at - job.enqueued_at) if job.started_at else None,
        "is_due_later": job.status == JobStatus.READY and job.run_after > now,
        "can_requeue": job.status in FINISHED_STATUSES,
        "can_cancel": job.status == JobStatus.READY,
        "badge": status_badge(job.status),
        "changelist_url": reverse("admin:jobs_job_changelist"),
        "attempt_limit": attempt_limit_of(job),
    }


# -- queues: the overview, pause and resume ------------------------------------------------

@admin.register(QueueState)
class QueueStateAdmin(admin.ModelAdmin):
    """Shown as "Queues" on the admin index; its page is the overview of every queue."""

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        # The overview is about jobs: whoever may see jobs may see it.
        jobs_admin = self.admin_site.get_model_admin(Job)
        return super().has_view_permission(request, obj) or jobs_admin.has_view_or_change_permission(request)

    def get_urls(self):
        return [path("pause/", self.admin_site.admin_view(self.pause_view), name="jobs_queuestate_pause"),
                *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return HttpResponseRedirect(reverse("admin:jobs_queuestate_changelist"))

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        data = overview.build(now)
        refresh = request.GET.get("refresh", "")
        context = {
            **self.admin_site.each_context(request),
            "title": "Queues",
            "opts": self.opts,
            "overview": data,
            "totals": data.totals,
            "can_pause": self.has_change_permission(request),
            "jobs_url": reverse("admin:jobs_job_changelist"),
            "pause_url": reverse("admin:jobs_queuestate_pause"),
            "refresh": refresh if refresh.isdigit() and 2 <= int(refresh) <= 300 else "",
            "stale_after": data.stale_after,
            "exact_up_to": counts.EXACT_UP_TO,
            "chart_start": now - timedelta(minutes=overview.CHART_MINUTES),
            **crumbs(("", "Queues")),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/jobs/queuestate/overview.html", context)

    def pause_view(self, request):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        name = (request.POST.get("name") or "").strip()
        paused = request.POST.get("paused") == "1"
        if not name or len(name) > QueueState._meta.get_field("name").max_length:
            self.message_user(request, "No such queue.", messages.ERROR)
        else:
            with transaction.atomic(using=router.db_for_write(QueueState)):
                state, _ = QueueState.objects.update_or_create(name=name, defaults={
                    "paused": paused, "changed_at": timezone.now(), "changed_by": request.user.get_username()})
                log_actions(request.user.pk, QueueState, [state], action_flag=CHANGE,
                            message="Paused" if paused else "Resumed")
            if paused:
                self.message_user(request, f"Queue {name} paused: workers stop claiming its jobs at their next "
                                           "poll. Running jobs finish.", messages.SUCCESS)
            else:
                self.message_user(request, f"Queue {name} resumed: workers claim its jobs again.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:jobs_queuestate_changelist"))
