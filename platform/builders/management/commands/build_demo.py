"""``manage.py build_demo``: assemble the demo's benchmark bundles from the shared mirror and import them."""

from django.conf import settings
from django.core.management.base import BaseCommand

from builders.demo import DETECTOR_TRACK, TRACK_SLUGS, DemoBuilder
from builders.preparation import announce, built_in_foreground


class Command(BaseCommand):
    help = ("Assemble the demo's bundles (platform/builders/bundles/*.yaml) from the public data and pretrained "
            "weights (local mirrors when given) and import them with import_benchmark, baselines included.")

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
        builder.build(tracks, fast=fast, baselines=not no_baselines)
        if fast:  # the track pages say what `prepare_demo` is yet to do
            announce(set(tracks or TRACK_SLUGS), baselines=not no_baselines)
        elif DETECTOR_TRACK in (tracks or TRACK_SLUGS):
            built_in_foreground()
