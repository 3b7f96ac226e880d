from django.apps import AppConfig


class SchedulerConfig(AppConfig):
    name = "scheduler"
    verbose_name = "Scheduler"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from jobs.loops import register_worker_loop

        from . import checks  # noqa: F401  (registers the SCHEDULED_JOBS checks)
        from .runner import run_in_worker

        # The tick runs in its own thread inside every process_tasks (not with --no-scheduler or --burst).
        register_worker_loop("scheduler", run_in_worker)
