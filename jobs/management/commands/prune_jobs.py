"""``manage.py prune_jobs``: delete old finished jobs in batches."""

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from jobs.framework import DEFAULT_TASK_BACKEND_ALIAS, task_backends
from jobs.pruning import prune


class Command(BaseCommand):
    help = ("Delete SUCCESSFUL jobs older than OPTIONS['retain_successful'] and FAILED/CANCELLED ones "
            "older than OPTIONS['retain_failed'] (seconds since they finished), in batches.")

    def add_arguments(self, parser):
        parser.add_argument("--successful-after", type=float, metavar="SECONDS",
                            help="Override retain_successful for this run.")
        parser.add_argument("--failed-after", type=float, metavar="SECONDS",
                            help="Override retain_failed for this run.")
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be deleted.")
        parser.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS)

    def handle(self, *args, **options):
        backend = task_backends[options["backend"]]
        retain_successful = options["successful_after"]
        retain_failed = options["failed_after"]
        for name, value in (("--successful-after", retain_successful), ("--failed-after", retain_failed)):
            if value is not None and value < 0:
                raise CommandError(f"{name} must be >= 0")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be >= 1")
        counts = prune(
            now=timezone.now(),
            retain_successful=backend.jobs_options.retain_successful if retain_successful is None else retain_successful,
            retain_failed=backend.jobs_options.retain_failed if retain_failed is None else retain_failed,
            batch_size=options["batch_size"], dry_run=options["dry_run"],
        )
        verb = "Would delete" if options["dry_run"] else "Deleted"
        self.stdout.write(f"{verb} {counts['successful']} successful and {counts['failed']} failed/cancelled jobs.")
