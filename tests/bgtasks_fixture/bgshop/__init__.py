"""A small shop app written for django-background-tasks (a fixture of the compat tests).

The tests run it twice: as it is, on the real django-background-tasks package in a
virtualenv of its own, and moved onto this project by changing one line of
``tasks.py`` (``from background_task import background`` becomes
``from jobs.compat import background``) and ``INSTALLED_APPS``.
"""
