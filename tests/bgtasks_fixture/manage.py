#!/usr/bin/env python
"""manage.py of the small django-background-tasks project (a test fixture)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bgproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
