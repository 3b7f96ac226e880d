"""WSGI entry point, for gunicorn or uWSGI (see the README's deployment section)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "queue_project.settings")
application = get_wsgi_application()
