"""The alerts of docs/howto/monitoring.md, end to end: a real worker under ``tests.settings_alerts`` (the page's
LOGGING snippet, mail to ADMINS, Sentry) fails one job for good and retries another."""

from __future__ import annotations

import json
import subprocess
import sys
from email import message_from_string, policy

from jobs.models import Job
from tests import tasks
from tests.conftest import REPO, subprocess_env


def test_a_final_failure_reaches_the_json_log_the_admins_mail_and_sentry_once(transactional_db, tmp_path):
    final = tasks.always_fails.enqueue()
    Job.objects.filter(pk=int(final.id)).update(attempts=2)  # its last attempt next
    retried = tasks.fail_times.enqueue(1)  # its first attempt fails and is retried later
    proc = subprocess.run([sys.executable, str(REPO / "manage.py"), "process_tasks", "--burst", "--no-scheduler"],
                          cwd=REPO, env=subprocess_env(DJANGO_SETTINGS_MODULE="tests.settings_alerts",
                                                       JOBS_TEST_ALERTS=str(tmp_path)),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    final_id, retried_id = int(final.id), int(retried.id)

    # JSON lines: every line of the log is one object; the job's fields are keys.
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    about = {job_id: [r for r in records if r.get("job_id") == job_id] for job_id in (final_id, retried_id)}
    (error,) = [r for r in about[final_id] if r["levelname"] == "ERROR"]
    assert error["name"] == "jobs.worker" and error["task"] == "tests.tasks.always_fails"
    assert (error["attempt"], error["max_attempts"]) == (3, 3)
    assert error["message"].startswith(f"job finished id={final_id} ")
    assert 'raise RuntimeError("this task always fails")' in error["exc_info"]
    (retry,) = about[retried_id]
    assert retry["levelname"] == "WARNING" and "exc_info" not in retry and "outcome=FAILED retry_in=" in retry["message"]
    django_line = [r for r in records if r["name"] in ("django.tasks", "django_tasks") and r["levelname"] == "ERROR"]
    assert len(django_line) == 1  # Django's own line: on the console...

    # ... but one mail per failure: ours, with the traceback.
    mails = [message_from_string(path.read_text(), policy=policy.default) for path in (tmp_path / "mail").iterdir()]
    assert [m["Subject"].split(" duration=")[0] for m in mails] == \
        [f"[Django] ERROR: job finished id={final_id} task=tests.tasks.always_fails attempt=3/3"]
    assert 'raise RuntimeError("this task always fails")' in mails[0].get_body().get_content()

    # Sentry: one event, the exception with its frames, the job's fields as extra data.
    events = [json.loads(line) for line in (tmp_path / "sentry.jsonl").read_text().splitlines()]
    assert len(events) == 1, [e.get("logentry") for e in events]
    (event,) = events
    assert event["level"] == "error" and event["logger"] == "jobs.worker"
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "RuntimeError" and exception["value"] == "this task always fails"
    assert any(frame["function"] == "always_fails" for frame in exception["stacktrace"]["frames"])
    assert event["extra"]["job_id"] == final_id and event["extra"]["task"] == "tests.tasks.always_fails"
    print(error)
