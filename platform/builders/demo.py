"""The demo benchmark: bundles of real public data and real pretrained baselines, imported like any other.

Every demo track is a benchmark bundle whose manifest lives in ``platform/builders/bundles/``
(``demo-digits.yaml``, ``demo-detector.yaml``, ``demo-cifar10.yaml``, and ``usps-digits.yaml``, a
track that exists only as its manifest). What a track holds, how its hidden sets are drawn, which
shifts are generated and which baselines it has is bundle content, read by the importer
(:mod:`bundles.importer`) exactly as a host's bundle is. This module only **assembles** the
bundles: it reads a manifest, places the data files it names next to it (from the shared mirror,
checked against the data registry's hashes; see :data:`PROVIDERS`), shrinks it for a small demo
(``limit``, tests), and imports it through ``manage.py import_benchmark``.

Every seed that decides hidden data comes from the installation's secret (:mod:`benchmarks.hidden_seeds`)
through a name in the manifest (``secret: mnist-split``) and the benchmark's slug, never from a
number in a file: nothing in the repository or on the site rebuilds the hidden sets. Tracks of one
benchmark that name the same secret draw the same way, so the digits track, the detector track and
the USPS track share one hidden MNIST half. (That half is still part of a public data set: whoever
holds the public half also holds its complement. The public half is kept for baseline training; a
benchmark that needs truly unseen images needs images that were never published.)

Two phases. :meth:`DemoBuilder.build` with ``fast=True`` imports every set computed in seconds and
trains nothing; the detector track's transfer-attack set, which trains a surrogate detector and
attacks through it (minutes), is a deferred set of its bundle, built by
:meth:`DemoBuilder.build_transfer_set` (``import_benchmark --deferred``), which ``scripts/demo``
runs after the server is up (``manage.py prepare_demo``, :mod:`builders.preparation`). A set is
registered only once its file is complete, so an evaluation that starts before then lacks its score.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from django.conf import settings
from django.core.management import call_command

from benchmarks.hidden_seeds import HiddenSeeds, load_or_create
from benchmarks.models import Benchmark, EvaluationSet, Track
from bundles.importer import complete_deferred, data_files, files_digest, split_seed_name
from evaluator.data.evalsets import split_indices
from evaluator.data.fetch import MIRROR_ENV, fetch_dataset, load_dataset, verify_dataset
from evaluator.data.framing import usps_to_mnist_framing
from evaluator.data.registry import DatasetSource, announced_datasets, get_dataset, list_datasets, pin_from_folder
from evaluator.errors import EvaluationError
from submissions.models import IllegalTransition, Result, Submission
from submissions.services import rerun

BENCHMARK_SLUG = "demo"
DETECTOR_TRACK = "mnist-gan-detector"
#: The detector track's black-box transfer-attack set: deferred in its bundle (minutes of training).
TRANSFER_SET = "mnist-vs-gan-transfer"
#: The folder of the demo's manifests.
MANIFESTS = Path(__file__).resolve().parent / "bundles"
#: Each demo track and its bundle's manifest, in build order (``build_demo --track`` builds a subset).
BUNDLES = {"mnist-digits": "demo-digits.yaml", "mnist-gan-detector": "demo-detector.yaml",
           "cifar10-jpeg": "demo-cifar10.yaml", "usps-digits": "usps-digits.yaml"}
TRACK_SLUGS = tuple(BUNDLES)
#: The secret the demo's bundles name for their MNIST split (the public half is its complement).
MNIST_SPLIT_SECRET = "mnist-split"
#: The demo tracks' public ``seed`` (pages and the API report it with every score): the evaluator's own random
#: choices (which hidden points are attacked, the attacks' random starts), unrelated to the hidden-data secret.
TRACK_SEED = 61125
#: Seed of the *public* GAN fakes that platform-trained detectors (the surrogate, the baseline of
#: ``train_detector_baselines``) learn on; the attack suite draws its public fakes with the same seed
#: (DetectorAttackSpec.public_seed). Hidden fakes come from the secret (at least 2**62), so they differ.
PUBLIC_FAKE_SEED = 1
#: Sets earlier demos registered and this one no longer builds: "mnist-c" claimed Mu & Gilmer's MNIST-C
#: but held ImageNet-C's corruptions on padded digits (now "mnist-imagenet-c-padded").
RETIRED_SETS = ("mnist-c",)
#: CIFAR-10.1 v6 (Recht et al. 2019), the CIFAR-10 track's natural shift when the data mirror holds it.
CIFAR10_1_DATASET = "cifar10.1-v6"
CIFAR10_1_SET = "cifar10-1-v6"
#: The CIFAR-10 track's clean set is a JPEG (quality 75) copy; CIFAR-10.1 is re-saved the same way, so the
#: shift measures new images, not a change of encoding.
CIFAR_JPEG_QUALITY = 75
CORRUPTION_PER_CELL = 100
#: A small demo's detector attack suite (tests): a token budget.
SMALL_DEMO_DETECTOR_ATTACKS = {"points": 40, "universal_train_images": 200, "universal_steps": 30, "pgd_steps": 10}
#: The shared pretrained weights each zoo architecture's file in a bundle is converted from (model mirror).
CHECKPOINTS = {
    "mnist_lenet5": "mnist/mnist_lenet5_clntrained.pt",
    "lenet5_classic": "mnist_gan/lenet_epoch=12_test_acc=0.991.pth",
    "cifar_resnet20": "cifar10/resnet20-12fca82f.th",
    "cifar_resnet32": "cifar10/resnet32-d509ac18.th",
    "cifar_resnet44": "cifar10/resnet44-014dd654.th",
    "mnist_gan_discriminator": "mnist_gan/D--300.ckpt",
    "mnist_gan_generator": "mnist_gan/G--300.ckpt",
    "mnist_vae_decoder": "mnist_gan/vae_epoch_25.pth",
}
CIFAR10_1_NOTE = (
    "CIFAR-10.1 v6 (Recht et al. 2019), this track's natural distribution shift, is not in this installation's data "
    "mirror, so the track has no natural-shift set and no effective-robustness line for it. An operator adds it by "
    "placing the authors' files in the mirror ({files}) and rebuilding the demo.")


def mnist_split_seed(seeds: HiddenSeeds) -> int:
    """The seed of the demo's MNIST split, as the importer derives it for its bundles' ``split``.

    The importer binds a split's seed to the secret, the benchmark's slug, the secret's name, the
    fraction and the bytes of the files split (:meth:`bundles.importer.Importer.split_seed`); the
    bundles hold MNIST's test files as published, so their hashes are the data registry's.
    """
    files = {remote.name: remote.sha256 for remote in get_dataset("mnist-test").files}
    digest = files_digest([files["images"], files["labels"]])
    return seeds.seed(f"bundle|{BENCHMARK_SLUG}|{split_seed_name(MNIST_SPLIT_SECRET, 0.5, digest)}")


def mnist_split(n: int, seeds: HiddenSeeds) -> tuple[np.ndarray, np.ndarray]:
    """(public, hidden) indices of the demo's MNIST test split; without the installation's secret the
    hidden half cannot be told from any other half."""
    return split_indices(n, 0.5, mnist_split_seed(seeds))


def _cifar10_1_source() -> DatasetSource:
    """CIFAR-10.1 v6 as the registry describes it, announced (not yet pinned) or registered."""
    return next(s for s in (*announced_datasets(), *list_datasets()) if s.id == CIFAR10_1_DATASET)


def _data_paths(value: Any) -> Iterable[str]:
    """Every file a manifest's ``data`` specs name (``path``, or ``images``/``labels`` of a pair)."""
    if isinstance(value, dict):
        if "layout" in value:
            yield from data_files(value)
            return
        for item in value.values():
            yield from _data_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from _data_paths(item)


