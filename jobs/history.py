"""The admin's history (``LogEntry``) for changes made to many rows at once.

Django's own ``LogEntry.objects.log_actions`` loads each object, asks for its content
type and renders it one by one, then ``bulk_create``s the entries (a single
``save()`` for one), which for a 100,000-job action means 100,000 model instances
in Python and, on PostgreSQL, more parameters in one INSERT than the protocol
allows. Here the rows changed come straight from the change's own statement
(``RETURNING``), and all their entries go into the table in one INSERT ... SELECT
over two arrays (PostgreSQL) or one JSON array (SQLite): a handful of parameters,
whatever the number of rows. Other databases get ``bulk_create``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import connections, router
from django.utils import timezone


def log_actions(user_id, model, objects: Sequence, *, action_flag: int, message: str = "") -> int:
    """One ``LogEntry`` per object (anything with ``pk`` and a ``str()``), by ``user_id``; returns how many."""
    if not objects:
        return 0
    using = router.db_for_write(LogEntry)
    connection = connections[using]
    content_type_id = ContentType.objects.db_manager(using).get_for_model(model, for_concrete_model=False).pk
    ids = [str(obj.pk) for obj in objects]
    reprs = [str(obj)[:200] for obj in objects]
    if connection.vendor not in ("postgresql", "sqlite"):
        LogEntry.objects.using(using).bulk_create(
            [LogEntry(user_id=user_id, content_type_id=content_type_id, object_id=pk, object_repr=text,
                      action_flag=action_flag, change_message=message) for pk, text in zip(ids, reprs)],
            batch_size=1000)
        return len(ids)
    meta = LogEntry._meta
    qn = connection.ops.quote_name
    columns = ", ".join(qn(meta.get_field(name).column) for name in (
        "action_time", "user", "content_type", "object_id", "object_repr", "action_flag", "change_message"))
    now = meta.get_field("action_time").get_db_prep_value(timezone.now(), connection)
    constants = [now, user_id, content_type_id]
    if connection.vendor == "postgresql":
        source, values = "unnest(%s::text[], %s::text[]) WITH ORDINALITY AS r(object_id, object_repr, n)", [ids, reprs]
        picked, order = "r.object_id, r.object_repr", "r.n"
    else:
        source, values = "json_each(%s) AS r", [json.dumps(list(zip(ids, reprs)))]
        picked, order = "json_extract(r.value, '$[0]'), json_extract(r.value, '$[1]')", "r.key"
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {qn(meta.db_table)} ({columns}) SELECT %s, %s, %s, {picked}, %s, %s "
                       f"FROM {source} ORDER BY {order}", [*constants, action_flag, message, *values])
    return len(ids)
