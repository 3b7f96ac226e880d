"""``path("jobs/", include("jobs.urls"))`` serves ``jobs/metrics`` and ``jobs/health`` (see jobs/views.py)."""

from django.urls import path

from . import views

app_name = "jobs"
urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    path("health", views.health, name="health"),
]
