"""PostgreSQL behind a connection pooler in transaction mode (PgBouncer's ``pool_mode = transaction``).

Such a pooler lends a server connection to a client for one transaction at a time, so
nothing that lives in a server session may be relied on: prepared statements (PgBouncer
before 1.21 does not carry them over), ``SET`` session settings (they stay on the server
connection and reach whichever client borrows it next), and ``LISTEN`` (the
notifications go to a server connection that is no longer linked to the listener;
PgBouncer drops them with "got packet 'A' from server when not linked").

A project says it is behind one with ``"prepare_threshold": None`` in its database's
OPTIONS, which ``queue_project/settings.py`` sets when ``DATABASE_POOLER=transaction``.
Then the worker prepares nothing, sets no session settings, and listens for wake-ups
and cancels only on the direct connection in ``JOBS_DIRECT_DATABASE_URL`` (a URL of the
same database that bypasses the pooler), or not at all: it polls.
"""

from __future__ import annotations

from django.conf import settings

DIRECT_URL_SETTING = "JOBS_DIRECT_DATABASE_URL"


def transaction_pooled(settings_dict: dict) -> bool:
    """Whether a database's connections go through a transaction pooler (an explicit
    ``prepare_threshold`` of None in its OPTIONS; Django's default leaves the key out)."""
    options = settings_dict.get("OPTIONS") or {}
    return settings_dict.get("ENGINE", "").endswith("postgresql") and "prepare_threshold" in options \
        and options["prepare_threshold"] is None


def direct_url() -> str:
    """The direct connection's URL for LISTEN behind a pooler; empty when there is none."""
    value = getattr(settings, DIRECT_URL_SETTING, "") or ""
    return value if isinstance(value, str) else ""
