"""What the admin's error-text search costs on SQLite, with a million jobs.

    .venv/bin/python scripts/sqlite_search_timing.py [--rows 1000000] [--runs 5]

Makes a throwaway SQLite file, migrates, loads ``--rows`` jobs shaped like
scripts/admin_timing.py's (mostly successful; the failed ones carry three errors with
tracebacks), and times the job list searched for a term in every failure, in one job
and in none, through Django's test client, as a staff user. SQLite has no trigram
index: every search reads the whole table. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from admin_timing import TASKS, TRACEBACK  # noqa: E402


def rows(count: int):
    """Job rows as tuples, newest last; failures as in admin_timing.load()."""
    start = datetime.now(UTC) - timedelta(seconds=2.5 * count)
    weights = [t[2] for t in TASKS]
    for g in range(1, count + 1):
        b, acc, k = (g * 2654435761) % 1000, 0, 0
        for k, weight in enumerate(weights):  # noqa: B007
            acc += weight
            if b < acc:
                break
        path, queue, _, fail_rate = TASKS[k]
        enqueued = (start + timedelta(seconds=2.5 * g)).replace(tzinfo=None).isoformat(sep=" ")  # as Django stores it
        failed = (g * 7919) % 1000 < fail_rate
        message = f"card declined for order-{g}" if k == 3 else "timed out connecting to payments.example.com:443"
        errors = [{"attempt": a, "exception_class_path": "httpx.ConnectTimeout", "message": message,
                   "traceback": TRACEBACK, "worker_id": "web-1:4242:9f3ab2c1", "at": enqueued}
                  for a in (1, 2, 3)] if failed else []
        yield (path, "default", queue, 0, json.dumps([g % 100000, f"order-{g}"]), "{}",
               "FAILED" if failed else "SUCCESSFUL", enqueued, enqueued, enqueued, enqueued, enqueued,
               3 if failed else 1, 3, "web-1:4242:9f3ab2c1", None, '["web-1:4242:9f3ab2c1"]',
               None if failed else '{"ok": true}', json.dumps(errors), "{}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="jobs-sqlite-search-")
    os.environ.update(DATABASE_URL=f"sqlite:///{folder}/db.sqlite3", DJANGO_SETTINGS_MODULE="queue_project.settings",
                      DJANGO_DEBUG="0", DJANGO_SECRET_KEY="sqlite-search-timing-only")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.test import Client

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    columns = ("task_path, backend, queue_name, priority, args, kwargs, status, run_after, enqueued_at, started_at, "
               "last_attempted_at, finished_at, attempts, max_attempts, worker_id, heartbeat_at, worker_ids, "
               "return_value, errors, meta")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO jobs_job ({columns}) VALUES ({', '.join(['%s'] * 20)})", rows(options.rows))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute("SELECT status, count(*) FROM jobs_job GROUP BY status ORDER BY status")
        by_status = ", ".join(f"{s} {n:,}" for s, n in cursor.fetchall())
        cursor.execute("SELECT sqlite_version()")
        version = cursor.fetchone()[0]
    size = Path(folder, "db.sqlite3").stat().st_size / 2**20
    print(f"loaded {options.rows:,} jobs in {time.perf_counter() - started:.0f} s ({size:.0f} MB): {by_status}")
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client(SERVER_NAME="localhost")
    client.force_login(user)
    from jobs.models import Job

    one_order = (Job.objects.filter(status="FAILED", task_path="shop.tasks.charge_card").order_by("-id")
                 .values_list("args", flat=True)[300][1])  # "order-N": in the error text of this job only
    print(f"SQLite {version}; Django {django.get_version()}; median of {options.runs} after a warm-up\n")
    for name, term in [("a term in every failure", "payments.example"),
                       ("a term in one job", one_order), ("a term in no job", "no such error"),
                       ("part of a task path", "charge_card")]:
        client.get("/admin/jobs/job/", {"q": term})
        times = []
        for _ in range(options.runs):
            start = time.perf_counter()
            assert client.get("/admin/jobs/job/", {"q": term}).status_code == 200
            times.append((time.perf_counter() - start) * 1000)
        print(f"search {name:<26} {statistics.median(times):>8.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
