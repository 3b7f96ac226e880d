"""The site owner's tests, run by Django's runner (manage.py test)."""

import time
from unittest import mock

from django.core import mail
from django.test import TestCase, TransactionTestCase

from jobs.testing import assert_enqueued, assert_not_enqueued, drain

from .tasks import send_receipt, stuck


class SendReceiptTests(TestCase):
    def test_retries_until_the_mail_server_answers(self):
        result = send_receipt.enqueue(7, email="ann@example.com")
        down = ConnectionError("mail server down")
        with mock.patch("shop.tasks.mail.send_mail", side_effect=[down, down, 1]) as send:
            drained = drain(with_scheduled=True)
        self.assertEqual((drained.ran, drained.retried, drained.successful), (3, 2, 1))
        self.assertEqual(send.call_count, 3)
        result.refresh()
        self.assertEqual(result.status, "SUCCESSFUL")
        self.assertEqual([e.exception_class_path for e in result.errors], ["builtins.ConnectionError"] * 2)

    def test_other_errors_are_not_retried(self):
        send_receipt.enqueue(8, email="bob@example.com")
        with mock.patch("shop.tasks.mail.send_mail", side_effect=ValueError("bad address")):
            drained = drain(with_scheduled=True)
        self.assertEqual((drained.ran, drained.failed), (1, 1))

    def test_the_order_view_enqueues_a_receipt(self):
        response = self.client.post("/orders/", {"order_id": "9", "email": "cy@example.com"})
        self.assertEqual(response.status_code, 202)
        assert_enqueued(send_receipt, args=[9], kwargs={"email": "cy@example.com"})
        drain()
        assert_not_enqueued(send_receipt)
        self.assertEqual(mail.outbox[0].subject, "Order 9")

    def test_a_failed_assertion_lists_what_is_enqueued(self):
        send_receipt.enqueue(10, email="di@example.com")
        with self.assertRaisesMessage(AssertionError, "shop.tasks.send_receipt(args=[10], kwargs={'email': "
                                                      "'di@example.com'}) queue='default'"):
            assert_enqueued(send_receipt, args=[11])

    def test_a_stuck_task_is_stopped_at_its_timeout(self):
        result = stuck.enqueue()
        started = time.monotonic()
        drain()
        self.assertLess(time.monotonic() - started, 10)
        result.refresh()
        self.assertEqual(result.errors[0].exception_class_path, "jobs.exceptions.JobTimeout")


class CommittedTests(TransactionTestCase):
    def test_drain_after_commit(self):
        send_receipt.enqueue(12, email="ed@example.com")
        self.assertEqual(drain().successful, 1)
        self.assertEqual(len(mail.outbox), 1)
