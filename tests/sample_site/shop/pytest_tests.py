"""The same owner's tests in pytest-django's style, with a fixture that runs the queue."""

from unittest import mock

import pytest

from jobs.testing import assert_enqueued, drain

from .tasks import send_receipt


@pytest.fixture
def run_jobs(db):
    """Run every job enqueued so far (retries included) and return the counts."""
    return lambda **options: drain(with_scheduled=True, **options)


def test_retries_until_the_mail_server_answers(run_jobs):
    result = send_receipt.enqueue(7, email="ann@example.com")
    down = ConnectionError("mail server down")
    with mock.patch("shop.tasks.mail.send_mail", side_effect=[down, down, 1]):
        assert run_jobs().successful == 1
    result.refresh()
    assert result.status == "SUCCESSFUL" and len(result.errors) == 2


def test_the_order_view_enqueues_a_receipt(client, run_jobs, mailoutbox):
    assert client.post("/orders/", {"order_id": "9", "email": "cy@example.com"}).status_code == 202
    assert_enqueued(send_receipt, args=[9], kwargs={"email": "cy@example.com"}, count=1)
    run_jobs()
    assert [m.subject for m in mailoutbox] == ["Order 9"]


def test_raise_errors_shows_the_tasks_own_exception(run_jobs):
    send_receipt.enqueue(1, email="x@example.com")
    with mock.patch("shop.tasks.mail.send_mail", side_effect=ValueError("bad address")):
        with pytest.raises(ValueError, match="bad address"):
            run_jobs(raise_errors=True)


@pytest.mark.django_db(transaction=True)
def test_drain_after_commit():
    send_receipt.enqueue(12, email="ed@example.com")
    assert drain().successful == 1
