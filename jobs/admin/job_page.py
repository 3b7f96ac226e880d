"""The read-only job page's view model: what ``JobAdmin.change_view`` hands its template.

Everything is read from the row itself, plus the worker's heartbeat row: the page's
queries stay few whatever the job holds. Values of any size are cut to their start
(the whole is a download away), tracebacks to their first and last lines.

Where the job came from is said by the app that enqueued it, through the renderers it
registered in ``jobs.origins``; the meta keys no renderer consumed (and that the page
does not show elsewhere) are shown as they are, under "Meta". A new section of the
page is one function here, one key in ``job_page()`` and its block in
``admin/jobs/job/detail.html``.
"""

from __future__ import annotations

import json
from datetime import datetime

from django.urls import reverse
from django.utils import timezone

from ..models import FINISHED_STATUSES, NOT_STARTED, Job, JobBatch, JobDependency, JobStatus, WorkerProcess
from ..origins import Origin, consumed_keys, origins_of
from ..stats import stale_after
from ..templatetags.jobs_admin import human_duration, relative
from .common import as_json, attempt_limit_of, job_url, status_badge
from .control import held_back_reasons, progress_bar

PAGE_VALUE_CHARS = 20_000  # of each JSON value
PAGE_ATTEMPTS = 50  # failed attempts shown, newest first
PAGE_TRACEBACK_LINES = 400
CALL_CHARS = 400
# The JSON columns the page offers as downloads.
DOWNLOADS = ("args", "kwargs", "return_value", "errors", "meta")
# The meta keys jobs itself writes (models.py): the callouts and the timeline show them.
OWN_META = frozenset({"requeued", "cancelled"})


def parse_time(value) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, timezone.get_current_timezone())


def shown(text: str, limit: int = PAGE_VALUE_CHARS) -> dict:
    """What a page shows of ``text``: its start, and whether (and by how much) it was cut."""
    return {"text": text[:limit], "cut": max(len(text) - limit, 0)}


def call_signature(job: Job) -> str:
    """The call as Python would read it: ``send_mail('a@b.c', retries=2)``."""
    if not isinstance(job.args, list) or not isinstance(job.kwargs, dict):
        return f"{job.task_name}(<arguments unreadable as stored>)"
    parts = []
    for value in [*job.args, *job.kwargs.values()]:
        parts.append(json.dumps(value, ensure_ascii=False)[:CALL_CHARS])
        if sum(map(len, parts)) > CALL_CHARS:
            break
    names = [""] * len(job.args) + [f"{k}=" for k in job.kwargs]
    text = f"{job.task_name}({', '.join(name + part for name, part in zip(names, parts))})"
    return text if len(text) <= CALL_CHARS else text[:CALL_CHARS - 1] + "…"


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
        elif line.startswith(("Traceback", "During handling", "The above exception")):
            kind = "head"
        elif i == last_exception or (line and not line.startswith(" ")):
            kind = "exc"
        else:
            kind = "code"
        out.append((kind, line))
    return out


def failed_attempts(errors: list, requeued_at: datetime | None) -> list[dict]:
    """The last ``PAGE_ATTEMPTS`` errors, newest first: what went wrong last is what one wants to read."""
    attempts = []
    for index, error in enumerate(errors[-PAGE_ATTEMPTS:], start=max(len(errors) - PAGE_ATTEMPTS, 0)):
        if not isinstance(error, dict):
            continue
        path = error.get("exception_class_path", "")
        at = parse_time(error.get("at"))
        attempts.append({
            "number": error.get("attempt", index + 1),
            "exception": path.rpartition(".")[2] or path,
            "exception_path": path,
            "message": error.get("message", ""),
            "at": at,
            "worker": error.get("worker_id", ""),
            "lines": traceback_lines(error.get("traceback", "")),
            "earlier_run": bool(requeued_at and at and at <= requeued_at),
        })
    attempts.reverse()
    return attempts


