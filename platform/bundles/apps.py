from django.apps import AppConfig


class BundlesConfig(AppConfig):
    """Benchmark bundles: a YAML manifest plus data, imported into tracks and exported for review."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "bundles"
