"""What the admin shows of job control: why a READY job waits, the keys, progress.

A READY job with a limit key may be held back by it (its concurrency key at its limit,
or its rate used up); the list and the job page say which, read from the keys'
``JobLimit`` rows: one query for a whole page of the list.
"""

from __future__ import annotations

from django.utils import timezone
from django.utils.html import format_html

from ..limits import held_back, parse_rate
from ..models import JobDependency, JobLimit, JobStatus

PARENTS_NAMED = 3  # parents a "waiting for" reason names


def held_back_reasons(jobs) -> dict[int, str]:
    """{job id: why it waits} for the READY jobs among ``jobs`` that a limit holds back and the
    WAITING children among them (one query each)."""
    return {**waiting_reasons(jobs), **limited_reasons(jobs)}


def waiting_reasons(jobs) -> dict[int, str]:
    """{child id: "waiting for #3 (RUNNING), #5 (READY)"}: the parents it still waits for."""
    waiting = [job.pk for job in jobs if job.status == JobStatus.WAITING]
    if not waiting:
        return {}
    parents: dict[int, list[str]] = {}
    for child, parent, status in (JobDependency.objects.filter(child_id__in=waiting, satisfied=False)
                                  .order_by("child_id", "position").values_list("child_id", "parent_id",
                                                                                "parent__status")):
        parents.setdefault(child, []).append(f"#{parent} ({status})")
    reasons = {}
    for child, names in parents.items():
        more = f" and {len(names) - PARENTS_NAMED:,} more" if len(names) > PARENTS_NAMED else ""
        reasons[child] = f"waiting for its parent{'s' if len(names) > 1 else ''} {', '.join(names[:PARENTS_NAMED])}{more}"
    return reasons


def limited_reasons(jobs) -> dict[int, str]:
    """{job id: why it waits} for the READY jobs among ``jobs`` that a limit holds back (one query)."""
    keyed = [job for job in jobs if job.status == JobStatus.READY and getattr(job, "limit_key", None)]
    if not keyed:
        return {}
    rows = {row.key: row for row in JobLimit.objects.filter(key__in={job.limit_key for job in keyed})}
    now = timezone.now().timestamp()
    reasons = {}
    for job in keyed:
        row = rows.get(job.limit_key)
        try:
            rate = parse_rate(job.rate_limit) if job.rate_limit else None
        except ValueError:
            rate = None
        running = row.running if row else 0
        if isinstance(running, bool) or not isinstance(running, int) or running < 0:  # SQLite keeps any value
            reasons[job.pk] = f"waiting on key {job.limit_key}, whose row is damaged (running {str(running)[:60]!r})"
            continue
        starts = [s for s in (row.starts if row and isinstance(row.starts, list) else []) if isinstance(s, (int, float))]
        why = held_back(running=running, concurrency_limit=job.concurrency_limit, starts=starts, rate=rate, now=now)
        if why:
            reasons[job.pk] = f"held back by key {job.limit_key}: {why}"
    return reasons


def progress_bar(progress) -> str:
    """A job's progress as a small bar (with a percentage when the total is known), or ""."""
    if not isinstance(progress, dict) or not isinstance(progress.get("done"), (int, float)):
        return ""
    done, total, message = progress.get("done"), progress.get("total"), str(progress.get("message") or "")[:200]
    try:
        if isinstance(total, (int, float)) and total > 0:
            percent = max(0.0, min(100.0, 100.0 * done / total))
            return format_html('<span class="jobs-progress" title="{}"><span class="jobs-progress-bar" '
                               'style="width:{}%"></span></span> <span class="jobs-quiet">{}/{}</span>',
                               message, f"{percent:.0f}", f"{done:g}", f"{total:g}")
        return format_html('<span class="jobs-quiet" title="{}">{} done</span>', message, f"{done:g}")
    except (OverflowError, ValueError):  # a number no float holds (written past set_progress): show that
        return format_html('<span class="jobs-damaged" title="{}">damaged progress</span>', str(progress)[:200])