class DemoBuilder:
    """Assembles the demo's bundles from the shared mirror and imports them."""

    def __init__(self, data_mirror: str | None, model_mirror: str | None, log: Callable[[str], None] = print,
                 limit: int | None = None, seeds: HiddenSeeds | None = None) -> None:
        self.data_dir = Path(settings.ARENA_DATA_DIR)
        self.sources = self.data_dir / "sources"
        self.data_mirror = data_mirror
        self.model_mirror = Path(model_mirror) if model_mirror else None
        self.log = log
        #: Cap on images per evaluation set (tests use a small demo); None keeps every image.
        self.limit = limit
        self._seeds = seeds

    @property
    def seeds(self) -> HiddenSeeds:
        if self._seeds is None:
            self._seeds, created = load_or_create()
            self.log(f"  hidden-data secret {'created' if created else 'read'} (keep it private)")
        return self._seeds

    # -- sizes of a small demo ------------------------------------------------------------------
    @property
    def corruption_per_cell(self) -> int:
        """Images per corruption x severity cell: 100; for a small demo ``limit // 20`` (at least 4).

        Every cell holds the same source images, so a set's mean corruption accuracy averages over
        ``per_cell`` images: at 10 which images the secret drew moved it by about 10 points. A
        2,000-image demo gets the full 100.
        """
        return CORRUPTION_PER_CELL if self.limit is None else max(4, min(CORRUPTION_PER_CELL, self.limit // 20))

    @property
    def detector_shift_per_class(self) -> int:
        """Reals and fakes per laundering condition and in the transfer set; few for a small demo."""
        return 1000 if self.limit is None else max(10, min(1000, self.limit // 10))

    def shrink(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The manifest of a small demo (``limit``): capped sets, few cells, a short surrogate, token attacks."""
        if self.limit is None:
            return manifest
        manifest = copy.deepcopy(manifest)
        limit = self.limit
        for track in manifest["tracks"]:
            track["attack_points"] = min(track.get("attack_points", 1000), 40)
            track["reliability_points"] = min(track.get("reliability_points", 200), 20)
            if track["task"] == "detector":
                track["detector_attacks"] = dict(SMALL_DEMO_DETECTOR_ATTACKS)
            for evaluation_set in track["evaluation_sets"]:
                generate = evaluation_set.get("generate")
                if generate is None:
                    evaluation_set["subsample"] = {"count": limit, "secret": "subset"}
                elif generate["kind"] == "corruptions":
                    generate["per_cell"] = self.corruption_per_cell
                elif generate["kind"] == "generator_fakes":
                    generate["first"] = min(generate["first"], max(10, limit // 2))
                elif generate["kind"] == "laundering":
                    generate["per_class"] = self.detector_shift_per_class
                elif generate["kind"] == "transfer_attack":
                    generate.update(per_class=self.detector_shift_per_class, surrogate_epochs=2, steps=10,
                                    public_first=max(50, limit // 4))
        return manifest

    # -- the bundle's files ---------------------------------------------------------------------
    def _fetched(self, dataset_id: str) -> Path:
        fetch_dataset(dataset_id, self.sources, mirror=self.data_mirror)
        verify_dataset(dataset_id, self.sources)
        return self.sources

    def _model_path(self, relative: str) -> Path:
        if self.model_mirror is None:
            raise FileNotFoundError("no model mirror configured (ARENA_MODEL_MIRROR)")
        path = self.model_mirror / relative
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing from the model mirror")
        return path

    def _place(self, relative: str, root: Path) -> None:
        """Write the bundle file ``relative`` under ``root`` from the shared mirror (:data:`PROVIDERS`)."""
        target = root / relative
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        for prefix, provide in PROVIDERS.items():
            if relative.startswith(prefix):
                provide(self, relative, target)
                return
        raise ValueError(f"the demo cannot provide the bundle file {relative!r}")

    def _copy_mnist(self, relative: str, target: Path) -> None:
        shutil.copyfile(self._fetched("mnist-test") / relative, target)

    def _usps(self, relative: str, target: Path) -> None:
        fetch_dataset("usps", self.sources, mirror=self.data_mirror)
        images, labels = load_dataset("usps", self.sources)
        np.savez(target, images=usps_to_mnist_framing(images), labels=labels)

    def _cifar10(self, relative: str, target: Path) -> None:
        source = get_dataset("cifar10-jpeg-test").files[0].mirror_path
        shutil.copytree(self._fetched("cifar10-jpeg-test") / source, target)

    def _cifar10_1(self, relative: str, target: Path) -> None:
        from evaluator.shifts.laundering import launder  # torch: only when the set is assembled

        fetch_dataset(CIFAR10_1_DATASET, self.sources, mirror=self.data_mirror)
        images, labels = load_dataset(CIFAR10_1_DATASET, self.sources)
        np.savez(target, images=launder(images, "jpeg", CIFAR_JPEG_QUALITY), labels=labels)

    def _converted(self, relative: str, target: Path) -> None:
        from evaluator.models.convert import convert_checkpoint  # torch: only when a file is converted

        zoo = {"generators/mnist-gan.safetensors": "mnist_gan_generator",
               "generators/mnist-vae.safetensors": "mnist_vae_decoder"}.get(relative, Path(relative).stem)
        convert_checkpoint(zoo, self._model_path(CHECKPOINTS[zoo]), target)

    def cifar10_1_available(self) -> bool:
        """Whether the data mirror holds the authors' CIFAR-10.1 v6 (their git object ids; other bytes fail)."""
        mirror = self.data_mirror or os.environ.get(MIRROR_ENV, "").strip() or None
        try:
            if mirror is None:
                raise EvaluationError("data_unavailable", "no data mirror is configured")
            pin_from_folder(CIFAR10_1_DATASET, mirror)
        except EvaluationError as exc:
            if exc.code != "data_unavailable":
                raise
            self.log(f"  {CIFAR10_1_DATASET}: not in the data mirror ({exc.message}); the track says so")
            return False
        return True

    def assemble(self, slug: str, root: Path, *, baselines: bool = True) -> Path:
        """Write the bundle of demo track ``slug`` into ``root``: its manifest and every file it names."""
        manifest = yaml.safe_load((MANIFESTS / BUNDLES[slug]).read_text())
        track = manifest["tracks"][0]
        if slug == "cifar10-jpeg" and not self.cifar10_1_available():
            track["evaluation_sets"] = [s for s in track["evaluation_sets"] if s["name"] != CIFAR10_1_SET]
            registered = EvaluationSet.objects.filter(track__slug=slug, name=CIFAR10_1_SET).exists()
            track["notes"] = "" if registered else CIFAR10_1_NOTE.format(
                files=", ".join(remote.mirror_path for remote in _cifar10_1_source().files))
        if not baselines:
            track.pop("baselines", None)
        manifest = self.shrink(manifest)
        needed = list(_data_paths(track["evaluation_sets"]))
        needed += [g["file"] for g in track.get("generators", {}).values()]
        needed += [b["file"] for b in track.get("baselines", [])]
        for relative in dict.fromkeys(needed):
            self._place(relative, root)
        (root / "benchmark.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True))
        return root

    # -- tracks -------------------------------------------------------------------------------
    def build(self, tracks: Collection[str] | None = None, *, fast: bool = False, baselines: bool = True) -> Benchmark:
        """Assemble and import every demo track's bundle, or only those whose slugs are in ``tracks``.

        ``fast``: leave the deferred sets (the transfer attack) to :meth:`build_transfer_set`; a
        registered one stays. ``baselines``: with the bundles' baselines (submitted like uploads, once).
        """
        unknown = set(tracks or ()) - set(TRACK_SLUGS)
        if unknown:
            raise ValueError(f"unknown demo track(s) {sorted(unknown)}; the demo has {list(TRACK_SLUGS)}")
        self.seeds  # noqa: B018 (the secret exists before the importer derives from it)
        EvaluationSet.objects.filter(track__slug__in=TRACK_SLUGS, name__in=RETIRED_SETS).delete()
        with tempfile.TemporaryDirectory(dir=self._assembly_dir()) as tmp:
            for slug in TRACK_SLUGS:
                if tracks and slug not in tracks:
                    continue
                self.log(f"building the {slug} track from {BUNDLES[slug]}")
                root = self.assemble(slug, Path(tmp) / slug, baselines=baselines)
                self._import(root)
                shutil.rmtree(root)
        if not fast and DETECTOR_TRACK in (tracks or TRACK_SLUGS):
            made = self.build_transfer_set()
            if made is not None:
                self.rerun_baselines_lacking([made])
        return Benchmark.objects.get(slug=BENCHMARK_SLUG)

    def _assembly_dir(self) -> Path:
        folder = self.data_dir / ".bundle-assembly"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _import(self, root: Path) -> None:
        """``manage.py import_benchmark`` on the assembled bundle; its report goes to the log."""
        out, err = io.StringIO(), io.StringIO()
        try:
            with redirect_stderr(err):
                call_command("import_benchmark", str(root), "--keep-missing", stdout=out, stderr=err)
        finally:
            for line in (out.getvalue() + err.getvalue()).splitlines():
                self.log(line)

    def build_transfer_set(self, step: Callable[[str], None] | None = None) -> EvaluationSet | None:
        """The slow phase: the detector track's deferred transfer-attack set (``import_benchmark --deferred``).

        Returns the new set, or None when the registered one is already current (same recipe, same
        hidden inputs, file intact): a restarted demo does not train again.
        """
        track = Track.objects.filter(slug=DETECTOR_TRACK).first()
        if track is None or not track.bundle_imports.exists():
            raise RuntimeError(f"there is no {DETECTOR_TRACK!r} track from a bundle yet: run build_demo first")
        made = complete_deferred([DETECTOR_TRACK], seeds=self.seeds, log=self.log, step=step)
        return next((s for s in made if s.name == TRANSFER_SET), None)

    # -- baselines ----------------------------------------------------------------------------
    def rerun_baselines_lacking(self, evaluation_sets: Iterable[EvaluationSet]) -> list[Submission]:
        """Queue again the finished baselines that have no score on one of these (newly added) sets.

        A baseline evaluated before a background set was ready lacks its score; it is evaluated
        again (baselines wait behind researchers' uploads, and a re-run is charged to no one).
        Researchers' models are left as they are: staff can re-run them from the admin.
        """
        queued = []
        for evaluation_set in evaluation_sets:
            scored = Result.objects.filter(evaluation_set=evaluation_set).values("submission")
            lacking = (Submission.objects.filter(track=evaluation_set.track_id, is_baseline=True,
                                                 state=Submission.State.FINISHED)
                       .exclude(pk__in=scored).exclude(pk__in=[s.pk for s in queued]))
            for submission in lacking:
                try:
                    rerun(submission)
                except IllegalTransition as exc:  # its state changed meanwhile, or its file is gone: leave it
                    self.log(f"  {submission.name}: not queued again ({exc})")
                    continue
                queued.append(submission)
                self.log(f"  baseline {submission.name} queued again for {evaluation_set.track.slug}:"
                         f"{evaluation_set.name}")
        return queued


#: Where each file a demo bundle names comes from, by the start of its path in the bundle.
PROVIDERS: dict[str, Callable[[DemoBuilder, str, Path], None]] = {
    "mnist/": DemoBuilder._copy_mnist,
    "usps/usps-test-mnist-framing.npz": DemoBuilder._usps,
    "cifar10/test": DemoBuilder._cifar10,
    "cifar10.1/cifar10.1-v6-jpeg75.npz": DemoBuilder._cifar10_1,
    "generators/": DemoBuilder._converted,
    "baselines/": DemoBuilder._converted,
}
