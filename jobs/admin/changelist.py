"""What the job list reads: the columns it needs, the last error taken out in SQL, counts, search.

Built to stay fast with millions of rows (PostgreSQL): no ``COUNT(*)`` over the table
on a page view (``show_full_result_count`` is off, and the filtered count is exact only
up to ``EstimatedCountPaginator.exact_up_to`` rows, a count over a LIMIT, beyond which
the planner's estimate is shown as "about N"); rows read only the columns the list
shows, plus the start of the last error's message: a constant number of queries
whatever the number of rows.
"""

from __future__ import annotations

from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db.models import F, Func, TextField
from django.utils.functional import cached_property

from .. import counts, search
from .control import held_back_reasons

# Columns the list never shows; the job page reads the whole row. (The backend alias is read:
# the attempt limit shown depends on it.)
LIST_DEFERRED = ("args", "kwargs", "return_value", "errors", "meta", "worker_ids")
LIST_ERROR_CHARS = 500  # of the last error's message, per row: the whole value is on the job page
MAX_SEARCH_LENGTH = 200  # longer patterns only cost the database time


class EstimatedCountPaginator(Paginator):
    """Exact counts up to ``exact_up_to`` rows, the PostgreSQL planner's estimate above.

    The exact part is ``SELECT COUNT(*) FROM (SELECT id ... LIMIT n+1)``, so its cost
    is bounded whatever the table size. Other databases count exactly.
    """

    exact_up_to = counts.EXACT_UP_TO
    count_is_estimate = False

    @cached_property
    def count(self) -> int:
        number, self.count_is_estimate = counts.count(self.object_list, self.exact_up_to)
        return number


class LastErrorMessage(Func):
    """The message of a job's latest error, taken out of the JSON by the database."""

    output_field = TextField()

    def __init__(self):
        super().__init__(F("errors"))

    # Only the start of the message is read: the list shows a line of it.
    def as_postgresql(self, compiler, connection, **extra):
        return Func.as_sql(self, compiler, connection,
                           template=f"LEFT(%(expressions)s -> -1 ->> 'message', {LIST_ERROR_CHARS})", **extra)

    def as_sqlite(self, compiler, connection, **extra):
        return Func.as_sql(self, compiler, connection,
                           template=f"substr(json_extract(%(expressions)s, '$[#-1].message'), 1, {LIST_ERROR_CHARS})",
                           **extra)

    def as_mysql(self, compiler, connection, **extra):
        # The last entry's index spelled out: MariaDB resolves '$[last]' in a query over many rows
        # from the first row's length only.
        return Func.as_sql(self, compiler, connection,
                           template=f"LEFT(JSON_UNQUOTE(JSON_EXTRACT(%(expressions)s, CONCAT('$[', "
                                    f"JSON_LENGTH(%(expressions)s) - 1, '].message'))), {LIST_ERROR_CHARS})", **extra)

    def as_sql(self, compiler, connection, **extra):
        return "NULL", []


class JobChangeList(ChangeList):
    def get_queryset(self, request, *args, **kwargs):
        queryset = super().get_queryset(request, *args, **kwargs)
        return queryset.defer(*LIST_DEFERRED).annotate(last_error=LastErrorMessage())

    def get_results(self, request):
        super().get_results(request)
        # Why READY jobs of limit keys wait: one query for the page (only when the page has such jobs).
        self.result_list = list(self.result_list)
        reasons = held_back_reasons(self.result_list)
        for job in self.result_list:
            job.held_back = reasons.get(job.pk, "")


def search_jobs(queryset, search_term: str):
    """A job id (``123`` or ``#123``), else part of a task path or of an error's text."""
    term = search_term.strip()[:MAX_SEARCH_LENGTH]
    if not term:
        return queryset
    number = term.lstrip("#")
    if number.isascii() and number.isdigit() and len(number) <= 18:  # "²" is a digit to str.isdigit()
        return queryset.filter(pk=int(number))
    return search.text_search(queryset, term)
