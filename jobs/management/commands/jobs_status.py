"""``manage.py jobs_status``: the queue's state for a person, a script or a monitoring check."""

from __future__ import annotations

import json
import math

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from jobs import stats, status
from jobs.backends import database_backend

# 0: every given threshold holds; 1: one is broken (named on stderr); 2: bad usage or no database.
BROKEN, UNUSABLE = 1, 2


class Command(BaseCommand):
    # Django's checks open the database (SQLite's JSON support), and would end a file that is no
    # database, or cannot be opened, in a traceback and exit 1: handle() reports it, exit 2.
    requires_system_checks = []
    help = ("Per queue the counts by status, the lag and whether it is paused; the live workers; the failures "
            "of the last 24 h. Exit 1 when a given threshold is broken (each is named on stderr), 2 when the "
            "options are wrong or the database cannot be read, else 0.")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print JSON (see the README) instead of tables.")
        parser.add_argument("--max-lag", type=float, metavar="SECONDS",
                            help="Broken when a due job of a queue that is not paused has waited longer.")
        parser.add_argument("--min-workers", type=int, metavar="N",
                            help="Broken when fewer workers heartbeated within stale_after.")
        parser.add_argument("--max-failed", type=int, metavar="N",
                            help="Broken when more jobs failed for good in the last 24 hours.")
        parser.add_argument("--backend", metavar="ALIAS",
                            help="The TASKS alias whose stale_after and QUEUES to use (default: every "
                                 "jobs.backends.DatabaseBackend, the shortest stale_after).")

    def check(self, *args, **kwargs):
        # On MySQL/MariaDB Django's own model checks connect (to learn the server's version): a
        # database that is down must still be exit 2 and one line, not a traceback.
        try:
            return super().check(*args, **kwargs)
        except DatabaseError as exc:
            raise CommandError(f"cannot read the jobs tables: {type(exc).__name__}: {exc}".strip(),
                               returncode=UNUSABLE) from exc

    def handle(self, *args, **options):
        limits = status.Thresholds(max_lag=options["max_lag"], min_workers=options["min_workers"],
                                   max_failed=options["max_failed"])
        check_thresholds(limits)
        if options["backend"] is not None:
            try:
                database_backend(options["backend"])
            except ValueError as exc:
                raise CommandError(f"--backend: {exc}", returncode=UNUSABLE) from exc
        try:
            snap = stats.snapshot(timezone.now(), backend=options["backend"])
        except DatabaseError as exc:
            raise CommandError(f"cannot read the jobs tables: {type(exc).__name__}: {exc}".strip(),
                               returncode=UNUSABLE) from exc
        found = status.problems(snap, limits)
        if options["json"]:
            self.stdout.write(json.dumps(status.as_json(snap, limits, found), indent=2))
        else:
            self.stdout.write(status.as_text(snap, limits, found))
        for problem in found:
            self.stderr.write(f"jobs_status: {problem}")
        if found:
            raise SystemExit(BROKEN)


def check_thresholds(limits: status.Thresholds) -> None:
    """A CommandError naming the option for a negative, NaN or infinite threshold."""
    if limits.max_lag is not None and not (math.isfinite(limits.max_lag) and limits.max_lag >= 0):
        raise CommandError(f"--max-lag must be a finite number of seconds >= 0, got {limits.max_lag!r}",
                           returncode=UNUSABLE)
    for name, value in (("--min-workers", limits.min_workers), ("--max-failed", limits.max_failed)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise CommandError(f"{name} must be a whole number >= 0, got {value!r}", returncode=UNUSABLE)
