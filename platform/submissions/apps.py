from django.apps import AppConfig


class SubmissionsConfig(AppConfig):
    name = "submissions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the Celery tasks in every process (web included): :mod:`submissions.dispatch` sends the
        evaluation task by name, and only a registered task runs in place in eager mode."""
        from submissions import tasks  # noqa: F401  (imported for its task registrations)
