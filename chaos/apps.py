from django.apps import AppConfig


class ChaosConfig(AppConfig):
    name = "chaos"
    verbose_name = "Fault test"
    default_auto_field = "django.db.models.BigAutoField"
