from django.apps import AppConfig


class LeaderboardsConfig(AppConfig):
    name = "leaderboards"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Keep cached leaderboards in step with the models they are built from (leaderboards.cache)."""
        from leaderboards.cache import connect_signals

        connect_signals()
