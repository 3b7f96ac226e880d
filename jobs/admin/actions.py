"""What the admin changes: the list's bulk actions and the job page's one-job buttons.

Every change is one UPDATE or DELETE, however many rows are selected ("select all N"
included), plus one INSERT of the admin's history (jobs/history.py), in one
transaction: who did what to which jobs. Actions need Django's change (or delete)
permission, and every write is a POST through the admin's CSRF protection.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, DELETION
from django.db import router, transaction
from django.template.response import TemplateResponse
from django.urls import reverse

from ..control import MAX_REASON, cancel_ready, checked_reason, delete_jobs, request_cancel
from ..history import log_actions
from ..models import Job, JobStatus
from ..templatetags.jobs_admin import status_label
from .common import crumbs, plural_jobs

# What the admin's history says of a requeue and of "run now" (a cancel adds its reason).
REQUEUED = "Requeued: due now, attempts start again."
# "Requeue selected jobs" with "select all": jobs requeued per transaction, so that no lock is
# held on a whole group of failures at once. Writing a requeued row costs about 0.5 ms on
# PostgreSQL (its indexes, the errors' trigram index among them): ~100 ms per batch.
REQUEUE_BATCH = 200
MADE_DUE = "Made due now."
DEFAULT_CANCEL_REASON = "cancelled from the admin"


class JobActionForm(helpers.ActionForm):
    # No max_length here: Django drops an action whose form is invalid with only "No action
    # selected."; the cancel action refuses a reason over the cap itself, saying so.
    reason = forms.CharField(required=False, label="", widget=forms.TextInput(
        attrs={"placeholder": "Reason (for cancel)", "size": 22, "class": "jobs-reason", "maxlength": MAX_REASON}))


def record_change(request, change, message: str, action_flag: int = CHANGE) -> int:
    """Run ``change`` (it returns the jobs it changed) and log them in the admin's history, in one
    transaction; how many changed."""
    with transaction.atomic(using=router.db_for_write(Job)):
        changed = change()
        log_actions(request.user.pk, Job, changed, action_flag=action_flag, message=message)
    return len(changed)


def cancel_reason(modeladmin, request) -> str | None:
    """The reason typed for a cancel (or the default); None, the user told why, if over the cap."""
    reason = (request.POST.get("reason") or "").strip() or DEFAULT_CANCEL_REASON
    try:
        checked_reason(reason, request.user.get_username())
    except ValueError as exc:
        modeladmin.message_user(request, f"Nothing was cancelled: {exc}.", messages.ERROR)
        return None
    return reason


def selected_across(request) -> bool:
    return request.POST.get("select_across") in ("1", "True", "true", "on")


def requeue_in_batches(request, queryset, batch: int | None = None) -> int:
    """Requeue every job of ``queryset`` (a whole filtered list), newest first, ``batch`` jobs per
    transaction; how many were requeued.

    Each batch is a short keyset read of ids (below the last one seen), then one UPDATE of those
    ids and one INSERT of their entries in the admin's history (each job requeued gets its one
    entry), committed before the next batch: no lock is held on the whole group at once, workers
    claim and finish jobs throughout, and a failure half-way leaves the batches done requeued
    and recorded.
    """
    batch = batch or REQUEUE_BATCH
    by = request.user.get_username()
    ids = queryset.order_by("-pk").values_list("pk", flat=True)
    below, requeued = None, 0
    while True:
        chunk = list((ids if below is None else ids.filter(pk__lt=below))[:batch])
        if not chunk:
            return requeued
        requeued += record_change(request, lambda chunk=chunk: Job.objects.filter(pk__in=chunk).requeue(by=by),
                                  REQUEUED)
        below = chunk[-1]


def selected_count(request) -> tuple[int, bool]:
    """How many rows the action was asked to touch, and whether that number is exact."""
    changelist = getattr(request, "_jobs_changelist", None)  # set by JobAdmin.get_changelist_instance
    if selected_across(request) and changelist is not None:
        return changelist.result_count, not getattr(changelist.paginator, "count_is_estimate", False)
    return len(request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)), True


def report(modeladmin, request, changed: int, done: str, rule: str) -> None:
    """Say how many jobs changed and, when the selection is counted exactly, how many were left and why."""
    selected, exact = selected_count(request)
    modeladmin.message_user(request, done.format(plural_jobs(changed)),
                            messages.SUCCESS if changed else messages.WARNING)
    left = selected - changed
    if exact and left > 0:
        modeladmin.message_user(request, f"{plural_jobs(left).capitalize()} of the selection "
                                         f"{'was' if left == 1 else 'were'} left as "
                                         f"{'it was' if left == 1 else 'they were'}: {rule}", messages.WARNING)
    elif not exact and changed == 0:
        modeladmin.message_user(request, f"Nothing changed: {rule}", messages.WARNING)


# -- the list's actions ------------------------------------------------------------------

@admin.action(permissions=["change"], description="Requeue selected jobs")
def requeue_jobs(modeladmin, request, queryset):
    if selected_across(request):  # a whole filtered list: in batches
        changed = requeue_in_batches(request, queryset)
    else:
        changed = record_change(request, lambda: queryset.requeue(by=request.user.get_username()), REQUEUED)
    report(modeladmin, request, changed, "Requeued {} (due now, attempts start again).",
           "only failed, successful or cancelled jobs can be requeued; a running job belongs to "
           "its worker until its attempt ends, and a ready job is already queued.")


@admin.action(permissions=["change"], description="Cancel selected jobs")
def cancel_jobs(modeladmin, request, queryset):
    reason, by = cancel_reason(modeladmin, request), request.user.get_username()
    if reason is None:
        return
    asked: list = []

    def change():
        cancelled = cancel_ready(queryset, reason, by=by)
        asked.extend(request_cancel(queryset, reason, by=by))
        return cancelled + asked

    changed = record_change(request, change, f"Cancelled: {reason}")
    report(modeladmin, request, changed, "Cancelled {}: the ready ones will not run" + (
        f", and the workers of {plural_jobs(len(asked))} running were asked to stop them." if asked else "."),
           "only ready and running jobs can be cancelled (a running one whose cancel was asked already is "
           "left to its worker); a finished one has nothing left to cancel.")


@admin.action(permissions=["change"], description="Run selected jobs now")
def run_jobs_now(modeladmin, request, queryset):
    changed = record_change(request, queryset.run_now, MADE_DUE)
    report(modeladmin, request, changed, "Made {} due now.",
           "only ready jobs waiting for a later time (a delay or a retry) are moved forward; the "
           "others were already due, are running or have finished.")


# Named like the site-wide action it replaces, which would list every row before deleting.
@admin.action(permissions=["delete"], description="Delete selected jobs")
def delete_selected(modeladmin, request, queryset):
    if request.POST.get("post") == "yes":
        deleted = record_change(request, lambda: delete_jobs(queryset.exclude(status=JobStatus.RUNNING)), "",
                                action_flag=DELETION)
        report(modeladmin, request, deleted, "Deleted {}.", "running jobs are not deleted: their worker holds them.")
        return None
    selected, exact = selected_count(request)
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Delete jobs?",
        "opts": modeladmin.opts,
        "selected_count": selected,
        "count_is_exact": exact,
        "select_across": request.POST.get("select_across", "0"),
        "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "form_url": request.get_full_path(),
        **crumbs((reverse("admin:jobs_job_changelist"), "Jobs"), ("", "Delete jobs")),
    }
    return TemplateResponse(request, "admin/jobs/job/delete_jobs.html", context)


# -- the job page's buttons: the same changes, on one job --------------------------------

def _current_status(pk: int) -> str:
    status = Job.objects.filter(pk=pk).values_list("status", flat=True).first()
    return status_label(status).lower() if status else "gone"


def act_on_one(modeladmin, request, pk: int, verb: str) -> None:
    """Requeue, cancel or run now (``verb``) the job ``pk``, and say what came of it."""
    one = Job.objects.filter(pk=pk)
    by = request.user.get_username()
    say = modeladmin.message_user
    if verb == "requeue":
        if record_change(request, lambda: one.requeue(by=by), REQUEUED):
            say(request, f"Job #{pk} requeued: due now, attempts start again; its earlier errors stay below.",
                messages.SUCCESS)
        else:
            say(request, f"Job #{pk} was not requeued: it is {_current_status(pk)}, and only finished jobs can be "
                         "(a running job belongs to its worker until its attempt ends).", messages.WARNING)
    elif verb == "cancel":
        reason = cancel_reason(modeladmin, request)
        if reason is None:
            return
        if record_change(request, lambda: cancel_ready(one, reason, by=by), f"Cancelled: {reason}"):
            say(request, f"Job #{pk} cancelled: it will not run.", messages.SUCCESS)
        elif record_change(request, lambda: request_cancel(one, reason, by=by), f"Cancelled: {reason}"):
            say(request, f"Job #{pk} is running: its worker was asked to stop it (it hears within about a "
                         "second and is interrupted if it has not returned 10 s later).", messages.SUCCESS)
        else:
            say(request, f"Job #{pk} was not cancelled: it is {_current_status(pk)}, and only ready and running "
                         "jobs can be.", messages.WARNING)
    elif verb == "run-now":
        if record_change(request, one.run_now, MADE_DUE):
            say(request, f"Job #{pk} is due now.", messages.SUCCESS)
        else:
            say(request, f"Job #{pk} was not waiting for a later time.", messages.WARNING)
    else:
        raise ValueError(f"no such job action: {verb!r}")
