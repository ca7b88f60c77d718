"""The demo's shift sets say what they are (issue 16).

A corruption set records the published definition it follows (source text, the file's header and
the row's metadata) and the track page shows it with the images per cell; CIFAR-10.1 v6 becomes the
CIFAR-10 track's natural shift when the data mirror holds the authors' files, the track page says
so when it does not, and files that are not the authors' fail the build.

The sets here are built from random images by the builder's own methods, so no test waits for
the CIFAR-10 folder to be copied; tests/web/test_demo_benchmark.py builds the real demo.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.utils.html import escape

from benchmarks.models import BaselineFit, Benchmark, EvaluationSet, Track
from builders.demo import CIFAR10_1_DATASET, CIFAR10_1_SET, CIFAR_JPEG_QUALITY, DemoBuilder
from evaluator.data.evalsets import read_evaluation_set
from evaluator.errors import EvaluationError
from evaluator.shifts.corruptions import SEVERITIES, describe_corruption_set, get_definition
from evaluator.shifts.laundering import launder
from evaluator.spec import JobResult, MetricValue
from leaderboards.fits import refit_track
from submissions.arrival import record_result
from submissions.models import Submission

pytestmark = pytest.mark.django_db

LIMIT = 200  # a small demo: 10 images per corruption cell, sets capped at 200 images
CLEAN = "cifar10-jpeg-test"
IMAGES_FILE = "cifar10_1/cifar10.1_v6_data.npy"
LABELS_FILE = "cifar10_1/cifar10.1_v6_labels.npy"


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def _builder(mirror, log: list[str] | None = None) -> DemoBuilder:
    return DemoBuilder(str(mirror), None, log=(log if log is not None else []).append, limit=LIMIT)


@pytest.fixture
def cifar_track(arena_dirs, settings) -> Track:
    """The demo's CIFAR-10 track with a (random) clean set, as DemoBuilder._track makes it."""
    settings.ARENA_LEADERBOARD_CACHE_SECONDS = 0
    builder = _builder(arena_dirs / "no-mirror")
    benchmark = Benchmark.objects.create(slug="demo", name="Demo")
    track = builder._track(benchmark, "cifar10-jpeg", "CIFAR-10 (JPEG test set)", "classifier", (3, 32, 32), 10,
                           "CIFAR-10 on JPEG images.")
    images, labels = _images(LIMIT, 0)
    builder._write_set(track, CLEAN, images, labels, role=EvaluationSet.Role.CLEAN, source="random images",
                       license="none")
    return track


def _page(track: Track) -> str:
    response = Client().get(f"/tracks/{track.slug}/")
    assert response.status_code == 200
    return response.content.decode()


def test_a_cifar10_c_set_records_its_definition_and_the_track_page_documents_it(cifar_track, arena_dirs):
    images, labels = _images(300, 1)
    builder = _builder(arena_dirs / "no-mirror")
    evaluation_set = builder._corruption_set(cifar_track, "cifar10-c", images, labels, "random test images", "none",
                                             definition="cifar10-c")
    definition = get_definition("cifar10-c")
    per_cell = builder.corruption_per_cell
    assert per_cell == 10 and evaluation_set.num_examples == 15 * 5 * per_cell
    assert evaluation_set.source == describe_corruption_set("cifar10-c", definition.corruptions, SEVERITIES, per_cell,
                                                            "random test images")
    metadata = evaluation_set.metadata
    assert metadata["definition"] == "cifar10-c" and metadata["per_cell"] == per_cell
    assert metadata["reference"] == definition.reference and len(metadata["cells"]) == 75
    assert "CIFAR-10-C" in metadata["cells"]["defocus_blur:1"]
    # The file's header carries the same provenance (as strings, as safetensors requires).
    header = read_evaluation_set(evaluation_set.path, evaluation_set.sha256).metadata
    assert header["definition"] == "cifar10-c" and json.loads(header["cells"]) == metadata["cells"]
    assert json.loads(header["per_cell"]) == per_cell

    page = _page(cifar_track)
    assert f"Follows: <strong>{escape(definition.reference)}</strong>" in page
    assert "(definition <code>cifar10-c</code>)" in page
    assert f"{per_cell} images per cell, 75 cells (corruption &times; severity)" in page
    assert 'id="set-cifar10-jpeg-test"' in page  # the clean set is documented too, with no definition line


