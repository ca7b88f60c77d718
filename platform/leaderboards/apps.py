from django.apps import AppConfig


class LeaderboardsConfig(AppConfig):
    name = "leaderboards"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Keep cached leaderboards in step with the models they are built from (leaderboards.cache), and
        refit a track's baseline lines when one of its baselines finishes (leaderboards.fits).

        Imported here, not at the top: these modules import models, which Django allows only once
        the app registry is ready.
        """
        from leaderboards.cache import connect_signals
        from leaderboards.fits import refit_after_result
        from submissions.arrival import result_recorded

        connect_signals()
        result_recorded.connect(refit_after_result, dispatch_uid="leaderboards.fits.refit_after_result")
