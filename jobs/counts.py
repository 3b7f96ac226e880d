"""Counting and listing distinct values without reading the whole job table.

Used by the admin (jobs/admin/) and jobs/stats.py. A ``COUNT(*)`` over millions of
rows costs a scan on every page view; these helpers cost a bounded number of index
entries instead, and say when a number is an estimate.
"""

from __future__ import annotations

import json

from django.db import connections, router

from .models import Job

# Counts up to this are exact; above it, PostgreSQL's planner estimate is shown as "about N".
EXACT_UP_TO = 10_000


def capped_count(queryset, cap: int = EXACT_UP_TO) -> int:
    """``min(count, cap + 1)``: ``SELECT COUNT(*) FROM (SELECT id ... LIMIT cap + 1)``."""
    return queryset.order_by().values("pk")[: cap + 1].count()


def estimated_count(queryset) -> int:
    """PostgreSQL's row estimate: ``pg_class.reltuples`` unfiltered, ``EXPLAIN`` filtered; MySQL's
    and MariaDB's: the ``rows`` of its ``EXPLAIN`` (InnoDB's dives into the index)."""
    connection = connections[queryset.db]
    if connection.vendor == "mysql":
        sql, params = queryset.order_by().values("pk").query.get_compiler(using=queryset.db).as_sql()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql, params)
            names = [column[0].lower() for column in cursor.description]
            plan = cursor.fetchall()
        return max((int(row[names.index("rows")] or 0) for row in plan), default=0)
    with connection.cursor() as cursor:
        if not queryset.query.where:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                           [queryset.model._meta.db_table])
            row = cursor.fetchone()
            if row and row[0] > 0:
                return int(row[0])
        sql, params = queryset.order_by().values("pk").query.get_compiler(using=queryset.db).as_sql()
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def count(queryset, cap: int = EXACT_UP_TO) -> tuple[int, bool]:
    """(number, is_estimate): exact up to ``cap`` everywhere; above it, an estimate on PostgreSQL,
    MySQL and MariaDB."""
    if connections[queryset.db].vendor not in ("postgresql", "mysql"):
        return queryset.count(), False
    capped = capped_count(queryset, cap)
    if capped <= cap:
        return capped, False
    return max(estimated_count(queryset), capped), True


def distinct_values(field_name: str, limit: int = 200) -> list[str]:
    """Distinct values of an indexed column of Job by a loose index scan: one probe per value.

    ``SELECT DISTINCT`` would read every row (or every index entry); this walks the
    index from one value to the next, so it costs as many probes as there are values.
    """
    connection = connections[router.db_for_read(Job)]
    if connection.vendor not in ("postgresql", "sqlite"):
        return list(Job.objects.order_by(field_name).values_list(field_name, flat=True).distinct()[:limit])
    qn = connection.ops.quote_name
    table, col = qn(Job._meta.db_table), qn(Job._meta.get_field(field_name).column)
    sql = (f"WITH RECURSIVE walk(value) AS (SELECT MIN({col}) FROM {table} "
           f"UNION ALL SELECT (SELECT {col} FROM {table} WHERE {col} > walk.value ORDER BY {col} LIMIT 1) "
           f"FROM walk WHERE walk.value IS NOT NULL) "
           f"SELECT value FROM walk WHERE value IS NOT NULL LIMIT %s")
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]
