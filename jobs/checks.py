"""App-level system checks. Backend OPTIONS are checked by ``DatabaseBackend.check()``,
which Django's tasks framework runs as part of ``manage.py check``."""

from django.core import checks


@checks.register(checks.Tags.compatibility)
def check_framework_app(app_configs=None, **kwargs):
    """On Django 5.2 the backport must be an installed app, or its checks never run."""
    import django
    from django.conf import settings

    if django.VERSION < (6, 0) and "django_tasks" not in settings.INSTALLED_APPS:
        return [checks.Error("Django < 6.0 needs 'django_tasks' (the django-tasks backport) in INSTALLED_APPS",
                             id="jobs.E010")]
    return []


# RFC 6750's b64token: what a client can send after "Bearer " in an Authorization header.
TOKEN_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
SHORT_TOKEN = 24


@checks.register(checks.Tags.security)
def check_metrics_token(app_configs=None, **kwargs):
    """JOBS_METRICS_TOKEN, when set, must be a token a client can send, and hard to guess."""
    from django.conf import settings

    token = getattr(settings, "JOBS_METRICS_TOKEN", None)
    if token is None or token == "":
        return []  # no token: only staff users reach metrics and health
    if not isinstance(token, str) or not set(token) <= TOKEN_CHARACTERS:
        shown = type(token).__name__ if not isinstance(token, str) else "characters outside A-Z a-z 0-9 - . _ ~ + / ="
        return [checks.Error(f"JOBS_METRICS_TOKEN must be a string of A-Z a-z 0-9 - . _ ~ + / = (got {shown})",
                             hint="For example: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
                             obj="settings.JOBS_METRICS_TOKEN", id="jobs.E020")]
    if len(token) < SHORT_TOKEN:
        return [checks.Warning(f"JOBS_METRICS_TOKEN is {len(token)} characters long: easy to guess",
                               hint=f"Use at least {SHORT_TOKEN}: python -c 'import secrets; "
                                    f"print(secrets.token_urlsafe(32))'",
                               obj="settings.JOBS_METRICS_TOKEN", id="jobs.W021")]
    return []
