"""``manage.py train_detector_baselines``: train the detector track's small-CNN baseline and submit it.

The shared GAN discriminator is the detector track's only downloaded baseline, and a weak one
(it was trained to guide its generator, not to detect it). This command trains the zoo's
``mnist_small_cnn_detector`` on public data only, the public MNIST half against as many fakes
drawn from the track's generator with the *public* seed, and submits it exactly as a researcher's
safetensors upload is submitted. Training is deterministic, so a re-run writes the same file
(same sha256), which is recognised and skipped.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from benchmarks.models import Track
from builders.demo import PUBLIC_FAKE_SEED
from bundles.baselines import submit_baseline
from bundles.models import public_part
from evaluator.data.evalsets import read_evaluation_set
from evaluator.errors import EvaluationError
from evaluator.models.loading import load_generator, load_model
from evaluator.spec import ArtifactSpec, InputSpec
from evaluator.testbed.detectors import (
    BASELINE_ARCHITECTURE,
    DEFAULT_EPOCHS,
    DEFAULT_SEED,
    detector_auc,
    sample_generator,
    train_detector,
)
from submissions.models import Submission

if TYPE_CHECKING:  # torch is imported only when the command runs
    from torch import nn

TRACK_SLUG = "mnist-gan-detector"
#: The public MNIST half: the public part of the track's split, as its bundle import wrote it.
PUBLIC_PART = "mnist-test-public"
ARCHITECTURE_LABEL = "Small CNN: conv 3x3 16/32 + max-pool, linear 1568-64-1"


class Command(BaseCommand):
    help = ("Train the small-CNN detector on the public MNIST half against public-seed GAN fakes and submit it "
            "as a public baseline of the mnist-gan-detector track (an already submitted artifact is skipped).")

    def add_arguments(self, parser: CommandParser) -> None:

        parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                            help=f"training seed (default {DEFAULT_SEED}); the same seed gives the same file")
        parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                            help=f"training epochs (default {DEFAULT_EPOCHS})")
        parser.add_argument("--dry-run", action="store_true", help="train and save, but submit nothing")

    def handle(self, *args: object, seed: int, epochs: int, dry_run: bool, **options: object) -> None:

        if epochs < 1:
            raise CommandError("--epochs must be at least 1")
        # The track is needed even for a dry run: the generator of the fakes is stored with it.
        track = Track.objects.filter(slug=TRACK_SLUG).first()
        if track is None or not track.generator:
            raise CommandError(f"There is no {TRACK_SLUG!r} track with a generator yet; run `manage.py build_demo`.")
        data_dir = Path(settings.ARENA_DATA_DIR)
        part = public_part(TRACK_SLUG, PUBLIC_PART)
        public_path = Path(settings.ARENA_DATA_DIR) / (part[0] if part else f"public/{TRACK_SLUG}/{PUBLIC_PART}")
        if not public_path.is_file():
            raise CommandError(f"The public MNIST half {public_path} is missing; run `manage.py build_demo` first "
                               "(it writes that file).")
        g = track.generator
        try:
            public = read_evaluation_set(public_path, part[1] if part else None)
            generator = load_generator(data_dir / g["relative_path"], g["architecture"], g.get("sha256", ""))
        except EvaluationError as exc:
            raise CommandError(f"The public training data cannot be read: {exc}") from exc
        reals = public.images.numpy()
        fakes = sample_generator(generator, len(reals), PUBLIC_FAKE_SEED, int(g.get("latent_dim", 0)))
        self.stdout.write(f"training {BASELINE_ARCHITECTURE} on {len(reals)} public MNIST images and {len(fakes)} "
                          f"GAN samples (public seed {PUBLIC_FAKE_SEED}), {epochs} epochs, seed {seed}")
        started = time.perf_counter()
        model = train_detector(BASELINE_ARCHITECTURE, reals, fakes, seed=seed, epochs=epochs)
        seconds = time.perf_counter() - started
        public_auc = detector_auc(model, reals, fakes)
        self.stdout.write(f"trained in {seconds:.1f} s; public training AUC {public_auc:.4f}")

        with tempfile.TemporaryDirectory(prefix="detector-baselines-") as tmp:
            path = Path(tmp) / f"{BASELINE_ARCHITECTURE}.safetensors"
            _save_weights(model, BASELINE_ARCHITECTURE, path)
            # Loaded back as the platform will load it, so a bad file fails here and not after upload.
            load_model(ArtifactSpec(str(path), "safetensors", architecture=BASELINE_ARCHITECTURE), InputSpec(1, 28, 28))
            if dry_run:
                self.stdout.write("dry run: nothing submitted")
                return
            name = baseline_title(epochs, seed)
            submission = submit_baseline(
                track, path, name=name, zoo_architecture=BASELINE_ARCHITECTURE,
                artifact_format=Submission.Format.SAFETENSORS, architecture=ARCHITECTURE_LABEL,
                training_data=f"MNIST test, public half ({len(reals):,}) vs {len(fakes):,} GAN samples "
                              f"(public seed {PUBLIC_FAKE_SEED})",
                license="MIT",
            )
        if submission is None:
            self.stdout.write(f"  {name}: already a baseline, skipped")
        else:
            self.stdout.write(self.style.SUCCESS(f"queued baseline {name} -> {track.slug} for evaluation"))


def _save_weights(model: nn.Module, architecture: str, path: Path) -> None:
    """Zoo safetensors exactly as ``evaluator convert`` writes them (weights plus the architecture's name)."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"architecture": architecture})


def baseline_title(epochs: int, seed: int) -> str:
    """A name that says what was trained on what, and tells seeds apart on the leaderboard."""
    name = f"Small CNN detector ({epochs} epochs, Adam, public MNIST half vs. public GAN samples)"
    return name if seed == DEFAULT_SEED else f"{name} [seed {seed}]"
