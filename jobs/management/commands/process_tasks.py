"""``manage.py process_tasks``: parse arguments, set up logging and signals, run a Worker."""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import threading

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from jobs.conf import MIN_POLL_INTERVAL
from jobs.framework import DEFAULT_TASK_BACKEND_ALIAS, FRAMEWORK, task_backends
from jobs.management import reload
from jobs.management.options import (
    MAX_CONCURRENCY,
    MAX_JOBS,
    MAX_MEMORY_MB,
    MAX_PROCESSES,
    backend_alias,
    bounded_int,
    seconds,
)
from jobs.worker import Worker, supervisor
from jobs.worker.connections import budget_warning, notice_silence, unreachable
from jobs.worker.limits import MEBIBYTE, rss_bytes
from jobs.worker.systemd import Notifier

# Jobs at once per worker process: a slow job or two (a report, a mail server timing out) does not
# hold up every queue, and a small site's database sees a handful of connections (one per thread,
# plus two). Sizing it is in the README's worker section.
DEFAULT_CONCURRENCY = 4
VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


class _LogWriter(io.TextIOBase):
    """A stand-in for sys.stdout/sys.stderr that logs each complete line (``--log-std``).

    Each job thread has its own line buffer, so lines of jobs running at once do not
    mix. A handler that itself writes to the replaced stream (say, Python's
    last-resort handler) would loop: while a line is being logged, writes go to the
    real stream.
    """

    def __init__(self, logger: logging.Logger, level: int, original):
        super().__init__()
        self._logger, self._level, self._original = logger, level, original
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if getattr(self._local, "busy", False):
            return self._original.write(text)
        *lines, self._local.buffer = (getattr(self._local, "buffer", "") + text).split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        line = getattr(self._local, "buffer", "")
        if line and not getattr(self._local, "busy", False):
            self._local.buffer = ""
            self._emit(line)

    def _emit(self, line: str) -> None:
        self._local.busy = True
        try:
            self._logger.log(self._level, "%s", line)
        finally:
            self._local.busy = False

    @property
    def encoding(self):
        return getattr(self._original, "encoding", "utf-8")

    def isatty(self) -> bool:
        return False


def _redirect_std_to_logging() -> None:
    logger = logging.getLogger("jobs.output")
    sys.stdout = _LogWriter(logger, logging.INFO, sys.stdout)
    sys.stderr = _LogWriter(logger, logging.ERROR, sys.stderr)


