"""The tick: turn due fire times into jobs, exactly once each; and the loop around it.

``tick(now)`` takes the time as a parameter, so tests drive it with any clock.
For each active schedule whose next fire time has come, in one transaction: lock
the schedule row (``SKIP LOCKED``: another scheduler has it in hand), decide which
fire times to run (the misfire policy), and for each insert the run row and
enqueue the job through the task's own Django Tasks API. The run row is unique on
(schedule, fire time), so even schedulers that do not see each other's locks
(SQLite without IMMEDIATE transactions, a stale read) cannot enqueue a tick twice.
A schedule with ``overlap`` off first asks whether its previous run's job is still
READY or RUNNING; if so the fire time's row is written marked skipped, and no job.

The loop sleeps on ``stop.wait()`` until the next fire time of any schedule (at
most ``recheck`` seconds, to notice schedules switched on in the admin), so it
never spins and wakes at a fire time, not a poll interval after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.models import Subquery
from django.utils import timezone

from jobs.models import Job, JobStatus

from .conf import admin_tasks
from .cron import ONE_US, CronError, CronSchedule, get_zone
from .models import Misfire, Schedule, ScheduleRun
from .origin import job_meta
from .sync import sync_schedules

logger = logging.getLogger(__name__)

# A fire time older than this when a scheduler gets to it was missed (the
# scheduler was down): the schedule's misfire policy decides what runs.
MISFIRE_GRACE = timedelta(seconds=30)
# misfire="all" runs at most this many missed fire times (the latest ones).
MISFIRE_ALL_CAP = 100
# The longest sleep, so that a schedule switched on in the admin is noticed soon.
RECHECK_INTERVAL = 5.0
# Run rows kept per schedule (the newest); older ones are pruned hourly.
KEEP_RUNS = 1000
PRUNE_INTERVAL = 3600.0


def plan(cron: CronSchedule, pending: datetime, now: datetime, *, misfire: str,
         grace: timedelta = MISFIRE_GRACE, cap: int = MISFIRE_ALL_CAP) -> list[datetime]:
    """The fire times to run now, oldest first; ``pending`` is the first not yet handled.

    If the oldest due fire time is within ``grace`` of ``now``, every due one runs
    (the scheduler is merely a little late). Otherwise fire times were missed and
    ``misfire`` decides: ``once`` runs the latest due one only, ``skip`` only those
    within ``grace``, ``all`` each due one, the latest ``cap`` at most.
    """
    if pending > now:
        return []
    cutoff = now - grace
    if pending >= cutoff:
        return cron.between(pending - ONE_US, now)
    if misfire == Misfire.ONCE:
        return cron.latest(now, floor=pending, count=1)
    if misfire == Misfire.SKIP:
        return cron.between(cutoff, now)
    return cron.latest(now, floor=pending, count=cap)


def launch(schedule: Schedule, run: ScheduleRun) -> ScheduleRun:
    """Enqueue the schedule's job for ``run`` and link the two; call inside a transaction.

    A skipped run (overlap off) enqueues nothing: it is only logged.

    A task that cannot be enqueued (it does not import, an argument is refused)
    leaves the run with its error and no job: that fire time is done, not retried.
    A database error propagates, so the caller's transaction rolls back and the
    fire time is tried again on the next tick.
    """
    from jobs.backends import DatabaseBackend
    from jobs.framework import task_backends
    from jobs.resolve import resolve_task

    try:
        zone = get_zone(schedule.timezone)
    except CronError:
        zone = timezone.get_current_timezone()
    if run.skipped:
        logger.info("schedule run skipped schedule=%s fire_time=%s reason=%r", schedule.name,
                    run.fire_time.astimezone(zone).isoformat() if run.fire_time else "run-now",
                    run.skip_reason)
        return run
    meta = job_meta(schedule.name, run.fire_time, run.pk, zone)
    if schedule.made_in_admin and schedule.task not in admin_tasks():
        # Taken off the list since the schedule was made: nothing outside the list runs.
        run.error = f"{schedule.task}: not in SCHEDULER_ADMIN_TASKS (made in the admin, its task must be listed)"
        run.save(update_fields=["error"])
        logger.error("schedule run not enqueued schedule=%s fire_time=%s error=%s", schedule.name,
                     meta["fire_time"], run.error)
        return run
    try:
        with transaction.atomic(using=router.db_for_write(ScheduleRun)):
            task = resolve_task(schedule.task).using(queue_name=schedule.queue_name or None, priority=schedule.priority)
            backend = task_backends[task.backend]
            if isinstance(backend, DatabaseBackend):  # the job says where it came from, from its first write
                result = backend.enqueue(task, list(schedule.args), dict(schedule.kwargs), meta=meta)
                run.job_id = int(result.id)
            else:
                result = task.enqueue(*schedule.args, **schedule.kwargs)
            run.result_id = str(result.id)
            run.save(update_fields=["job", "result_id"])
    except DatabaseError:
        raise
    except Exception as exc:
        run.error = f"{schedule.task}: {type(exc).__name__}: {exc}"
        run.save(update_fields=["error"])
        logger.error("schedule run not enqueued schedule=%s fire_time=%s error=%s", schedule.name,
                     meta["fire_time"], run.error)
        return run
    logger.info("schedule run enqueued schedule=%s fire_time=%s job=%s task=%s queue=%s", schedule.name,
                meta["fire_time"] or "run-now", run.result_id, schedule.task, schedule.queue_name)
    return run


_UNFINISHED = {JobStatus.READY: "still waiting to run", JobStatus.RUNNING: "still running"}


def unfinished_previous_job(schedule: Schedule) -> str:
    """Why a new run of ``schedule`` must not start now, or "" when it may.

    Only a schedule with ``overlap`` off is held back, while the job of its
    previous run (the latest one that made a job, "Run now" included: skipped
    runs made none) is READY (a retry waiting counts) or RUNNING. One query, one
    probe of ``scheduler_run_with_job_idx``; a job deleted by pruning is finished.
    Call it inside the transaction that then writes the run, with the schedule
    row locked, so that no other scheduler decides between the two.
    """
    if schedule.overlap:
        return ""
    previous_job_id = ScheduleRun.objects.filter(schedule=schedule).latest_with_job().values("job_id")
    unfinished = (Job.objects.filter(pk=Subquery(previous_job_id), status__in=list(_UNFINISHED))
                  .values_list("pk", "status").first())
    if unfinished is None:
        return ""
    job_id, status = unfinished
    return f"previous run (job #{job_id}) {_UNFINISHED[status]}"


def new_run(schedule: Schedule, fire_time: datetime | None, now: datetime) -> ScheduleRun:
    """Insert the run row for ``fire_time`` (None: "Run now"), marked skipped if overlap holds it back.

    Call inside the caller's transaction; an IntegrityError (in a savepoint, so the
    transaction goes on) means that fire time has its row already.
    """
    reason = unfinished_previous_job(schedule)
    with transaction.atomic(using=router.db_for_write(ScheduleRun)):
        return ScheduleRun.objects.create(schedule=schedule, fire_time=fire_time, enqueued_at=now,
                                          skipped=bool(reason), skip_reason=reason)


def run_now(schedule: Schedule, now: datetime | None = None) -> ScheduleRun:
    """Enqueue one job for ``schedule`` at once (the admin's "Run now"); no fire time.

    A schedule with ``overlap`` off is held to it here too: the run is skipped
    while the previous run's job is unfinished. The schedule row is locked (waiting
    for a scheduler that has it), so that a tick cannot decide at the same moment.
    """
    now = now or timezone.now()
    with transaction.atomic(using=router.db_for_write(ScheduleRun)):
        schedule = Schedule.objects.select_for_update().get(pk=schedule.pk)
        return launch(schedule, new_run(schedule, None, now))


class Scheduler:
    def __init__(self, *, now: Callable[[], datetime] = timezone.now, grace: timedelta = MISFIRE_GRACE,
                 cap: int = MISFIRE_ALL_CAP, recheck: float = RECHECK_INTERVAL, keep_runs: int = KEEP_RUNS):
        self.now = now
        self.grace = grace
        self.cap = cap
        self.recheck = recheck
        self.keep_runs = keep_runs
        self.db_alias = router.db_for_write(Schedule)
        self._broken: set[tuple[str, str]] = set()  # (cron, zone) already logged as unusable

    # -- one tick ------------------------------------------------------------------------

    def tick(self, now: datetime) -> datetime | None:
        """Enqueue every due fire time; return the next fire time of any active schedule."""
        wake = None
        for schedule in Schedule.objects.active():
            cron = self._cron(schedule)
            if cron is None:
                continue
            if schedule.next_fire_at is None or schedule.next_fire_at <= now:
                try:
                    self.fire(schedule.pk, now)
                except DatabaseError:
                    raise
                except Exception:  # a bug in one schedule's path must not stop the others
                    logger.exception("schedule tick failed name=%s", schedule.name)
            upcoming = cron.next_after(now)
            wake = upcoming if wake is None else min(wake, upcoming)
        return wake

    def fire(self, schedule_id: int, now: datetime) -> list[ScheduleRun]:
        """Handle one schedule's due fire times, in one transaction; [] if another scheduler has it."""
        with transaction.atomic(using=self.db_alias):
            schedule = (Schedule.objects.active().select_for_update(skip_locked=True)
                        .filter(pk=schedule_id).first())
            if schedule is None or (schedule.next_fire_at is not None and schedule.next_fire_at > now):
                return []
            cron = self._cron(schedule)
            if cron is None:
                return []
            if schedule.next_fire_at is None:
                Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=cron.next_after(now))
                return []
            fire_times = plan(cron, schedule.next_fire_at, now, misfire=schedule.misfire, grace=self.grace,
                              cap=self.cap)
            if schedule.next_fire_at < now - self.grace:
                logger.warning("schedule missed fire times name=%s missed_since=%s misfire=%s runs=%d",
                               schedule.name, schedule.next_fire_at.isoformat(), schedule.misfire, len(fire_times))
            runs = [run for run in (self._enqueue(schedule, fire_time, now) for fire_time in fire_times) if run]
            changes = {"next_fire_at": cron.next_after(now)}
            if fire_times and (schedule.last_fire_at is None or fire_times[-1] > schedule.last_fire_at):
                changes["last_fire_at"] = fire_times[-1]
            Schedule.objects.filter(pk=schedule.pk).update(**changes)
            return runs

    def _enqueue(self, schedule: Schedule, fire_time: datetime, now: datetime) -> ScheduleRun | None:
        try:
            run = new_run(schedule, fire_time, now)
        except IntegrityError:
            logger.info("schedule run already enqueued by another scheduler schedule=%s fire_time=%s",
                        schedule.name, fire_time.isoformat())
            return None
        return launch(schedule, run)

    def _cron(self, schedule: Schedule) -> CronSchedule | None:
        try:
            return schedule.cron_schedule()
        except CronError as exc:
            if (schedule.cron, schedule.timezone) not in self._broken:
                self._broken.add((schedule.cron, schedule.timezone))
                logger.error("schedule not run name=%s error=%s", schedule.name, exc)
            return None

    # -- upkeep ------------------------------------------------------------------------

    def sync(self, now: datetime):
        return sync_schedules(now)

    def prune(self) -> int:
        """Delete run rows beyond the newest ``keep_runs`` of each schedule.

        The latest run that made a job is kept however old: with overlap off, it is
        the previous run (after a long job, all the newest runs may be skipped ones).
        """
        deleted = 0
        for schedule_id in Schedule.objects.values_list("pk", flat=True):
            runs = ScheduleRun.objects.filter(schedule_id=schedule_id)
            threshold = runs.order_by("-id").values_list("id", flat=True)[self.keep_runs:self.keep_runs + 1]
            if threshold:
                previous = list(runs.latest_with_job().values_list("id", flat=True))
                deleted += runs.filter(id__lte=threshold[0]).exclude(id__in=previous).delete()[0]
        return deleted

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Sync, then tick at every fire time until ``stop`` is set."""
        logger.info("scheduler started recheck=%gs", self.recheck)
        backoff = 0.0
        synced = False
        next_prune = 0.0
        while not stop.is_set():
            try:
                if not synced:
                    report = self.sync(self.now())
                    synced = True
                    logger.info("schedules synced from settings created=%d updated=%d removed=%d",
                                len(report.created), len(report.updated), report.removed)
                wake = self.tick(self.now())
                if time.monotonic() >= next_prune:
                    self.prune()
                    next_prune = time.monotonic() + PRUNE_INTERVAL
                backoff = 0.0
            except Exception as exc:
                backoff = min(max(backoff * 2, 0.5), 30.0)
                if isinstance(exc, DatabaseError):
                    logger.warning("scheduler database error retry_in=%.1fs error=%s: %s", backoff,
                                   type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
                    try:
                        connections[self.db_alias].close()
                    except DatabaseError:
                        pass
                else:
                    logger.exception("scheduler tick failed retry_in=%.1fs", backoff)
                stop.wait(backoff)
                continue
            stop.wait(self.sleep_time(wake, self.now()))
        logger.info("scheduler stopped")

    def sleep_time(self, wake: datetime | None, now: datetime) -> float:
        if wake is None:
            return self.recheck
        return min(max((wake - now).total_seconds(), 0.0), self.recheck)


def run_in_worker(stop: threading.Event) -> None:
    """The worker loop registered with ``jobs.loops``: runs inside every ``process_tasks``."""
    Scheduler().run(stop)
