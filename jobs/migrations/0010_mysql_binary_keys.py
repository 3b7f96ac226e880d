"""MySQL and MariaDB: the key columns compare byte for byte, as on SQLite and PostgreSQL.

Their default collations (utf8mb4_unicode_ci, utf8mb4_general_ci) compare text without
case: "account-A" and "account-a" would be one unique key (enqueue then found the other
job's key taken and not taken at once) and one limit key. The unique and limit keys of
jobs, the READY-only copy of the unique key (migration 0008) and the limit table's key
get the binary collation of utf8mb4. On other databases it does nothing.
"""

from django.db import migrations

BINARY = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"


def _alter(apps, schema_editor, collation: str):
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    qn = connection.ops.quote_name
    job = qn(apps.get_model("jobs", "Job")._meta.db_table)
    limit = qn(apps.get_model("jobs", "JobLimit")._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {job} MODIFY unique_key varchar(255) {collation} NULL, "
                       f"MODIFY limit_key varchar(255) {collation} NULL, "
                       f"MODIFY ready_unique_key varchar(255) {collation} GENERATED ALWAYS AS "
                       f"(CASE WHEN status = 'READY' THEN unique_key END) STORED")
        cursor.execute(f"ALTER TABLE {limit} MODIFY {qn('key')} varchar(255) {collation} NOT NULL")


def to_binary(apps, schema_editor):
    _alter(apps, schema_editor, BINARY)


def to_default(apps, schema_editor):
    _alter(apps, schema_editor, "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0009_batches_dependencies"),
    ]

    operations = [migrations.RunPython(to_binary, to_default, elidable=False)]
