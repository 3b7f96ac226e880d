"""``python -m tests.race_enqueue GATE N``: wait for the file GATE, then enqueue the same unique
job N times and print the ids (tests/test_job_control.py starts several at once)."""

import os
import sys
import time

import django


def main(gate: str, count: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from tests import tasks

    while not os.path.exists(gate):
        time.sleep(0.001)
    ids = {tasks.unique_add.enqueue(1, 2).id for _ in range(count)}
    print(" ".join(sorted(ids)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