def timeline(job: Job, attempts: list[dict], requeued: dict | None, cancelled: dict | None,
             now: datetime) -> list[dict]:
    """What happened to the job, oldest first, each with its offset from the enqueue."""
    events = [{"at": job.enqueued_at, "kind": "enqueued", "label": "Enqueued",
               "detail": f"queue {job.queue_name}, priority {job.priority}"}]
    for attempt in attempts:
        if attempt["at"]:
            events.append({"at": attempt["at"], "kind": "failed", "label": f"Attempt {attempt['number']} failed",
                           "detail": f"{attempt['exception']}: {attempt['message']}"[:200],
                           "worker": attempt["worker"]})
    requeued_at = parse_time(requeued.get("at")) if requeued else None
    if requeued_at:
        events.append({"at": requeued_at, "kind": "requeued", "label": "Requeued",
                       "detail": f"by {requeued.get('by')}" if requeued.get("by") else ""})
    cancelled_at = parse_time(cancelled.get("at")) if cancelled else None
    if cancelled_at:
        by = f" (by {cancelled.get('by')})" if cancelled.get("by") else ""
        late = cancel_too_late(job, cancelled, requeued_at)
        events.append({"at": cancelled_at, "kind": "cancelled",
                       "label": "Cancel asked, too late" if late else "Cancelled",
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
    if job.status == JobStatus.READY and job.run_after:
        due = job.run_after
        events.append({"at": due, "kind": "due", "label": "Due" if due <= now else "Due " + relative(due),
                       "detail": "waiting for a worker" if due <= now else
                       ("retry after backoff" if job.attempts else "delayed")})
    events = sorted((e for e in events if e["at"] is not None), key=lambda e: e["at"])  # a damaged time: no event
    for event in events:
        if job.enqueued_at is None:
            event["offset"] = ""
            continue
        offset = (event["at"] - job.enqueued_at).total_seconds()
        event["offset"] = "" if event["kind"] == "enqueued" else (
            "+" + human_duration(offset) if offset >= 0 else "−" + human_duration(-offset))
    return events


def cancel_too_late(job: Job, cancelled: dict | None, requeued_at: datetime | None) -> datetime | None:
    """When a cancel was asked of the job's last run, if that run ended SUCCESSFUL all the same (its
    attempt returned without having seen the request); None otherwise."""
    at = parse_time(cancelled.get("at")) if cancelled and cancelled.get("while") == "running" else None
    if job.status != JobStatus.SUCCESSFUL or at is None or (requeued_at is not None and at <= requeued_at):
        return None
    return at


def origins_and_other_meta(meta: dict) -> tuple[list[Origin], dict]:
    """What the registered renderers say of the meta, and the keys none of them (nor the page) shows."""
    origins = origins_of(meta)
    shown_elsewhere = OWN_META | consumed_keys(origins)
    return origins, {key: value for key, value in meta.items() if key not in shown_elsewhere}


def worker_of(job: Job, now: datetime) -> dict | None:
    """The heartbeat row of the worker running (or last running) the job, while it exists."""
    if not job.worker_id:
        return None
    process = WorkerProcess.objects.filter(pk=job.worker_id).first()
    if process is None:
        return None
    return {"process": process, "alive": process.is_alive(now, stale_after()),
            "heartbeat_age": (now - process.heartbeat_at).total_seconds()}


RELATIVES_SHOWN = 50  # parents and children listed on a job page


def family(job: Job) -> dict:
    """The job's batch, its parents and its children, with their states (a few small queries)."""
    batch = JobBatch.objects.filter(pk=job.batch_id).first() if job.batch_id else None
    links = JobDependency.objects
    parents = list(links.filter(child_id=job.pk).order_by("position").values_list(
        "parent_id", "parent__task_path", "parent__status")[:RELATIVES_SHOWN])
    children = list(links.filter(parent_id=job.pk).order_by("child_id").values_list(
        "child_id", "child__task_path", "child__status")[:RELATIVES_SHOWN]) if job.has_dependents else []
    return {
        "batch": batch,
        "batch_url": reverse("admin:jobs_jobbatch_change", args=[batch.pk]) if batch else "",
        "batch_members_url": f"{reverse('admin:jobs_job_changelist')}?batch_id={job.batch_id}" if job.batch_id else "",
        "parents": [{"pk": pk, "task": task, "badge": status_badge(status), "url": job_url(pk)}
                    for pk, task, status in parents],
        "children": [{"pk": pk, "task": task, "badge": status_badge(status), "url": job_url(pk)}
                     for pk, task, status in children],
    }


def _dict_or_none(value) -> dict | None:
    return value if isinstance(value, dict) else None


def job_page(job: Job) -> dict:
    now = timezone.now()
    meta = job.meta if isinstance(job.meta, dict) else {}
    requeued, cancelled = _dict_or_none(meta.get("requeued")), _dict_or_none(meta.get("cancelled"))
    requeued_at = parse_time(requeued.get("at")) if requeued else None
    errors = job.errors if isinstance(job.errors, list) else []
    attempts = failed_attempts(errors, requeued_at)
    origins, other_meta = origins_and_other_meta(meta)
    duration = None
    if job.finished_at and job.last_attempted_at and job.status != JobStatus.CANCELLED:
        duration = job.finished_at - job.last_attempted_at
    return {
        "attempts_list": attempts,
        "attempts_hidden": max(len(errors) - PAGE_ATTEMPTS, 0),
        "events": timeline(job, attempts, requeued, cancelled, now),
        "origins": origins,
        "other_meta": shown(as_json(other_meta)) if other_meta else None,
        "cancelled": cancelled,
        "cancel_too_late": cancel_too_late(job, cancelled, requeued_at),
        "requeued": requeued,
        "requeued_at": requeued_at,
        "call": call_signature(job),
        "args_json": shown(as_json(job.args)),
        "kwargs_json": shown(as_json(job.kwargs)),
        "return_json": shown(as_json(job.return_value)) if job.status == JobStatus.SUCCESSFUL else None,
        "downloads": {field: reverse("admin:jobs_job_download", args=[job.pk, field]) for field in DOWNLOADS},
        "worker": worker_of(job, now),
        "attempt_workers": list(dict.fromkeys([*(job.worker_ids if isinstance(job.worker_ids, list) else []),
                                               *([job.worker_id] if job.worker_id else [])])),
        "duration": duration,
        "wait": (job.started_at - job.enqueued_at) if job.started_at and job.enqueued_at else None,
        "is_due_later": job.status == JobStatus.READY and bool(job.run_after) and job.run_after > now,
        "damage": getattr(job, "damage", []),  # values the row holds that are none (jobs/admin/damage.py)
        "can_requeue": job.status in FINISHED_STATUSES,
        "can_cancel": job.status in NOT_STARTED or (job.status == JobStatus.RUNNING
                                                         and not job.cancel_requested_at),
        "held_back": held_back_reasons([job]).get(job.pk, ""),
        "progress_bar": progress_bar(job.progress),
        "family": family(job),
        "keys": [(label, value) for label, value in (
            ("Unique key", job.unique_key), ("Limit key", job.limit_key),
            ("Concurrency limit", job.concurrency_limit), ("Rate limit", job.rate_limit)) if value],
        "badge": status_badge(job.status),
        "changelist_url": reverse("admin:jobs_job_changelist"),
        "attempt_limit": attempt_limit_of(job),
    }
