"""Schedules mirrored from ``SCHEDULED_JOBS``, and one row per run they made.

``ScheduleRun`` is unique on (schedule, fire time): however many schedulers run
at once, the database lets exactly one of them insert a given tick, and the job
is enqueued in the same transaction as that row. A fire time skipped because the
schedule does not overlap gets its row too, marked skipped, so that every fire
time is accounted for exactly once.
"""

from __future__ import annotations

from datetime import datetime

from django.db import models

from .cron import CronSchedule, cron_schedule


class Misfire(models.TextChoices):
    ONCE = "once", "Once: one run for the whole gap"
    SKIP = "skip", "Skip: no run for missed fire times"
    ALL = "all", "All: each missed fire time (capped)"


class ScheduleQuerySet(models.QuerySet):
    def active(self):
        """Schedules the scheduler runs: switched on, and still in the settings or made in the admin."""
        return self.filter(models.Q(in_settings=True) | models.Q(made_in_admin=True), enabled=True)


class Schedule(models.Model):
    name = models.CharField(max_length=200, unique=True,
                            help_text="The key in SCHEDULED_JOBS, or the name given in the admin.")
    task = models.CharField(max_length=255, help_text="Dotted path of the task object.")
    cron = models.CharField(max_length=255)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue_name = models.CharField(max_length=64, default="default")
    priority = models.SmallIntegerField(default=0)
    timezone = models.CharField(max_length=64, help_text="The cron expression is read in this time zone.")
    misfire = models.CharField(max_length=8, choices=Misfire.choices, default=Misfire.ONCE)
    overlap = models.BooleanField(
        default=True, help_text="Ticked: a fire time runs even while the previous run's job is still waiting or "
                                "running. Unticked: that fire time is skipped (and its run shown as skipped).")
    enabled = models.BooleanField(
        default=True, help_text="Switched off here, a schedule stays off across restarts until switched on again.")
    in_settings = models.BooleanField(
        default=True, help_text="Off when the entry was removed from SCHEDULED_JOBS: kept for its history, never run.")
    made_in_admin = models.BooleanField(
        default=False, help_text="Made in the admin (its task one of SCHEDULER_ADMIN_TASKS), not in SCHEDULED_JOBS.")
    next_fire_at = models.DateTimeField(null=True, blank=True, help_text="The next fire time not yet handled.")
    last_fire_at = models.DateTimeField(null=True, blank=True, help_text="The fire time of the latest scheduled run.")

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def active(self) -> bool:
        return self.enabled and (self.in_settings or self.made_in_admin)

    def cron_schedule(self) -> CronSchedule:
        """Raises CronError if the stored expression or zone is unusable."""
        return cron_schedule(self.cron, self.timezone)

    def switch(self, enabled: bool, *, now: datetime) -> None:
        """The admin's on/off switch.

        Switching on starts from the next fire time after ``now``: the time a
        schedule spent switched off is not a misfire to catch up on.
        """
        self.enabled = enabled
        fields = ["enabled"]
        if enabled:
            self.next_fire_at = self.cron_schedule().next_after(now)
            fields.append("next_fire_at")
        self.save(update_fields=fields)


class ScheduleRunQuerySet(models.QuerySet):
    def latest_with_job(self):
        """The newest run that made a job, as a sliced queryset (one probe of ``scheduler_run_with_job_idx``)."""
        return self.filter(job__isnull=False).order_by("-id")[:1]


class ScheduleRun(models.Model):
    """One job a schedule made: for a fire time, or on request (``fire_time`` None)."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="runs")
    fire_time = models.DateTimeField(null=True, blank=True, help_text="Empty for a run requested with 'Run now'.")
    enqueued_at = models.DateTimeField()
    # Neither a database constraint nor a cascade: jobs are purged in bulk (and fast, since
    # nothing points at them for Django's delete collector); the run stays as history and
    # may then name a job that is gone.
    job = models.ForeignKey("jobs.Job", on_delete=models.DO_NOTHING, null=True, blank=True, db_constraint=False,
                            related_name="schedule_runs")
    result_id = models.CharField(max_length=64, blank=True, help_text="The TaskResult id the backend returned.")
    error = models.TextField(blank=True, help_text="Why no job was enqueued, if none was.")
    skipped = models.BooleanField(
        default=False, help_text="Not enqueued on purpose: overlap is off and the previous run's job had not finished.")
    skip_reason = models.CharField(max_length=200, blank=True,
                                   help_text="Why it was skipped, e.g. 'previous run (job #41) still running'.")

    objects = ScheduleRunQuerySet.as_manager()

    class Meta:
        ordering = ["-enqueued_at", "-id"]
        constraints = [
            # The whole exactly-once guarantee: one row per (schedule, fire time). Manual
            # runs have no fire time, and NULLs never collide.
            models.UniqueConstraint(fields=["schedule", "fire_time"], name="scheduler_run_once_per_fire_time"),
        ]
        indexes = [
            models.Index(fields=["schedule", "-enqueued_at"], name="scheduler_run_latest_idx"),
            # The previous run that made a job, in one probe however many skipped runs came since
            # (ScheduleRunQuerySet.latest_with_job, for schedules with overlap off).
            models.Index(fields=["schedule", "-id"], name="scheduler_run_with_job_idx",
                         condition=models.Q(job__isnull=False)),
        ]

    def __str__(self) -> str:
        when = self.fire_time.isoformat() if self.fire_time else f"run now at {self.enqueued_at.isoformat()}"
        return f"{self.schedule_id}@{when}"

    @classmethod
    def check(cls, **kwargs):
        """Less Django's models.W037 on MySQL/MariaDB (no partial indexes; ``jobs.I030`` says what serves)."""
        from jobs.checks import MYSQL_INDEX_WARNINGS

        return [issue for issue in super().check(**kwargs) if issue.id not in MYSQL_INDEX_WARNINGS]

    @property
    def manual(self) -> bool:
        return self.fire_time is None

