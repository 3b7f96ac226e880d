"""``manage.py enqueue_examples``: a handful of example jobs, for ``make run``."""

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from example.tasks import add, charge_card, flaky_email, slow_report


class Command(BaseCommand):
    help = "Enqueue a few example jobs (quick, slow, retried, failing for good, delayed)."

    def handle(self, *args, **options):
        results = [add.enqueue(2, 3), slow_report.enqueue(2), flaky_email.enqueue("ada@example.com"),
                   charge_card.enqueue(1042),
                   add.using(run_after=timezone.now() + timedelta(seconds=30)).enqueue(40, 2),
                   add.using(priority=10).enqueue(1, 1)]
        self.stdout.write(f"Enqueued {len(results)} example jobs: {', '.join(r.id for r in results)}")
