import time

from django.core import mail

from jobs import task


@task(max_attempts=3, retry_on=(ConnectionError,))
def send_receipt(order_id, email):
    mail.send_mail(f"Order {order_id}", "Thank you!", "shop@example.com", [email])
    return order_id


@task(timeout=1, max_attempts=1)
def stuck():
    time.sleep(60)
