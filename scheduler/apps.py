from django.apps import AppConfig


class SchedulerConfig(AppConfig):
    name = "scheduler"
    verbose_name = "Scheduler"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from jobs.loops import register_worker_loop
        from jobs.origins import register_origin

        from . import checks  # noqa: F401  (registers the SCHEDULED_JOBS checks)
        from .origin import render_origin
        from .runner import run_in_worker

        # The tick runs in its own thread inside every process_tasks (not with --no-scheduler or --burst).
        register_worker_loop("scheduler", run_in_worker)
        # The jobs admin's job page says which schedule (and run) made a job, in our words.
        register_origin("scheduler", render_origin)
