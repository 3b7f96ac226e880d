"""``manage.py ensure_admin``: a local ``admin`` superuser for ``make run``.

The first run creates it with a random password, prints the password and keeps it
in ``.admin-password`` (git-ignored) so later runs can remind you.
"""

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

PASSWORD_FILE = Path(settings.BASE_DIR) / ".admin-password"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, from the first byte on.

    Created with mode 0600 (not written, then chmod'ed: others could read it in
    between); an existing file is truncated and made private; a symlink is refused.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class Command(BaseCommand):
    help = "Create the local 'admin' superuser if there is none, and say how to log in."

    def handle(self, *args, **options):
        users = get_user_model().objects
        if not users.filter(username="admin").exists():
            password = secrets.token_urlsafe(12)
            users.create_superuser("admin", "admin@example.com", password)
            write_private(PASSWORD_FILE, password + "\n")
            self.stdout.write(f"Created the admin user. Log in as 'admin' with password: {password}")
        elif PASSWORD_FILE.exists():
            self.stdout.write(f"Log in as 'admin' with password: {PASSWORD_FILE.read_text().strip()}")
        else:
            self.stdout.write("Log in as 'admin' (change its password with: manage.py changepassword admin)")