@pytest.mark.parametrize("layout", ["empty mirror", "labels only (as /work/shared holds it)"])
def test_without_cifar10_1_in_the_mirror_the_track_page_says_so(cifar_track, tmp_path, layout):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    if layout.startswith("labels"):
        (mirror / LABELS_FILE).parent.mkdir(parents=True)
        np.save(mirror / LABELS_FILE, np.zeros(2000, dtype=np.int64))
    log: list[str] = []
    assert _builder(mirror, log)._cifar10_1(cifar_track) is None
    cifar_track.refresh_from_db()
    assert "CIFAR-10.1 v6" in cifar_track.notes and "not in this installation's data mirror" in cifar_track.notes
    assert IMAGES_FILE in cifar_track.notes  # where an operator puts it
    assert not cifar_track.evaluation_sets.filter(name=CIFAR10_1_SET).exists()
    assert any("not in the data mirror" in line for line in log)
    page = _page(cifar_track)
    assert 'id="track-notes"' in page and "is not in this installation&#x27;s data mirror" in page


def test_cifar10_1_files_that_are_not_the_authors_fail_the_build(cifar_track, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / IMAGES_FILE).parent.mkdir(parents=True)
    images, labels = _images(2000, 2)
    np.save(mirror / IMAGES_FILE, images.transpose(0, 2, 3, 1))  # right shape, not the authors' bytes
    np.save(mirror / LABELS_FILE, labels)
    with pytest.raises(EvaluationError) as failure:
        _builder(mirror)._cifar10_1(cifar_track)
    assert failure.value.code == "data_integrity" and "git object id" in failure.value.message
    assert not cifar_track.evaluation_sets.filter(name=CIFAR10_1_SET).exists()


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
        cifar_track, tmp_path, monkeypatch, researcher):
    """The authors' files cannot be faked (pin_from_folder checks their git object ids) and are not
    on this machine, so the pin and the load are replaced; everything after them is the builder's."""
    pinned: list[tuple[str, str]] = []
    monkeypatch.setattr("builders.demo.pin_from_folder", lambda dataset, folder: pinned.append((dataset, folder)))
    images, labels = _images(2000, 3)
    builder = _builder(tmp_path / "mirror")
    real_load = builder._load
    monkeypatch.setattr(builder, "_load",
                        lambda dataset: (images, labels) if dataset == CIFAR10_1_DATASET else real_load(dataset))
    cifar_track.notes = "an earlier build's note"
    cifar_track.save()

    evaluation_set = builder._cifar10_1(cifar_track)
    assert pinned == [(CIFAR10_1_DATASET, str(tmp_path / "mirror"))]
    assert (evaluation_set.role, evaluation_set.shift_kind) == ("shift", "natural")
    assert f"JPEG (quality {CIFAR_JPEG_QUALITY}" in evaluation_set.source and "CIFAR-10.1 v6" in evaluation_set.source
    assert evaluation_set.metadata["jpeg_quality"] == CIFAR_JPEG_QUALITY
    capped, capped_labels = builder._cap(images, labels)
    data = read_evaluation_set(evaluation_set.path, evaluation_set.sha256)
    assert evaluation_set.num_examples == LIMIT
    assert np.array_equal(data.images.numpy(), launder(capped, "jpeg", CIFAR_JPEG_QUALITY))
    assert np.array_equal(data.labels.numpy(), capped_labels)
    cifar_track.refresh_from_db()
    assert cifar_track.notes == ""

    # Its effective-robustness line is fitted over the track's standard baselines, as every shift's.
    for i, (clean, shifted) in enumerate([(0.80, 0.68), (0.85, 0.74), (0.90, 0.81)]):
        _baseline(cifar_track, researcher, f"resnet-{i}", clean, shifted)
    refit_track(cifar_track)
    fit = BaselineFit.objects.get(shift_set=evaluation_set, transform="logit", is_current=True)
    assert fit.n_models == 3 and fit.clean_set.name == CLEAN
    page = _page(cifar_track)
    assert "Follows: <strong>CIFAR-10.1 v6 (Recht et al. 2019)</strong>" in page and 'id="track-notes"' not in page

    # A later build on a mirror without it keeps the registered set and adds no note.
    monkeypatch.setattr("builders.demo.pin_from_folder", lambda dataset, folder: (_ for _ in ()).throw(
        EvaluationError("data_unavailable", "missing")))
    assert builder._cifar10_1(cifar_track) is None
    cifar_track.refresh_from_db()
    assert cifar_track.notes == "" and cifar_track.evaluation_sets.filter(name=CIFAR10_1_SET).exists()
