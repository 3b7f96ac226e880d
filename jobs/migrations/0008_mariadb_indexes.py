"""MySQL and MariaDB: the indexes that the model's partial ones stand for, made plainly.

Neither server has partial indexes (nor MariaDB indexes on expressions), so Django
leaves out the claim's, the unique jobs', the stale sweep's and the finishes' indexes
there (its warnings models.W036, W037 and W043; ``jobs.checks`` says what this
migration puts in their place). On those servers it adds:

- the claim's index, with ``status`` leading: READY rows of a backend, by limit key,
  in claim order (``priority`` descending), so the claim reads them in order, sorts
  nothing and locks only the rows it takes, however many rows have finished;
- unique jobs: a stored generated column holding ``unique_key`` only while the job is
  READY, under a plain unique index (NULLs never collide);
- the stale sweep's (``status``, ``heartbeat_at``) and the finishes' ``finished_at``.

On other databases it does nothing.
"""

from django.db import migrations

READY_KEY = "ready_unique_key"
INDEXES = {
    "jobs_job_my_claim": "(status, backend, limit_key, priority DESC, run_after, id)",
    "jobs_job_my_running": "(status, heartbeat_at)",
    "jobs_job_my_finished": "(finished_at)",
}
UNIQUE = "jobs_job_my_unique_ready"


def create(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    table = connection.ops.quote_name(apps.get_model("jobs", "Job")._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} ADD COLUMN {READY_KEY} varchar(255) GENERATED ALWAYS AS "
                       f"(CASE WHEN status = 'READY' THEN unique_key END) STORED")
        cursor.execute(f"CREATE UNIQUE INDEX {UNIQUE} ON {table} (backend, {READY_KEY})")
        for name, columns in INDEXES.items():
            cursor.execute(f"CREATE INDEX {name} ON {table} {columns}")


def drop(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    table = connection.ops.quote_name(apps.get_model("jobs", "Job")._meta.db_table)
    with connection.cursor() as cursor:
        for name in [*INDEXES, UNIQUE]:
            cursor.execute(f"DROP INDEX {name} ON {table}")
        cursor.execute(f"ALTER TABLE {table} DROP COLUMN {READY_KEY}")


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0007_admin_retrying_error_class"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]
