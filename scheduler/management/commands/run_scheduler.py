"""``manage.py run_scheduler``: the scheduler alone (it enqueues jobs; workers run them)."""

from __future__ import annotations

import logging
import os
import signal
import threading

from django.core.management.base import BaseCommand

from scheduler.runner import Scheduler

VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


class Command(BaseCommand):
    help = ("Run the scheduler alone: mirror SCHEDULED_JOBS into schedules and enqueue each fire time's job "
            "exactly once, however many schedulers run. Stops on SIGTERM or SIGINT.")

    def handle(self, *args, **options):
        level = VERBOSITY_LEVELS.get(options["verbosity"], logging.DEBUG)
        logger = logging.getLogger("scheduler")
        logger.setLevel(level)
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
            logger.addHandler(handler)
        stop = threading.Event()

        def handle(signum, frame):  # no logging here: a handler may interrupt the logging lock's holder
            if stop.is_set():  # a second signal: leave at once
                os._exit(128 + signum)
            stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        Scheduler().run(stop)
