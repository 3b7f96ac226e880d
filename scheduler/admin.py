"""Schedules in the admin: what runs when, what the last run came to, an on/off switch, "Run now".

Two kinds of schedule. Those from ``SCHEDULED_JOBS``: the settings are the truth for
what they do, so only their switch and "Run now" are here. Those made here (by users
with ``scheduler.add_schedule``): their task is one of ``SCHEDULER_ADMIN_TASKS``, every
field is checked as a settings entry is (scheduler/forms.py), and they can be changed
and deleted. Running schedulers read the rows at every tick (at most 5 s apart), so a
change takes effect without a restart; the run rows' unique (schedule, fire time) keeps
each fire time to one job. Every change goes into the admin's history.
"""

from __future__ import annotations

from itertools import islice

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.db.models import OuterRef, Q, Subquery
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import ngettext

from jobs.templatetags.jobs_admin import status_label

from .conf import admin_tasks
from .cron import ONE_US, CronError, describe, get_zone
from .forms import AdminScheduleForm
from .models import Schedule, ScheduleRun
from .runner import run_now

RECENT_RUNS = 20
UPCOMING = 5  # next fire times shown on a schedule's page


def _job_url(job_id) -> str | None:
    try:
        return reverse("admin:jobs_job_change", args=[job_id])
    except NoReverseMatch:  # the jobs admin is not installed
        return None


def _local(schedule: Schedule, value) -> str:
    """A time in the schedule's own time zone, with the zone's abbreviation."""
    try:
        zone = get_zone(schedule.timezone)
    except CronError:
        zone = timezone.get_current_timezone()
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def until(value, now) -> str:
    """'in 42 seconds', 'in 3 hours, 5 minutes', or 'due now' (never 'in 0 minutes')."""
    seconds = (value - now).total_seconds()
    if seconds <= 0:
        return "due now"
    if seconds < 60:
        whole = max(int(seconds), 1)
        return f"in {whole} second{'s' if whole != 1 else ''}"
    return f"in {timeuntil(value, now)}"


def outcome_html(run_error: str, job_id, job_status: str | None, result_id: str = "", *, skipped: bool = False,
                 skip_reason: str = ""):
    """'Successful (job #12)' linked to the job, or why there is no job."""
    if skipped:  # overlap off: "Skipped: previous run (job #41) still running"
        return f"Skipped: {skip_reason}" if skip_reason else "Skipped"
    if run_error:
        return format_html('<span title="{}">Not enqueued</span>', run_error)
    if job_id is None:
        return f"Enqueued (result {result_id})" if result_id else "-"
    if job_status is None:
        return f"job #{job_id} (deleted)"
    label = f"{status_label(job_status)} (job #{job_id})"
    url = _job_url(job_id)
    return format_html('<a href="{}">{}</a>', url, label) if url else label


