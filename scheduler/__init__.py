"""Cron-style recurring jobs from ``settings.SCHEDULED_JOBS``, each fire time enqueued exactly once.

The tick runs inside every ``process_tasks`` worker (registered as a worker loop
in ``SchedulerConfig.ready()``) and alone as ``manage.py run_scheduler``.
"""
