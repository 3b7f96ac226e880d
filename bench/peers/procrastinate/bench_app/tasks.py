"""Tasks for procrastinate, registered on the Django integration's app."""

from benchcommon import write_stamp
from procrastinate.contrib.django import app


@app.task
def noop():
    pass


@app.task
def stamp(token):
    write_stamp(token)
