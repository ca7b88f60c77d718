"""The demo's shift sets say what they are (issue 16).

A corruption set records the published definition it follows (source text, the file's header and
the row's metadata) and the track page shows it with the images per cell; CIFAR-10.1 v6 becomes the
CIFAR-10 track's natural shift when the data mirror holds the authors' files, the track page says
so when it does not, and files that are not the authors' fail the build.

The CIFAR-10 track is built as ``build_demo`` builds it (its bundle, ``demo-cifar10.yaml``, assembled
by DemoBuilder and imported through ``import_benchmark``), as a small demo and without baselines, from
random images: the clean set's class folders are placed where a fetch leaves them, with the
registered folder hash replaced by theirs, so no test waits for the CIFAR-10 folder to be copied;
tests/web/test_demo_benchmark.py builds the real demo.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from django.core.files.base import ContentFile
from django.test import Client
from django.utils.html import escape
from PIL import Image

from benchmarks.hidden_seeds import load_or_create
from benchmarks.models import BaselineFit, EvaluationSet, Track
from builders.demo import BUNDLES, CIFAR10_1_DATASET, CIFAR10_1_SET, CIFAR_JPEG_QUALITY, MANIFESTS, DemoBuilder
from evaluator.data import registry
from evaluator.data.evalsets import read_evaluation_set
from evaluator.data.integrity import sha256_file, tree_sha256
from evaluator.errors import EvaluationError
from evaluator.shifts.corruptions import SEVERITIES, describe_corruption_set, get_definition
from evaluator.shifts.laundering import launder
from evaluator.spec import JobResult, MetricValue
from leaderboards.fits import refit_track
from submissions.arrival import record_result
from submissions.models import Submission

pytestmark = pytest.mark.django_db

LIMIT = 200  # a small demo: 10 images per corruption cell, sets capped at 200 images
SLUG = "cifar10-jpeg"
CLEAN = "cifar10-jpeg-test"
#: Random clean images (30 per class): more than LIMIT, so the cap has something to drop.
CLEAN_COUNT = 300
IMAGES_FILE = "cifar10_1/cifar10.1_v6_data.npy"
LABELS_FILE = "cifar10_1/cifar10.1_v6_labels.npy"


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def _capped(n: int) -> np.ndarray:
    """The images a small demo keeps of an n-image set: as the importer subsamples every data set of a
    shrunk bundle (``subsample: {count: LIMIT, secret: subset}``), drawn by this installation's secret."""
    seeds, created = load_or_create()
    assert not created  # the build made it
    seed = seeds.seed("bundle|demo|subset")
    return np.sort(np.random.Generator(np.random.PCG64(seed)).permutation(n)[:LIMIT])


def _builder(mirror, log: list[str] | None = None) -> DemoBuilder:
    return DemoBuilder(str(mirror), None, log=(log if log is not None else []).append, limit=LIMIT)


def _build(mirror, log: list[str] | None = None) -> Track:
    """The CIFAR-10 track as ``build_demo --track cifar10-jpeg`` builds it (a small demo, no baselines)."""
    _builder(mirror, log).build([SLUG], baselines=False)
    return Track.objects.get(slug=SLUG)


