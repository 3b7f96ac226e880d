"""The test settings as a new site has them: no LOGGING, DEBUG on (``django-admin startproject``)."""

from tests.settings import *  # noqa: F403

LOGGING: dict = {}
DEBUG = True
