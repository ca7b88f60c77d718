"""``manage.py prepare_demo``: the demo's slow phase, after ``build_demo --fast`` and once the site is up.

Builds the detector track's transfer-attack set and trains the detector and digits baseline
testbeds, recording each step's progress for the track pages (:mod:`builders.preparation`).
``scripts/demo`` runs it in the background; it can be run again at any time (a second run while
one is going exits at once; work already done is recognised and kept).
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from builders.demo import DemoBuilder
from builders.preparation import exclusive, prepare


class Command(BaseCommand):
    help = ("Build the demo's slow parts in the background (the transfer-attack set, the baseline testbeds), "
            "showing their progress on the track pages; run after `build_demo --fast`.")

    def add_arguments(self, parser):
        parser.add_argument("--data-mirror", default=settings.ARENA_DATA_MIRROR,
                            help="local mirror of the public data sets (default: ARENA_DATA_MIRROR)")
        parser.add_argument("--model-mirror", default=settings.ARENA_MODEL_MIRROR,
                            help="folder of the shared pretrained weights (default: ARENA_MODEL_MIRROR)")
        parser.add_argument("--limit", type=int, default=None,
                            help="at most this many images per evaluation set (as given to build_demo)")
        parser.add_argument("--no-baselines", action="store_true", help="build the transfer-attack set only")

    def handle(self, data_mirror, model_mirror, limit, no_baselines, **options):
        builder = DemoBuilder(data_mirror or None, model_mirror or None, log=self.stdout.write, limit=limit)
        with exclusive() as held:
            if not held:
                self.stdout.write("another prepare_demo is running; nothing to do")
                return
            failed = prepare(builder, self.stdout, baselines=not no_baselines)
        if failed:
            raise CommandError(f"failed: {', '.join(failed)} (the track pages say why; the log has the traceback)")
        self.stdout.write(self.style.SUCCESS("the demo is fully prepared"))
