"""Create (or update the password of) a user, for first runs and scripted set-ups."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a user if missing, and set its password."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--password", required=True)
        parser.add_argument("--staff", action="store_true", help="make the user staff and superuser")

    def handle(self, username: str, password: str, staff: bool, **options):
        user, created = get_user_model().objects.get_or_create(username=username)
        user.set_password(password)
        if staff:
            user.is_staff = user.is_superuser = True
        user.save()
        self.stdout.write(f"{'created' if created else 'updated'} user {username}")
