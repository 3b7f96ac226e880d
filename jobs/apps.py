from django.apps import AppConfig

# What TASKS becomes when a project adds "jobs" to INSTALLED_APPS and sets no TASKS of
# its own (a project moving from django-background-tasks, say): this database backend,
# accepting any queue name, as an empty QUEUES means to Django.
DEFAULT_TASKS = {"default": {"BACKEND": "jobs.backends.DatabaseBackend", "QUEUES": []}}


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from . import checks  # noqa: F401  (registers the app's system checks)
        from .compat import render_origin
        from .origins import register_origin

        # The django-background-tasks shim says where its jobs came from like any other app
        # would: here rather than at import of jobs.compat, which a web process may never do.
        register_origin("compat", render_origin)

        # The admin index shows the queue's state beside the apps, unless the project has an index of its own.
        from django.apps import apps

        if apps.is_installed("django.contrib.admin"):
            from django.contrib import admin

            if admin.site.index_template is None:
                admin.site.index_template = "admin/jobs/index.html"

        if not settings.is_overridden("TASKS"):
            settings.TASKS = DEFAULT_TASKS
