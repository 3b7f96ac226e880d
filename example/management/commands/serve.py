"""``manage.py serve``: the development web server and one worker, stopped together.

What ``make run`` starts. The children run in their own process groups, so a Ctrl-C
reaches only this command, which passes exactly one SIGTERM to each child: the worker
then finishes its running jobs (up to ``shutdown_grace``) instead of taking a second
signal as "exit at once". Anything still alive after ``--stop-timeout`` is killed.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the development web server and a worker (with the scheduler); Ctrl-C stops both."

    def add_arguments(self, parser):
        parser.add_argument("--port", default="8000")
        parser.add_argument("--concurrency", default="2")
        parser.add_argument("--stop-timeout", type=float, default=15.0)

    def handle(self, *args, **options):
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        children: list[subprocess.Popen] = []
        stopping = []

        def stop(signum, frame):
            stopping.append(signum)

        # Handlers first: children then start with default dispositions, even when this
        # command was itself started with SIGINT ignored (as background jobs of a shell are).
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        children[:] = [
            subprocess.Popen([*manage, "process_tasks", "--concurrency", options["concurrency"]],
                             start_new_session=True),
            subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{options['port']}"],
                             start_new_session=True),
        ]
        while all(child.poll() is None for child in children) and not stopping:
            time.sleep(0.2)
        # Asked to stop, or one child ended by itself: stop the other(s), once each. The
        # worker shuts down gracefully on SIGTERM; runserver exits cleanly on SIGINT.
        for child, sig in zip(children, (signal.SIGTERM, signal.SIGINT)):
            if child.poll() is None:
                child.send_signal(sig)
        deadline = time.monotonic() + options["stop_timeout"]
        for child in children:
            try:
                child.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        codes = [child.returncode for child in children]
        self.stdout.write(f"Stopped (worker exit {codes[0]}, web server exit {codes[1]}).")
