#!/usr/bin/env python
"""A small site, as `django-admin startproject` makes one, whose own tests use jobs.testing."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sample_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
