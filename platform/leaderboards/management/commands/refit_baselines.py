"""``manage.py refit_baselines``: refit every track's effective-robustness lines now."""

from django.core.management.base import BaseCommand

from benchmarks.models import Track
from leaderboards.fits import refit_track


class Command(BaseCommand):
    help = "Refit the effective-robustness baseline line of every (track, shift set, transform)."

    def handle(self, **options):
        for track in Track.objects.all():
            for fit in refit_track(track):
                left_out = len(fit.fit.get("excluded", []))
                self.stdout.write(
                    f"{track.slug} {fit.shift_set.name} {fit.transform}: slope {fit.slope:.3f}, "
                    f"intercept {fit.intercept:.3f}, {fit.n_models} models, {left_out} left out "
                    f"(saturated or below the track's floor), version {fit.fit_version[:12]}"
                )
