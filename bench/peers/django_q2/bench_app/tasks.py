"""Task functions for django-q2, which enqueues them by dotted path."""

from benchcommon import write_stamp


def noop():
    pass


def stamp(token):
    write_stamp(token)
