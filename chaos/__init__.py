"""``make chaos``: many workers on several hosts sharing one PostgreSQL, under overlapping faults.

A Jepsen-style test of the queue's claims: at-least-once, fencing of zombies, lost
workers taken back as a counted attempt, clean shutdown. Each worker process runs
on its own "host" (a Linux network namespace) so that it can be cut off from the
database while it keeps running; a producer enqueues a seeded mix of jobs; a fault
injector kills, stops, terminates and partitions workers and restarts the database;
after everything drains the checker compares what ran (each task records its effect)
with what the job rows say. Half of the hosts (the even-numbered ones) run
``process_tasks --processes 2`` and alone serve the ``hard`` queue: jobs that hold the
GIL, or block in C, past ``stale_after`` or their timeout. ``python -m chaos --help``.

The package is also the Django app ``chaos`` (its tasks and the effect table), which
only ``chaos.settings`` installs.
"""
