"""``metrics`` (Prometheus) and ``health`` (load balancers, uptime checks), for jobs.urls.

Both are read from the database at each request, in a few queries bounded by indexes
(jobs/stats.py), and both answer only staff users (a session) or a request bearing
``Authorization: Bearer <settings.JOBS_METRICS_TOKEN>``, compared in constant time;
everyone else gets 403, also when no token is set.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from . import stats

FORBIDDEN = "Forbidden: staff users, or Authorization: Bearer <JOBS_METRICS_TOKEN>.\n"


def bearer_token_matches(request) -> bool:
    """The request bears JOBS_METRICS_TOKEN; never true when the setting is empty or unset."""
    token = getattr(settings, "JOBS_METRICS_TOKEN", None)
    if not token or not isinstance(token, str):
        return False
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(supplied.strip().encode(), token.encode())


def is_allowed(request) -> bool:
    """The token first: it needs no database. Then a staff user's session: a session or user
    that cannot be read (the database is down) is no staff user, so who may read is decided
    before anything is said about the database (403, never 503, for everyone else)."""
    if bearer_token_matches(request):
        return True
    user = getattr(request, "user", None)  # None without Django's authentication middleware
    try:
        return bool(user is not None and user.is_active and user.is_staff)
    except DatabaseError:
        return False


def _unavailable(exc: DatabaseError) -> JsonResponse:
    return JsonResponse({"status": "unavailable", "reason": f"the database did not answer ({type(exc).__name__})"},
                        status=503)


@never_cache
@require_safe
def health(request):
    """200 while the database answers and a worker heartbeated within stale_after; 503 saying why otherwise."""
    now = timezone.now()
    if not is_allowed(request):
        return HttpResponse(FORBIDDEN, status=403, content_type="text/plain; charset=utf-8")
    try:
        stale = stats.stale_after()
        alive, last = stats.liveness(now, stale)
    except DatabaseError as exc:
        return _unavailable(exc)
    body = {"workers_alive": alive, "stale_after": stale,
            "last_heartbeat_age_seconds": round((now - last).total_seconds(), 3) if last else None}
    if alive:
        return JsonResponse({"status": "ok", **body})
    if last is None:
        reason = "no worker has ever sent a heartbeat"
    else:
        age = body["last_heartbeat_age_seconds"]
        reason = f"no worker heartbeated within {stale:g} s (the last heartbeat was {age:.0f} s ago)"
    return JsonResponse({"status": "unhealthy", "reason": reason, **body}, status=503)


@never_cache
@require_safe
def metrics(request):
    """The Prometheus text format (or OpenMetrics, when the scraper asks for it)."""
    if not is_allowed(request):
        return HttpResponse(FORBIDDEN, status=403, content_type="text/plain; charset=utf-8")
    try:
        from . import prometheus
    except ImportError as exc:
        return HttpResponse(f"Not implemented: the metrics need prometheus_client, which is not installed "
                            f"(pip install 'prometheus_client>=0.17'): {exc}\n", status=501,
                            content_type="text/plain; charset=utf-8")
    try:
        body, content_type = prometheus.render(timezone.now(), request.headers.get("Accept", ""))
    except DatabaseError as exc:
        return _unavailable(exc)
    return HttpResponse(body, content_type=content_type)
