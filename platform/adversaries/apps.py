from django.apps import AppConfig


class AdversariesConfig(AppConfig):
    """Attack submissions (issue 20): researchers' attacks, run against every public model of their track."""

    name = "adversaries"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the attack task in every process (dispatch sends it by name; eager mode runs it in place),
        listen for finished models, which every active attack of their track then faces, and join the
        watchdog's sweeps (lost attack runs)."""
        from adversaries import recovery, scheduling, tasks  # noqa: F401  (imported for their registrations)
