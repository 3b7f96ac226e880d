"""A trigram index on the error text of jobs that have errors, on PostgreSQL only.

It lets the admin search error messages and tracebacks without reading every row
(jobs/search.py builds the matching expression). It needs the ``pg_trgm`` extension:
the migration creates it when the database user may (PostgreSQL 13+ lets a user with
CREATE on the database create this trusted extension; older servers need a superuser).
When it may not, the migration logs a warning and carries on without the index, so
the deploy does not fail: the search then reads every row, as before, and the README
(Operations) gives the two statements to run later. The index is built CONCURRENTLY,
so workers keep writing meanwhile; on other databases the migration does nothing.
"""

import logging

from django.db import DatabaseError, migrations

INDEX = "jobs_job_errors_trgm_idx"

logger = logging.getLogger("jobs.migrations")


def create_index(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    table = connection.ops.quote_name(apps.get_model("jobs", "Job")._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
        if cursor.fetchone() is None:
            try:
                cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            except DatabaseError as exc:
                logger.warning(
                    "jobs 0004: could not create the pg_trgm extension (%s); going on without the trigram index, "
                    "so the admin's search of error text reads every row. A superuser can run "
                    "'CREATE EXTENSION pg_trgm;' in this database, then the CREATE INDEX in the README "
                    "(Operations).", str(exc).strip())
                return
        # A CONCURRENTLY build that was interrupted leaves an invalid index behind: build it again.
        cursor.execute("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [INDEX])
        row = cursor.fetchone()
        if row and row[0]:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
        cursor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON {table} "
                       f"USING gin ((UPPER(errors::text)) gin_trgm_ops) WHERE errors <> '[]'::jsonb")


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [
        ("jobs", "0003_job_attempt_limit_task_run_after_backend_indexes"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index, elidable=False),
    ]
