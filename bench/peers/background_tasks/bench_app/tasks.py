"""Tasks for django-background-tasks; its worker autodiscovers ``<app>.tasks``."""

from background_task import background
from benchcommon import write_stamp


@background
def noop():
    pass


@background
def stamp(token):
    write_stamp(token)
