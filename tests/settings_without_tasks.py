"""The test settings with no TASKS at all, as in a project that only added "jobs" to INSTALLED_APPS."""

from tests.settings import *  # noqa: F403

del TASKS  # noqa: F821
