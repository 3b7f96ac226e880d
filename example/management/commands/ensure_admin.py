"""``manage.py ensure_admin``: a local ``admin`` superuser for ``make run``.

The first run creates it with a random password, prints the password and keeps it
in ``.admin-password`` (git-ignored) so later runs can remind you.
"""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

PASSWORD_FILE = Path(settings.BASE_DIR) / ".admin-password"


class Command(BaseCommand):
    help = "Create the local 'admin' superuser if there is none, and say how to log in."

    def handle(self, *args, **options):
        users = get_user_model().objects
        if not users.filter(username="admin").exists():
            password = secrets.token_urlsafe(12)
            users.create_superuser("admin", "admin@example.com", password)
            PASSWORD_FILE.write_text(password + "\n")
            PASSWORD_FILE.chmod(0o600)
            self.stdout.write(f"Created the admin user. Log in as 'admin' with password: {password}")
        elif PASSWORD_FILE.exists():
            self.stdout.write(f"Log in as 'admin' with password: {PASSWORD_FILE.read_text().strip()}")
        else:
            self.stdout.write("Log in as 'admin' (change its password with: manage.py changepassword admin)")
