"""``manage.py build_demo``: build the demo benchmark from real public data and baselines."""

from django.conf import settings
from django.core.management.base import BaseCommand

from builders.demo import DETECTOR_TRACK, TRACK_SLUGS, DemoBuilder
from builders.preparation import announce, built_in_foreground


class Command(BaseCommand):
    help = "Fetch the public data (from a local mirror when given), build the demo tracks, submit the baselines."

    def add_arguments(self, parser):
        parser.add_argument("--data-mirror", default=settings.ARENA_DATA_MIRROR,
                            help="local mirror of the public data sets (default: ARENA_DATA_MIRROR)")
        parser.add_argument("--model-mirror", default=settings.ARENA_MODEL_MIRROR,
                            help="folder of the shared pretrained weights (default: ARENA_MODEL_MIRROR)")
        parser.add_argument("--limit", type=int, default=None, help="at most this many images per evaluation set")
        parser.add_argument("--no-baselines", action="store_true", help="build the tracks only")
        parser.add_argument("--fast", action="store_true",
                            help="train nothing: leave the transfer-attack set to `manage.py prepare_demo` "
                                 "(what scripts/demo does, to serve pages within a couple of minutes)")
        parser.add_argument("--track", action="append", choices=TRACK_SLUGS, dest="tracks",
                            help="build only this track (repeatable; default: all)")

    def handle(self, data_mirror, model_mirror, limit, no_baselines, tracks=None, fast=False, **options):
        builder = DemoBuilder(data_mirror or None, model_mirror or None, log=self.stdout.write, limit=limit)
        builder.build(tracks, fast=fast)
        if not no_baselines:
            made = builder.register_baselines(tracks)
            self.stdout.write(f"queued {len(made)} baseline submission(s) for evaluation")
        if fast:  # the track pages say what `prepare_demo` is yet to do
            announce(set(tracks or TRACK_SLUGS), baselines=not no_baselines)
        elif DETECTOR_TRACK in (tracks or TRACK_SLUGS):
            built_in_foreground()