class Command(BaseCommand):
    help = "Run a worker: claim due jobs from the database and run them (and the scheduler, unless told not to)."

    def add_arguments(self, parser):
        parser.add_argument("--queue", action="append", dest="queues", metavar="NAME",
                            help="Only claim jobs of this queue (repeatable). Default: every queue.")
        parser.add_argument("--concurrency", type=bounded_int(1, MAX_CONCURRENCY), default=DEFAULT_CONCURRENCY,
                            metavar="N", help=f"Jobs run at once in this process, one thread each (default "
                                              f"{DEFAULT_CONCURRENCY}, at most {MAX_CONCURRENCY}; for more, run "
                                              "more processes).")
        parser.add_argument("--processes", type=bounded_int(1, MAX_PROCESSES), default=None, metavar="N",
                            help="Run N worker processes (each with --concurrency threads) under one parent, which "
                                 "restarts a child that dies and heartbeats for its children, so that no job of a "
                                 "live child is taken for lost. Default: one process, no parent.")
        parser.add_argument("--burst", action="store_true",
                            help="Run every job due now, then exit 0. Jobs due later are left. No scheduler.")
        parser.add_argument("--duration", type=seconds(), default=0, metavar="SECONDS",
                            help="Stop claiming after this long, let running jobs finish, exit 0. 0: run forever.")
        parser.add_argument("--sleep", type=seconds(minimum=MIN_POLL_INTERVAL), default=None, metavar="SECONDS",
                            help=f"Idle poll interval, at least {MIN_POLL_INTERVAL:g} s as for "
                                 "OPTIONS['poll_interval'] (default: that option).")
        parser.add_argument("--no-scheduler", action="store_true", help="Do not run the scheduler in this worker.")
        parser.add_argument("--backend", type=backend_alias, default=DEFAULT_TASK_BACKEND_ALIAS,
                            help="TASKS alias (default 'default'): only its jobs, under its OPTIONS.")
        parser.add_argument("--max-jobs", type=bounded_int(0, MAX_JOBS), default=0, metavar="N",
                            help="Stop claiming once N jobs have finished (each attempt counts), let running ones "
                                 "finish, exit 0: for a supervisor to start a fresh worker. 0 (default): no limit.")
        parser.add_argument("--max-memory", type=bounded_int(0, MAX_MEMORY_MB), default=0, metavar="MB",
                            help="Stop claiming once this process's resident memory passes MB MiB, let running "
                                 "jobs finish, exit 0. 0 (default): no limit.")
        parser.add_argument("--reload", "--dev", action="store_true", dest="reload",
                            help="Development: restart the worker when its code changes (--dev is "
                                 "django-background-tasks' name for it).")
        # Kept from django-background-tasks, so that existing unit files and crontabs keep working.
        parser.add_argument("--log-std", action="store_true",
                            help="Send what jobs print to stdout/stderr to the logger 'jobs.output' (INFO/ERROR).")

    def check(self, *args, **kwargs):
        # On MySQL/MariaDB Django's model checks connect (to learn the server's version). A worker
        # started while its database is down (a restart, a boot order, a partition) waits for it, as
        # its loop does on any database: the checks that need no database still stop a bad setting.
        # A server that answers but refuses (a wrong password, an unknown database) is a setting to
        # fix: that stops the command, as a failed check does.
        notice_silence()  # before the checks open the main thread's connection, which the loop keeps
        try:
            return super().check(*args, **kwargs)
        except DatabaseError as exc:
            if not unreachable(exc):
                raise CommandError(f"the database refused the worker at start: {type(exc).__name__}: {exc}") from exc
            logging.getLogger("jobs.worker").warning(
                "the database cannot be reached at start (%s: %s): the system checks that need it are skipped; "
                "the worker waits for it", type(exc).__name__, exc)
            return super().check(*args, **{**kwargs, "databases": []})

    def handle(self, *args, **options):
        self._configure_logging(options["verbosity"])
        alias = options["backend"]
        backend = task_backends[alias]
        unknown = sorted(set(options["queues"] or []) - backend.queues) if backend.queues else []
        if unknown:
            raise CommandError(f"--queue {unknown[0]!r} is not in TASKS[{alias!r}]['QUEUES'] "
                               f"({', '.join(sorted(backend.queues))})")
        if options["max_memory"]:
            resident = rss_bytes()
            if resident is None:
                raise CommandError("--max-memory: this platform does not tell a process its memory use",
                                   returncode=2)
            if resident >= options["max_memory"] * MEBIBYTE:  # it would stop before its first job, for ever
                raise CommandError(f"--max-memory {options['max_memory']} MiB is below this worker's own resident "
                                   f"size at start, {resident / MEBIBYTE:.0f} MiB: give more", returncode=2)
        notice_silence()  # MySQL/MariaDB: a silent server is noticed in ~25 s (PostgreSQL: libpq's OPTIONS)
        self._warn_about_connections(options)
        if options["processes"] is not None:
            if options["reload"]:
                raise CommandError("--processes and --reload do not go together: --reload restarts one worker")
            return self._supervise(options)
        if options["reload"] and not reload.started_by_reloader():
            return_code = reload.run_with_reloader()  # the worker runs in a child process, restarted on changes
            if return_code:
                raise SystemExit(return_code)
            return
        if options["log_std"]:
            _redirect_std_to_logging()
        tag = os.environ.pop(supervisor.WORKER_TAG, "")  # a child of --processes: the id its parent knows
        worker_id = supervisor.worker_id_for(os.getpid(), tag) if tag else None
        report_fd = os.environ.pop(supervisor.REPORT_FD, "")
        parent_id = os.environ.pop(supervisor.PARENT_ID, "")
        worker = Worker(worker_id=worker_id, backend_alias=alias, queues=options["queues"],
                        concurrency=options["concurrency"],
                        burst=options["burst"], duration=options["duration"], poll_interval=options["sleep"],
                        run_loops=not options["no_scheduler"], max_jobs=options["max_jobs"],
                        max_memory=options["max_memory"], notifier=Notifier.from_environ(unset=True),
                        report=supervisor.reporter(int(report_fd)) if report_fd.isdigit() else None,
                        parent=parent_id)
        self._install_signal_handlers(worker)
        if reload.started_by_reloader():
            reload.follow_parent(worker)
        parent_fd = os.environ.pop(supervisor.PARENT_FD, "")
        if parent_fd.isdigit():
            supervisor.watch_parent(int(parent_fd), lambda: worker.request_stop(
                grace=worker.options.shutdown_grace, reason="its --processes parent is gone"))
        return_code = worker.run()
        if return_code:
            raise SystemExit(return_code)

    def _warn_about_connections(self, options) -> None:
        """Once, in the command a unit starts (not in each --processes child): more connections than
        the server allows fail the last workers in a loop."""
        if os.environ.get(supervisor.WORKER_TAG):
            return
        from django.db import connections, router

        from jobs.models import Job

        connection = connections[router.db_for_write(Job)]
        warning = budget_warning(connection, processes=options["processes"] or 1,
                                 concurrency=options["concurrency"])
        connection.close()
        if warning:
            logging.getLogger("jobs.worker").warning("%s", warning)

    def _supervise(self, options) -> None:
        prefix = supervisor.command_prefix()
        parent = supervisor.Supervisor(
            processes=options["processes"], backend_alias=options["backend"],
            child_args=lambda slot: supervisor.child_command(prefix, options, slot=slot),
            final_exit=bool(options["burst"] or options["duration"]), notifier=Notifier.from_environ(unset=True))
        signal.signal(signal.SIGTERM, lambda signum, frame: parent.on_signal(signum))
        signal.signal(signal.SIGINT, lambda signum, frame: parent.on_signal(signum))
        return_code = parent.run()
        if return_code:
            raise SystemExit(return_code)

    def _configure_logging(self, verbosity: int) -> None:
        level = VERBOSITY_LEVELS.get(verbosity, logging.DEBUG)
        for name in ("jobs", "scheduler"):
            logger = logging.getLogger(name)
            logger.setLevel(level)
            if not logger.handlers and not logging.getLogger().handlers:
                handler = logging.StreamHandler()
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
                logger.addHandler(handler)
        # The tasks framework logs every start and finish too (through Django's console handler
        # when DEBUG is on, to ADMINS when it is off), a failure at ERROR with the traceback the
        # worker's own line already has, and a cancelled job as state=FAILED. Below -v 2 the
        # worker's lines say it all, once, unless LOGGING sets a level for the framework's logger.
        framework_logger = logging.getLogger(FRAMEWORK)
        if verbosity < 2 and framework_logger.level == logging.NOTSET:
            framework_logger.setLevel(logging.CRITICAL)

    def _install_signal_handlers(self, worker: Worker) -> None:
        """First SIGTERM/SIGINT: stop gracefully. Second: exit at once."""
        grace = worker.options.shutdown_grace

        def handle(signum, frame):
            if worker.stopping.is_set() and worker.stop_deadline is not None:
                os._exit(128 + signum)
            worker.request_stop(grace=grace, reason=signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
