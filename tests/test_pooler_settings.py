"""Settings for PostgreSQL behind a pooler (``jobs.pooler``), and prepared statements without one."""

import pytest
from django.db import connection
from django.utils import timezone

from jobs.checks import pooler_problems
from jobs.sql import statements
from tests import tasks


def ids(problems):
    return [problem.id for problem in problems]


def test_a_prepare_threshold_from_a_url_query_string_is_an_error_naming_it():
    problems = pooler_problems({"default": {"ENGINE": "django.db.backends.postgresql",
                                            "OPTIONS": {"prepare_threshold": "None"}}}, "")
    assert ids(problems) == ["jobs.E030"]
    assert "['prepare_threshold'] is 'None'" in problems[0].msg and "DATABASE_POOLER" in problems[0].hint


def test_behind_a_pooler_without_a_direct_url_the_check_says_workers_poll():
    pooled = {"default": {"ENGINE": "django.db.backends.postgresql", "OPTIONS": {"prepare_threshold": None}}}
    assert ids(pooler_problems(pooled, "")) == ["jobs.I031"]
    assert pooler_problems(pooled, "postgres://direct/db") == []


def test_a_direct_url_must_be_a_postgres_url():
    assert ids(pooler_problems({}, "mysql://x")) == ["jobs.E032"]


def test_database_pooler_transaction_gives_the_settings_the_readme_prescribes():
    from queue_project.settings import database_from_url

    config = database_from_url("postgres://u@h:6432/db", pooler="transaction")
    assert config["OPTIONS"]["prepare_threshold"] is None and config["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert "prepare_threshold" not in database_from_url("postgres://u@h:5432/db", pooler="")["OPTIONS"]
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="DATABASE_POOLER='statement'"):
        database_from_url("postgres://u@h/db", pooler="statement")


@pytest.mark.postgres_only
def test_the_claim_is_prepared_on_the_server_without_a_pooler(db):
    """Django leaves psycopg's prepare_threshold at None, under which nothing is ever prepared
    (prepare=True included): the worker's statements must be prepared all the same."""
    tasks.add.enqueue(1, 2)
    statements(connection).finish_and_claim([], worker_id="me", now=timezone.now(), limit=1, queues=None,
                                            backend="default")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone()[0] >= 1
