"""The shop's background tasks. Each run appends one JSON line to $BGSHOP_RECORD."""

import json
import os
from pathlib import Path

from background_task import background


def record(task, *args, **kwargs):
    line = json.dumps({"task": task, "args": list(args), "kwargs": kwargs}, sort_keys=True)
    fd = os.open(os.environ["BGSHOP_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@background
def send_receipt(order_id, email=None):
    record("send_receipt", order_id, email=email)


@background(schedule=60)
def send_reminder(order_id):
    record("send_reminder", order_id)


@background(queue="emails")
def send_newsletter(issue):
    record("send_newsletter", issue)


@background(name="shop.rebuild_index", schedule={"priority": 5})
def rebuild_index(section):
    record("rebuild_index", section)


@background(schedule={"run_at": 0, "priority": -5})
def tidy_up():
    record("tidy_up")


@background
def charge_card(order_id, amount):
    """Declined the first time it is tried for an order (a marker file remembers)."""
    marker = Path(os.environ["BGSHOP_STATE"]) / f"charge_card-{order_id}"
    if not marker.exists():
        marker.write_text("declined once")
        record("charge_card_declined", order_id, amount)
        raise RuntimeError(f"card declined for order {order_id}")
    record("charge_card", order_id, amount)


# The lowest priority under the project's ordering (see BACKGROUND_TASK_PRIORITY_ORDERING), so it runs last.
LAST = 1000 if os.environ.get("BGSHOP_ORDERING") == "ASC" else -1000


@background(schedule={"priority": LAST})
def all_done(label):
    record("all_done", label)
