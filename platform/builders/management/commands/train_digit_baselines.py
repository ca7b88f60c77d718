"""``manage.py train_digit_baselines``: train the digits testbed and submit it as public baselines.

The effective-robustness line of the ``mnist-digits`` track is fitted over standard models; the
two shared LeNet-5s alone cannot fix a line, so this command trains the testbed of
:mod:`evaluator.testbed.digits` on the public MNIST half (the only data a baseline may see) and
submits each model exactly as a researcher's upload is submitted. Training is deterministic, so
a re-run produces the same artifacts and they are recognised (by sha256) and skipped.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from benchmarks.models import Track
from bundles.baselines import submit_baseline
from bundles.models import public_part
from evaluator.data.evalsets import read_evaluation_set
from evaluator.errors import EvaluationError
from evaluator.testbed.digits import DEFAULT_SEED, RECIPES, train_all
from submissions.models import Submission

if TYPE_CHECKING:  # the evaluator (and torch) is imported only when the command runs
    from evaluator.testbed.digits import BaselineRecipe, TrainedBaseline

TRACK_SLUG = "mnist-digits"
#: The public MNIST half: the public part of the track's split, as its bundle import wrote it.
PUBLIC_PART = "mnist-test-public"


class Command(BaseCommand):
    help = ("Train the digits baseline testbed on the public MNIST half and submit each model as a public "
            "baseline of the mnist-digits track (already submitted artifacts are skipped).")

    def add_arguments(self, parser: CommandParser) -> None:

        parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                            help=f"training seed (default {DEFAULT_SEED}); the same seed gives the same files")
        parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                            help="train only these recipes (by name)")
        parser.add_argument("--dry-run", action="store_true", help="train and export, but submit nothing")

    def handle(self, *args: object, seed: int, only: list[str] | None, dry_run: bool, **options: object) -> None:

        recipes = _select(RECIPES, only)
        track = None
        if not dry_run:
            track = Track.objects.filter(slug=TRACK_SLUG).first()
            if track is None:
                raise CommandError(f"There is no {TRACK_SLUG!r} track yet; run `manage.py build_demo` first.")
        part = public_part(TRACK_SLUG, PUBLIC_PART)
        public_path = Path(settings.ARENA_DATA_DIR) / (part[0] if part else f"public/{TRACK_SLUG}/{PUBLIC_PART}")
        if not public_path.is_file():
            raise CommandError(f"The public MNIST half {public_path} is missing; run `manage.py build_demo` first "
                               "(it writes that file).")
        try:
            public = read_evaluation_set(public_path, part[1] if part else None)
        except EvaluationError as exc:
            raise CommandError(f"The public MNIST half cannot be read: {exc}") from exc
        count = len(public)
        self.stdout.write(f"training {len(recipes)} recipe(s) on {count} public MNIST images, seed {seed}")
        with tempfile.TemporaryDirectory(prefix="digit-baselines-") as tmp:
            trained = train_all(public.images.numpy(), public.labels.numpy(), tmp, seed, recipes,
                                log=self.stdout.write)
            total = sum(item.train_seconds for item in trained)
            self.stdout.write(f"trained {len(trained)} model(s) in {total:.1f} s")
            if dry_run:
                self.stdout.write("dry run: nothing submitted")
                return
            assert track is not None
            made, skipped = self._submit(track, trained, seed, count)
        self.stdout.write(self.style.SUCCESS(
            f"queued {made} baseline submission(s) for evaluation; {skipped} already present"))

    def _submit(self, track: Track, trained: Sequence[TrainedBaseline], seed: int, count: int) -> tuple[int, int]:
        """Submit each exported model through the upload path, once per artifact sha256."""
        made = skipped = 0
        for item in trained:
            recipe = item.recipe
            name = recipe.title if seed == DEFAULT_SEED else f"{recipe.title} [seed {seed}]"
            submission = submit_baseline(
                track, item.path, name=name, artifact_format=Submission.Format.PT2, architecture=recipe.architecture,
                training_data=f"MNIST test, public half ({count:,})", license="MIT",
            )
            if submission is None:
                skipped += 1
                self.stdout.write(f"  {recipe.name}: already a baseline, skipped")
            else:
                made += 1
                self.stdout.write(f"  baseline {name} -> {track.slug}")
        return made, skipped


def _select(recipes: Sequence[BaselineRecipe], only: list[str] | None) -> list[BaselineRecipe]:
    """The recipes named by ``--only`` (in the testbed's order), or all of them."""
    if not only:
        return list(recipes)
    known = {recipe.name for recipe in recipes}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise CommandError(f"Unknown recipe(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}")
    return [recipe for recipe in recipes if recipe.name in set(only)]
