"""``manage.py prune_jobs``: delete old finished jobs of one backend alias in batches."""

from django.core.management.base import BaseCommand
from django.utils import timezone

from jobs.framework import DEFAULT_TASK_BACKEND_ALIAS, task_backends
from jobs.management.options import MAX_BATCH_SIZE, backend_alias, bounded_int, seconds
from jobs.pruning import prune


class Command(BaseCommand):
    help = ("Delete SUCCESSFUL jobs older than OPTIONS['retain_successful'] and FAILED/CANCELLED ones "
            "older than OPTIONS['retain_failed'] (seconds since they finished), in batches.")

    def add_arguments(self, parser):
        parser.add_argument("--successful-after", type=seconds(), metavar="SECONDS",
                            help="Override retain_successful for this run.")
        parser.add_argument("--failed-after", type=seconds(), metavar="SECONDS",
                            help="Override retain_failed for this run.")
        parser.add_argument("--batch-size", type=bounded_int(1, MAX_BATCH_SIZE), default=1000,
                            help=f"Rows deleted per transaction (default 1000, at most {MAX_BATCH_SIZE}).")
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be deleted.")
        parser.add_argument("--backend", type=backend_alias, default=DEFAULT_TASK_BACKEND_ALIAS,
                            help="TASKS alias whose jobs and OPTIONS are meant (default 'default').")

    def handle(self, *args, **options):
        alias = options["backend"]
        retain = task_backends[alias].jobs_options
        retain_successful, retain_failed = options["successful_after"], options["failed_after"]
        counts = prune(
            now=timezone.now(), backend=alias,
            retain_successful=retain.retain_successful if retain_successful is None else retain_successful,
            retain_failed=retain.retain_failed if retain_failed is None else retain_failed,
            batch_size=options["batch_size"], dry_run=options["dry_run"],
        )
        verb = "Would delete" if options["dry_run"] else "Deleted"
        self.stdout.write(f"{verb} {counts['successful']} successful and {counts['failed']} failed/cancelled jobs.")
