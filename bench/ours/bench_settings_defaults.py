"""Our queue in a site that kept Django's defaults (the W2 variant "defaults").

What a site gets when it installs the app and changes nothing else the README
recommends: ``DEBUG = True`` (every query recorded), the database as dj-database-url
parses the URL with no options (``CONN_MAX_AGE`` 0; on SQLite no busy timeout beyond
Python's 5 s, DEFERRED transactions and ``synchronous=FULL``, the file staying in the
WAL mode it already has), and the worker's default threads.
"""

import os

import dj_database_url
from bench_settings import *  # noqa: F403

DEBUG = True
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
