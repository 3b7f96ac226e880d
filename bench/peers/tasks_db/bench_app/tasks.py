"""Tasks for django-tasks-db, declared with Django's own ``django.tasks.task``."""

from benchcommon import write_stamp
from django.tasks import task


@task
def noop():
    pass


@task
def stamp(token):
    write_stamp(token)
