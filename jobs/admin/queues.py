"""The queue overview (shown as "Queues" on the admin index) and pausing or resuming a queue.

The page is the shared snapshot of ``jobs.stats`` (the one ``manage.py jobs_status`` and
the metrics view read, in a handful of index-bounded queries), plus the tasks failing
most and the throughput chart (jobs/admin/chart.py). Nothing is cached: the page shows
the database as it is. ``QueueState`` is the model it hangs on: a row per paused (or
once paused) queue. Whoever may see jobs may see the overview; pausing needs the change
permission on queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE
from django.core.exceptions import PermissionDenied
from django.db import router, transaction
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from .. import stats
from ..counts import EXACT_UP_TO, count
from ..history import log_actions
from ..models import Job, QueueState
from . import live
from .chart import Chart, throughput_chart
from .common import crumbs

TOP_FAILING = 10
REFRESH_SECONDS = (2, 300)  # the range of ?refresh= the page accepts
LIVE_SECONDS = 5  # the page refreshes itself in place this often (jobs/static/jobs/overview-live.js)


@dataclass
class Overview(stats.Snapshot):
    # READY after a failed attempt, waiting for the next one (the job list's "Retrying" filter),
    # counted through jobs_job_retrying_idx; whether that count is an estimate.
    retrying: int = 0
    retrying_estimated: bool = False
    tasks_hour: list | None = None  # live.TaskHour per task, busiest first
    queues_hour: list | None = None  # {"name", "ran", "failed", "per_minute"} per queue
    running: dict | None = None  # worker id -> the jobs it runs now
    lost: list | None = None  # workers silent for less than a day
    held_back: int = 0  # READY jobs whose key's concurrency or rate limit has no room now

    @property
    def workers_running(self) -> list[dict]:
        """Each live worker with the jobs it runs now."""
        running = self.running or {}
        return [{**w, "jobs": running.get(w["worker"].worker_id, [])} for w in self.workers]

    @property
    def top_failing(self) -> list[dict]:
        """The tasks failing most in the last 24 hours."""
        return self.failing[:TOP_FAILING]

    @property
    def chart(self) -> Chart:
        return throughput_chart(self.minutes)


def build(now: datetime) -> Overview:
    retrying, estimated = count(Job.objects.retrying())
    snapshot = stats.snapshot(now, keys=True)
    tasks_hour, queues_hour = live.last_hour(now)
    held = live.held_back_keys(snapshot.limit_keys, now)
    return Overview(**vars(snapshot), retrying=retrying, retrying_estimated=estimated, tasks_hour=tasks_hour,
                    queues_hour=queues_hour, running=live.running_by_worker(),
                    lost=live.lost_workers(now, snapshot.stale_after), held_back=held)


def refresh_seconds(value: str) -> str:
    """``?refresh=N`` when N is a number of seconds the page may reload every, else ""."""
    low, high = REFRESH_SECONDS
    return value if value.isascii() and value.isdigit() and low <= int(value) <= high else ""


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
        data = build(now)
        context = {
            **self.admin_site.each_context(request),
            "title": "Queues",
            "opts": self.opts,
            "overview": data,
            "totals": data.totals,
            "can_pause": self.has_change_permission(request),
            "jobs_url": reverse("admin:jobs_job_changelist"),
            "failures_url": reverse("admin:jobs_job_failures"),
            "pause_url": reverse("admin:jobs_queuestate_pause"),
            "refresh": refresh_seconds(request.GET.get("refresh", "")),
            "live_seconds": LIVE_SECONDS,
            "stale_after": data.stale_after,
            "exact_up_to": EXACT_UP_TO,
            "chart_start": now - timedelta(minutes=stats.THROUGHPUT_MINUTES),
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
            return HttpResponseRedirect(reverse("admin:jobs_queuestate_changelist"))
        with transaction.atomic(using=router.db_for_write(QueueState)):
            state, _ = QueueState.objects.update_or_create(name=name, defaults={
                "paused": paused, "changed_at": timezone.now(), "changed_by": request.user.get_username()})
            log_actions(request.user.pk, QueueState, [state], action_flag=CHANGE,
                        message="Paused" if paused else "Resumed")
        if paused:
            self.message_user(request, f"Queue {name} paused: workers stop claiming its jobs at their next poll. "
                                       "Running jobs finish.", messages.SUCCESS)
        else:
            self.message_user(request, f"Queue {name} resumed: workers claim its jobs again.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:jobs_queuestate_changelist"))
