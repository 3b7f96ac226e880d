"""What actually ran: one row per attempt of a chaos task that reached its end."""

from django.db import models


class Effect(models.Model):
    """Written by the task itself, in its own autocommit, before the worker records the
    outcome; the checker holds these rows against the job rows."""

    job_id = models.BigIntegerField()
    attempt = models.PositiveIntegerField(help_text="The attempt number the worker gave the task.")
    worker_id = models.CharField(max_length=128)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    raised = models.BooleanField(default=False, help_text="The attempt ended in a planned failure.")

    class Meta:
        indexes = [models.Index(fields=["job_id"], name="chaos_effect_job_idx")]

    def __str__(self) -> str:
        return f"job {self.job_id} attempt {self.attempt} by {self.worker_id}"


class Begun(models.Model):
    """Written by a task that its worker process may be ended in the middle of (the ``hard``
    kinds, ``stuck``), in its own autocommit, as it starts: an attempt whose process was ended
    never writes its ``Effect``, and the checker still needs to know that it ran, and from when."""

    job_id = models.BigIntegerField()
    attempt = models.PositiveIntegerField()
    worker_id = models.CharField(max_length=128)
    started_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["job_id"], name="chaos_begun_job_idx")]

    def __str__(self) -> str:
        return f"job {self.job_id} attempt {self.attempt} began on {self.worker_id}"