class LastRunSubqueries:
    """The latest run of each schedule, as annotations: one query for the whole list."""

    @staticmethod
    def annotate(queryset):
        latest = ScheduleRun.objects.filter(schedule=OuterRef("pk")).order_by("-enqueued_at", "-id")
        return queryset.annotate(
            last_run_fire_time=Subquery(latest.values("fire_time")[:1]),
            last_run_enqueued_at=Subquery(latest.values("enqueued_at")[:1]),
            last_run_job_id=Subquery(latest.values("job_id")[:1]),
            last_run_job_status=Subquery(latest.values("job__status")[:1]),
            last_run_error=Subquery(latest.values("error")[:1]),
            last_run_result_id=Subquery(latest.values("result_id")[:1]),
            last_run_skipped=Subquery(latest.values("skipped")[:1]),
            last_run_skip_reason=Subquery(latest.values("skip_reason")[:1]),
        )


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    list_display = ["name", "cron_display", "timezone", "next_run", "last_run", "enabled", "source"]
    change_form_template = "admin/scheduler/schedule/change_form.html"
    list_display_links = ["name"]
    list_editable = ["enabled"]
    list_filter = ["enabled", "in_settings", "made_in_admin", "queue_name", "misfire", "overlap"]
    search_fields = ["name", "task"]
    actions = ["run_now_action", "delete_selected"]
    fieldsets = [
        (None, {"fields": ["name", "enabled", "in_settings"]}),
        ("When", {"fields": ["cron", "cron_description", "timezone", "misfire", "overlap_display", "next_run",
                             "upcoming", "last_run"]}),
        ("What", {"fields": ["task", "args", "kwargs", "queue_name", "priority"]}),
        ("Recent runs", {"fields": ["recent_runs"]}),
    ]
    readonly_fields = ["name", "in_settings", "cron", "cron_description", "timezone", "misfire", "overlap_display",
                       "next_run", "upcoming", "last_run", "task", "args", "kwargs", "queue_name", "priority",
                       "recent_runs"]

    class Media:
        css = {"all": ["scheduler/admin.css"]}

    def get_queryset(self, request):
        return LastRunSubqueries.annotate(super().get_queryset(request))

    # -- schedules made here, and those from the settings ---------------------------------

    ADMIN_FIELDSETS = [
        (None, {"fields": ["name", "enabled"]}),
        ("When", {"fields": ["cron", "timezone", "misfire", "overlap"]}),
        ("What", {"fields": ["task", "args", "kwargs", "queue_name", "priority"]}),
    ]
    ADMIN_READONLY = ["cron_description", "next_run", "upcoming", "last_run", "recent_runs"]
    ADMIN_EDITABLE = ["enabled", "task", "cron", "timezone", "misfire", "overlap", "args", "kwargs", "queue_name",
                      "priority"]

    @staticmethod
    def made_here(obj) -> bool:
        return obj is None or obj.made_in_admin

    def get_fieldsets(self, request, obj=None):
        if not self.made_here(obj):
            return self.fieldsets
        if obj is None:
            return self.ADMIN_FIELDSETS
        return [(None, {"fields": ["name", "enabled", "source"]}),
                ("When", {"fields": ["cron", "cron_description", "timezone", "misfire", "overlap", "next_run",
                                     "upcoming", "last_run"]}),
                self.ADMIN_FIELDSETS[2], ("Recent runs", {"fields": ["recent_runs"]})]

    def get_readonly_fields(self, request, obj=None):
        if not self.made_here(obj):
            return self.readonly_fields
        return [*self.ADMIN_READONLY, "source"] if obj is not None else []

    def get_form(self, request, obj=None, change=False, **kwargs):
        if self.made_here(obj):
            kwargs["form"] = AdminScheduleForm
        return super().get_form(request, obj, change=change, **kwargs)

    def has_add_permission(self, request):
        # Only tasks listed in SCHEDULER_ADMIN_TASKS may be scheduled here: none listed, no add page.
        return bool(admin_tasks()) and super().has_add_permission(request)

    def has_delete_permission(self, request, obj=None):
        # Schedules made here, and entries gone from the settings; one still there would come back.
        if obj is None:
            return super().has_delete_permission(request, obj)
        return (obj.made_in_admin or not obj.in_settings) and super().has_delete_permission(request, obj)

    # Named as the site-wide action it replaces: settings entries are left out of the selection.
    @admin.action(permissions=["delete"], description="Delete selected schedules (made in the admin, or gone "
                                                       "from SCHEDULED_JOBS)")
    def delete_selected(self, request, queryset):
        from django.contrib.admin.actions import delete_selected

        return delete_selected(self, request, queryset.filter(Q(made_in_admin=True) | Q(in_settings=False)))

    def save_model(self, request, obj, form, change):
        now = timezone.now()
        if not self.made_here(obj if change else None):  # a SCHEDULED_JOBS entry: only the switch
            if "enabled" in form.changed_data:
                obj.switch(obj.enabled, now=now)
            return
        changed = set(form.changed_data)
        # New timing, new, or switched on: start from now, nothing to catch up on.
        if not change or changed & {"cron", "timezone"} or ("enabled" in changed and obj.enabled):
            obj.next_fire_at = obj.cron_schedule().next_after(now)
            changed.add("next_fire_at")
        if not change:
            obj.made_in_admin, obj.in_settings = True, False
            obj.save()
        else:  # only what the form changed: the scheduler's own columns are not written back
            obj.save(update_fields=sorted(changed & {*self.ADMIN_EDITABLE, "next_fire_at"}))

    @admin.display(description="Source")
    def source(self, obj):
        if obj.made_in_admin:
            return "Admin"
        return "SCHEDULED_JOBS" if obj.in_settings else "Gone from SCHEDULED_JOBS"

    # -- columns ---------------------------------------------------------------------

    @admin.display(description="Cron", ordering="cron")
    def cron_display(self, obj):
        return format_html('<code class="scheduler-cron">{}</code><br><small>{}</small>', obj.cron, describe(obj.cron))

    @admin.display(description="Overlap")
    def overlap_display(self, obj):
        if obj.overlap:
            return "Yes: a fire time runs even while the previous run's job is still waiting or running."
        return "No: a fire time is skipped while the previous run's job is still waiting or running."

    @admin.display(description="Next fire times")
    def upcoming(self, obj):
        """The next few fire times, in the schedule's time zone (the first one not yet handled first)."""
        if not obj.active:
            return "-"
        try:
            cron = obj.cron_schedule()
        except CronError as exc:
            return f"- ({exc})"
        start = obj.next_fire_at - ONE_US if obj.next_fire_at else timezone.now()
        return format_html('<ul class="scheduler-upcoming">{}</ul>', format_html_join(
            "", "<li>{}</li>", ((_local(obj, fire_time),) for fire_time in islice(cron.iter_after(start), UPCOMING))))

    @admin.display(description="Description")
    def cron_description(self, obj):
        return describe(obj.cron)

    @admin.display(description="Next run", ordering="next_fire_at")
    def next_run(self, obj):
        if not obj.in_settings and not obj.made_in_admin:
            return "- (not in settings)"
        if not obj.enabled:
            return "- (switched off)"
        if obj.next_fire_at is None:
            return "- (at the next scheduler start)"
        return format_html('<span class="scheduler-when">{}</span><br><small>{}</small>', _local(obj, obj.next_fire_at),
                           until(obj.next_fire_at, timezone.now()))

    @admin.display(description="Last run")
    def last_run(self, obj):
        enqueued_at = getattr(obj, "last_run_enqueued_at", None)
        if enqueued_at is None:
            return "-"
        fire_time = obj.last_run_fire_time
        when = _local(obj, fire_time) if fire_time else f"run now, {_local(obj, enqueued_at)}"
        outcome = outcome_html(obj.last_run_error, obj.last_run_job_id, obj.last_run_job_status,
                               obj.last_run_result_id, skipped=obj.last_run_skipped,
                               skip_reason=obj.last_run_skip_reason)
        return format_html('<span class="scheduler-when">{}</span><br><small>{} ago</small> &middot; {}', when,
                           timesince(enqueued_at), outcome)

    @admin.display(description="Recent runs")
    def recent_runs(self, obj):
        runs = list(obj.runs.select_related("job").order_by("-enqueued_at", "-id")[:RECENT_RUNS])
        if not runs:
            return "No runs yet."
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((_local(obj, run.fire_time) if run.fire_time else "run now", _local(obj, run.enqueued_at),
              run_outcome_html(run)) for run in runs),
        )
        return format_html("<table><thead><tr><th>Fire time</th><th>Enqueued</th><th>Outcome</th></tr></thead>"
                           "<tbody>{}</tbody></table>", rows)

    # -- actions ----------------------------------------------------------------------

    def get_urls(self):
        return [path("<path:object_id>/run-now/", self.admin_site.admin_view(self.run_now_view),
                     name="scheduler_schedule_run_now"), *super().get_urls()]

    def run_now_view(self, request, object_id):
        """The schedule page's "Run now" button: the list action, on this schedule."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        schedule = self.get_object(request, unquote(object_id))
        if schedule is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_change_permission(request, schedule):
            raise PermissionDenied
        self.report_runs(request, [run_now(schedule)])
        return HttpResponseRedirect(reverse("admin:scheduler_schedule_change", args=[schedule.pk]))

    @admin.action(permissions=["change"], description="Run now")
    def run_now_action(self, request, queryset):
        """One job per schedule; a schedule with overlap off is skipped while its previous job is unfinished."""
        self.report_runs(request, [run_now(schedule) for schedule in queryset])

    def report_runs(self, request, runs: list[ScheduleRun]) -> None:
        for run in runs:  # into the schedule's history, as every change made here
            outcome = ("skipped: " + run.skip_reason if run.skipped else f"not enqueued: {run.error}" if run.error
                       else f"enqueued job #{run.job_id}" if run.job_id else f"enqueued {run.result_id}")
            self.log_change(request, run.schedule, f"Run now: {outcome}")
        enqueued = [run for run in runs if not run.error and not run.skipped]
        if enqueued:
            self.message_user(request, ngettext("Enqueued %(count)d job.", "Enqueued %(count)d jobs.",
                                                len(enqueued)) % {"count": len(enqueued)}, messages.SUCCESS)
        for run in runs:
            if run.skipped:
                self.message_user(request, f"Not run for {run.schedule.name}: {run.skip_reason} (overlap is off "
                                           "for this schedule)", messages.WARNING)
            elif run.error:
                self.message_user(request, f"Not enqueued for {run.schedule.name}: {run.error}", messages.ERROR)


def run_outcome_html(run: ScheduleRun):
    """The outcome of one run (``job`` selected with it)."""
    return outcome_html(run.error, run.job_id, _job_status(run), run.result_id, skipped=run.skipped,
                        skip_reason=run.skip_reason)


def _job_status(run: ScheduleRun) -> str | None:
    if run.job_id is None:
        return None
    try:
        job = run.job
    except ObjectDoesNotExist:  # purged: no database constraint keeps it
        return None
    return job.status if job is not None else None


@admin.register(ScheduleRun)
class ScheduleRunAdmin(admin.ModelAdmin):
    """Every run, read-only: which fire time made which job."""

    list_display = ["schedule", "fire_time_display", "enqueued_display", "outcome"]
    list_filter = ["schedule", "skipped"]
    list_select_related = ["schedule", "job"]
    date_hierarchy = "enqueued_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Fire time", ordering="fire_time")
    def fire_time_display(self, obj):
        return _local(obj.schedule, obj.fire_time) if obj.fire_time else "run now"

    @admin.display(description="Enqueued", ordering="enqueued_at")
    def enqueued_display(self, obj):
        return _local(obj.schedule, obj.enqueued_at)

    @admin.display(description="Outcome")
    def outcome(self, obj):
        return run_outcome_html(obj)
