"""Job rows as the admin reads them: whatever a row holds, the list and the job page render
and say what is damaged.

Whoever can write the table can store values the ORM cannot hand back: 'infinity' or
year 20000 as a time on PostgreSQL (the driver raises inside the fetch, for the whole
page), text as a time or a number on SQLite (the converter raises, or a comparison
does). The admin's queryset therefore reads each time column as text and each number
as stored, and converts them here, one value at a time: a value that does not convert
becomes the column's empty value (None, or 0 for a count) and a line in
``job.damage``, which the list marks ("damaged") and the job page lists.
"""

from __future__ import annotations

from django.db import connections, models
from django.db.models import F, TextField
from django.db.models.functions import Cast
from django.db.models.query import ModelIterable

from ..models import Job
from ..rows import stored_datetime

TIMES = tuple(f.name for f in Job._meta.concrete_fields if isinstance(f, models.DateTimeField))
NUMBERS = {f.name: f.default if isinstance(f.default, int) else None for f in Job._meta.concrete_fields
           if isinstance(f, models.IntegerField) and not f.primary_key}
STORED = "_stored_"  # the text of a time column: the annotation's prefix


class ReadableRows(ModelIterable):
    """Jobs whose time columns came as text (``readable``): each converted, or marked damaged."""

    def __iter__(self):
        zone = connections[self.queryset.db].timezone
        for job in super().__iter__():
            damage = []
            for name in TIMES:
                if STORED + name not in job.__dict__:
                    continue
                text = job.__dict__.pop(STORED + name)
                try:
                    job.__dict__[name] = stored_datetime(text, zone)
                except (TypeError, ValueError, OverflowError):
                    job.__dict__[name] = None
                    damage.append(f"{name}: {str(text)[:60]!r} is not a time")
            for name, empty in NUMBERS.items():
                value = job.__dict__.get(name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    job.__dict__[name] = empty
                    damage.append(f"{name}: {str(value)[:60]!r} is not an integer")
            job.damage = damage
            yield job


def readable(queryset):
    """``queryset`` (of Job) reading its rows as ``ReadableRows`` do."""
    queryset = queryset.defer(*TIMES).annotate(**{STORED + name: Cast(F(name), TextField()) for name in TIMES})
    queryset._iterable_class = ReadableRows
    return queryset