@pytest.fixture
def registry_copy(monkeypatch):
    """The data registry, restored after the test (a pin moves a dataset from announced to registered)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ANNOUNCED", dict(registry._ANNOUNCED))
    return registry


@pytest.fixture
def cifar_clean(arena_dirs, settings, registry_copy) -> tuple[np.ndarray, np.ndarray]:
    """Random class folders as the fetched cifar10-jpeg-test (in ARENA_DATA_DIR/sources, as a fetch leaves
    it), registered under their own folder hash; returns the images and labels in the folders' order."""
    settings.ARENA_LEADERBOARD_CACHE_SECONDS = 0
    source = registry_copy.get_dataset(CLEAN)
    (remote,) = source.files
    folder = Path(settings.ARENA_DATA_DIR) / "sources" / remote.mirror_path
    images, _ = _images(CLEAN_COUNT, 0)
    labels = np.repeat(np.arange(10, dtype=np.int64), CLEAN_COUNT // 10)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / source.class_names[label] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(path)
    registry_copy._REGISTRY[CLEAN] = replace(source, files=(replace(remote, sha256=tree_sha256(folder)),))
    return images, labels


def _page(track: Track) -> str:
    response = Client().get(f"/tracks/{track.slug}/")
    assert response.status_code == 200
    return response.content.decode()


def _manifest_set(name: str) -> dict:
    manifest = yaml.safe_load((MANIFESTS / BUNDLES[SLUG]).read_text())
    return next(s for s in manifest["tracks"][0]["evaluation_sets"] if s["name"] == name)


def test_a_cifar10_c_set_records_its_definition_and_the_track_page_documents_it(cifar_clean, arena_dirs):
    cifar_track = _build(arena_dirs / "no-mirror")
    evaluation_set = cifar_track.evaluation_sets.get(name="cifar10-c")
    builder = _builder(arena_dirs / "no-mirror")
    definition = get_definition("cifar10-c")
    per_cell = builder.corruption_per_cell
    assert per_cell == 10 and evaluation_set.num_examples == 15 * 5 * per_cell
    assert evaluation_set.source == describe_corruption_set("cifar10-c", definition.corruptions, SEVERITIES, per_cell,
                                                            _manifest_set("cifar10-c")["source"])
    metadata = evaluation_set.metadata
    assert metadata["definition"] == "cifar10-c" and metadata["per_cell"] == per_cell
    assert metadata["reference"] == definition.reference and len(metadata["cells"]) == 75
    assert "CIFAR-10-C" in metadata["cells"]["defocus_blur:1"]
    # The file's header carries the same provenance (as strings, as safetensors requires).
    header = read_evaluation_set(evaluation_set.path, evaluation_set.sha256).metadata
    assert header["definition"] == "cifar10-c" and json.loads(header["cells"]) == metadata["cells"]
    assert json.loads(header["per_cell"]) == per_cell
    assert cifar_track.evaluation_sets.get(name=CLEAN).num_examples == LIMIT  # the clean set it corrupts, capped

    page = _page(cifar_track)
    assert f"Follows: <strong>{escape(definition.reference)}</strong>" in page
    assert "(definition <code>cifar10-c</code>)" in page
    assert f"{per_cell} images per cell, 75 cells (corruption &times; severity)" in page
    assert 'id="set-cifar10-jpeg-test"' in page  # the clean set is documented too, with no definition line


@pytest.mark.parametrize("layout", ["empty mirror", "labels only (as /work/shared holds it)"])
def test_without_cifar10_1_in_the_mirror_the_track_page_says_so(cifar_clean, tmp_path, layout):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    if layout.startswith("labels"):
        (mirror / LABELS_FILE).parent.mkdir(parents=True)
        np.save(mirror / LABELS_FILE, np.zeros(2000, dtype=np.int64))
    log: list[str] = []
    cifar_track = _build(mirror, log)
    assert "CIFAR-10.1 v6" in cifar_track.notes and "not in this installation's data mirror" in cifar_track.notes
    assert IMAGES_FILE in cifar_track.notes  # where an operator puts it
    assert cifar_track.evaluation_sets.filter(name=CLEAN).exists()  # the rest of the track is built
    assert not cifar_track.evaluation_sets.filter(name=CIFAR10_1_SET).exists()
    assert any("not in the data mirror" in line for line in log)
    page = _page(cifar_track)
    assert 'id="track-notes"' in page and "is not in this installation&#x27;s data mirror" in page


def test_cifar10_1_files_that_are_not_the_authors_fail_the_build(cifar_clean, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / IMAGES_FILE).parent.mkdir(parents=True)
    images, labels = _images(2000, 2)
    np.save(mirror / IMAGES_FILE, images.transpose(0, 2, 3, 1))  # right shape, not the authors' bytes
    np.save(mirror / LABELS_FILE, labels)
    with pytest.raises(EvaluationError) as failure:
        _build(mirror)
    assert failure.value.code == "data_integrity" and "git object id" in failure.value.message
    assert not EvaluationSet.objects.filter(name=CIFAR10_1_SET).exists()
    assert CIFAR10_1_DATASET not in registry._REGISTRY  # the foreign bytes were not pinned either


def _baseline(track: Track, owner, name: str, clean: float, shifted: float) -> Submission:
    submission = Submission(track=track, owner=owner, name=name, artifact_format="pt2",
                            artifact_sha256=name.encode().hex().ljust(64, "0"), is_baseline=True,
                            model_type="standard")
    submission.artifact.save("x", ContentFile(b"PK"), save=False)
    submission.save()
    submission.transition("running")
    record_result(submission, JobResult(
        job_id=str(submission.public_id), ok=True, suite_version=track.suite_version, seed=track.seed,
        metrics=[MetricValue(CLEAN, "accuracy", clean, 2000, None, None),
                 MetricValue(CIFAR10_1_SET, "accuracy", shifted, 200, None, None)],
    ))
    return submission


def test_cifar10_1_is_the_natural_shift_when_the_mirror_holds_it__pin_monkeypatched(
        cifar_clean, tmp_path, monkeypatch, researcher):
    """The authors' files cannot be faked (pin_from_folder checks their git object ids) and are not
    on this machine, so the pin is replaced: it records the call and registers the mirror's files by
    their sha256, as the real pin does once the object ids match; everything after it (the fetch from
    the mirror, the load, the JPEG copy, the bundle, the import, the cap) is the builder's."""
    pinned: list[tuple[str, str]] = []

    def pin(dataset: str, folder: str) -> registry.DatasetSource:
        pinned.append((dataset, folder))
        if dataset in registry._REGISTRY:
            return registry._REGISTRY[dataset]
        source = registry._ANNOUNCED.pop(dataset)
        files = tuple(replace(remote, sha256=sha256_file(Path(folder) / remote.mirror_path)) for remote in source.files)
        return registry.register(replace(source, files=files))

    # An earlier build without CIFAR-10.1 (the real pin: nothing in the mirror) left its note on the track.
    cifar_track = _build(tmp_path / "no-mirror")
    assert "not in this installation's data mirror" in cifar_track.notes

    mirror = tmp_path / "mirror"
    (mirror / IMAGES_FILE).parent.mkdir(parents=True)
    images, labels = _images(2000, 3)
    np.save(mirror / IMAGES_FILE, images.transpose(0, 2, 3, 1))  # the authors' layout: NHWC uint8
    np.save(mirror / LABELS_FILE, labels)
    monkeypatch.setattr("builders.demo.pin_from_folder", pin)
    cifar_track = _build(mirror)
    evaluation_set = cifar_track.evaluation_sets.get(name=CIFAR10_1_SET)
    assert pinned == [(CIFAR10_1_DATASET, str(mirror))]
    assert (evaluation_set.role, evaluation_set.shift_kind) == ("shift", "natural")
    assert f"JPEG (quality {CIFAR_JPEG_QUALITY}" in evaluation_set.source and "CIFAR-10.1 v6" in evaluation_set.source
    assert evaluation_set.metadata["jpeg_quality"] == CIFAR_JPEG_QUALITY
    data = read_evaluation_set(evaluation_set.path, evaluation_set.sha256)
    keep = _capped(len(labels))
    assert evaluation_set.num_examples == LIMIT
    assert np.array_equal(data.images.numpy(), launder(images[keep], "jpeg", CIFAR_JPEG_QUALITY))
    assert np.array_equal(data.labels.numpy(), labels[keep])
    # Capped like the other sets: the clean set keeps the same draw of its own images.
    clean_images, clean_labels = cifar_clean
    clean = cifar_track.evaluation_sets.get(name=CLEAN)
    clean_data = read_evaluation_set(clean.path, clean.sha256)
    clean_keep = _capped(CLEAN_COUNT)
    assert clean.num_examples == LIMIT
    assert np.array_equal(clean_data.images.numpy(), clean_images[clean_keep])
    assert np.array_equal(clean_data.labels.numpy(), clean_labels[clean_keep])
    assert cifar_track.notes == ""

    # Its effective-robustness line is fitted over the track's standard baselines, as every shift's.
    for i, (clean_accuracy, shifted) in enumerate([(0.80, 0.68), (0.85, 0.74), (0.90, 0.81)]):
        _baseline(cifar_track, researcher, f"resnet-{i}", clean_accuracy, shifted)
    refit_track(cifar_track)
    fit = BaselineFit.objects.get(shift_set=evaluation_set, transform="logit", is_current=True)
    assert fit.n_models == 3 and fit.clean_set.name == CLEAN
    page = _page(cifar_track)
    assert "Follows: <strong>CIFAR-10.1 v6 (Recht et al. 2019)</strong>" in page and 'id="track-notes"' not in page

    # A later build on a mirror without it keeps the registered set and adds no note.
    monkeypatch.setattr("builders.demo.pin_from_folder", lambda dataset, folder: (_ for _ in ()).throw(
        EvaluationError("data_unavailable", "missing")))
    cifar_track = _build(tmp_path / "no-mirror")
    assert cifar_track.notes == "" and cifar_track.evaluation_sets.filter(name=CIFAR10_1_SET).exists()
    assert cifar_track.evaluation_sets.get(name=CIFAR10_1_SET).sha256 == evaluation_set.sha256
