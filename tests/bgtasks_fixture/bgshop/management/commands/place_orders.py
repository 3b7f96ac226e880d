"""``manage.py place_orders run|pending``: the shop's code that enqueues its tasks."""

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from bgshop.tasks import (
    all_done,
    charge_card,
    rebuild_index,
    send_newsletter,
    send_receipt,
    send_reminder,
    tidy_up,
)


class Command(BaseCommand):
    def add_arguments(self, parser):
        parser.add_argument("phase", choices=["run", "pending"])

    def handle(self, *args, phase, **options):
        if phase == "run":
            send_receipt(1, email="ann@example.com")
            send_receipt(2)
            send_reminder(1, schedule=0)  # 0 sets nothing: still the decorator's minute
            send_reminder(3, schedule={"run_at": 0})  # this is "now"
            send_reminder(2)  # one minute from now: still pending when the worker stops
            send_newsletter(7)
            rebuild_index("books")
            rebuild_index("music", priority=9)
            tidy_up()
            send_receipt(3, schedule=timedelta(seconds=-1), priority=2)
            send_receipt(4, schedule=timezone.now() - timedelta(seconds=1))
            send_receipt(5, verbose_name="Receipt for order 5")
            for _ in range(3):
                send_receipt(6, remove_existing_tasks=True)
            send_newsletter(8, queue="default")
            charge_card(9, 25)
            all_done("run")
        else:
            send_receipt(10, email="bob@example.com")
            send_newsletter(11)
            rebuild_index("garden", priority=3)
            send_reminder(12)
            all_done("pending")
        self.stdout.write(f"placed {phase}")
