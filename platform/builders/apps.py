from django.apps import AppConfig


class BuildersConfig(AppConfig):
    """Builds benchmarks from the shared data: the demo installation and the baseline testbeds.

    The top layer of the platform: it creates tracks (benchmarks), submits baselines (submissions)
    and refits their lines (leaderboards), so it may import every other app and none imports it.
    """

    name = "builders"
    default_auto_field = "django.db.models.BigAutoField"
