"""Malformed benchmark bundles, one broken thing each: refused with the manifest key, nothing left behind.

A bundle is refused as a whole, so each case checks the two halves of that promise through the
command a host runs (``manage.py import_benchmark``): the host reads *what* is wrong and *where*
(the manifest key, e.g. ``tracks[0].evaluation_sets[1].data``) on stderr, and the installation is
exactly as before: no Benchmark/Track/EvaluationSet/BundleImport/Submission row, no file under
``ARENA_DATA_DIR`` (its ``secrets/`` aside) or ``MEDIA_ROOT``, and the staging and unpacking
folders empty. A case that is refused late (while a set is being written, after others were
staged) is there on purpose: a refusal in phase 2 must clean up as well as one in phase 1.

Each case starts from the factory's valid bundle (:func:`tests.web.bundle_factory.write_bundle`)
and breaks one thing, so the message asserted is the one that thing causes.
"""

from __future__ import annotations

import copy
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from django.core.management import CommandError, call_command
from PIL import Image

from benchmarks.models import Benchmark, EvaluationSet, Track
from bundles.models import BundleImport
from submissions.models import Submission
from tests.web.bundle_factory import images_and_labels, manifest, set_manifest, write_bundle

pytestmark = pytest.mark.django_db

#: The rows an import may create; a refused one creates none of them.
MODELS = (Benchmark, Track, EvaluationSet, BundleImport, Submission)


@dataclass(frozen=True)
class Case:
    """One malformed bundle: how to make it (returns the path to import) and what the host must read."""

    name: str
    make: Callable[[Path], Path]
    expected: tuple[str, ...]

    def __str__(self) -> str:
        return self.name


# --- Makers: each writes a valid bundle under ``tmp / "bundle"`` and breaks one thing. --------------------------


def _spec_with(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], Path]:
    """A maker for a bundle whose manifest ``change`` edits (the data files stay valid)."""

    def make(tmp: Path) -> Path:
        spec = manifest()
        change(spec)
        return write_bundle(tmp / "bundle", spec)

    return make


def _manifest_text(text: str) -> Callable[[Path], Path]:
    """A maker for a valid bundle whose benchmark.yaml is replaced by ``text``."""

    def make(tmp: Path) -> Path:
        root = write_bundle(tmp / "bundle")
        (root / "benchmark.yaml").write_text(text)
        return root

    return make


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _zip(root: Path, dest: Path, extra: dict[str, bytes] | None = None) -> Path:
    """``root``'s files in a deflated zip, plus ``extra`` members written with their names as given."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return dest


def make_bad_yaml(tmp: Path) -> Path:
    return _manifest_text("format: 1\nbenchmark: {slug: toy, name: [unclosed\ntracks: []\n")(tmp)


def make_yaml_aliases(tmp: Path) -> Path:
    # A "billion laughs" seed: each alias would multiply the nodes a later reader walks.
    text = yaml.safe_dump(manifest(), sort_keys=False)
    text = "laughs: &lol [ha, ha, ha]\nmore: [*lol, *lol, *lol]\n" + text
    return _manifest_text(text)(tmp)


def make_deep_nesting(tmp: Path) -> Path:
    # 100,000 nested lists in 200 kB: a recursive parser overflows its stack unless the error is caught.
    return _manifest_text("format: 1\nnested: " + "[" * 100_000 + "]" * 100_000 + "\n")(tmp)


def make_detector_attacks_typo(tmp: Path) -> Path:
    def change(spec: dict[str, Any]) -> None:
        track = spec["tracks"][0]
        track.update(task="detector", detector_attacks={"pgd_budget": [0.01]}, threat_models=[])
        track.pop("class_names")
        track.pop("classes")
        track["evaluation_sets"] = [{"name": "real-fake", "role": "clean", "source": "folders", "license": "CC0",
                                     "data": {"layout": "real_fake", "path": "detector"}}]

    def make(path: Path) -> Path:
        root = _spec_with(change)(path)
        for kind, label in (("real", 0), ("fake", 1)):
            for i in range(4):
                _png(root / "detector" / kind / f"{i}.png", np.full((8, 8), 40 * i + label, dtype=np.uint8))
        return root

    return make(tmp)


def make_unknown_key(tmp: Path) -> Path:
    return _spec_with(lambda spec: spec["tracks"][0].update(colour="blue"))(tmp)


def make_wrong_type(tmp: Path) -> Path:
    return _spec_with(lambda spec: spec["tracks"][0].update(classes="three"))(tmp)


def make_missing_required(tmp: Path) -> Path:
    return _spec_with(lambda spec: spec["benchmark"].pop("name"))(tmp)


def make_bad_slug(tmp: Path) -> Path:
    return _spec_with(lambda spec: spec["benchmark"].update(slug="Toy Benchmark!"))(tmp)


def make_data_and_split(tmp: Path) -> Path:
    def change(spec: dict[str, Any]) -> None:
        spec["tracks"][0]["evaluation_sets"][0]["data"] = {"layout": "npz", "path": "clean.npz"}

    return _spec_with(change)(tmp)


def make_shift_without_kind(tmp: Path) -> Path:
    return _spec_with(lambda spec: spec["tracks"][0]["evaluation_sets"][1].pop("shift_kind"))(tmp)


def make_image_size_mismatch(tmp: Path) -> Path:
    """A 32x32 track whose PNG class folders hold three 30x32 images among 32x32 ones."""
    spec = manifest()
    spec["tracks"][0]["input"].update(height=32, width=32)
    root = write_bundle(tmp / "bundle", spec)
    images, labels = images_and_labels(60, 0, shape=(1, 32, 32))
    np.savez(root / "clean.npz", images=images, labels=labels)
    shutil.rmtree(root / "shift")
    shift, _ = images_and_labels(30, 1, shape=(1, 32, 32))
    for i, image in enumerate(shift):
        pixels = image[0][:, :30] if i in (4, 11, 23) else image[0]  # PIL's size is (width, height): 30x32
        _png(root / "shift" / ("zero", "one", "two")[i % 3] / f"{i:04d}.png", np.ascontiguousarray(pixels))
    return root


def make_channel_mismatch(tmp: Path) -> Path:
    """A 1-channel track whose class folders hold four RGB PNGs."""
    root = write_bundle(tmp / "bundle")
    for i, path in enumerate(sorted((root / "shift" / "one").glob("*.png"))[:4]):
        gray = np.asarray(Image.open(path))
        _png(path, np.stack([gray, gray, gray ^ np.uint8(1 + i)], axis=-1))
    return root


def make_labels_outside_classes(tmp: Path) -> Path:
    root = write_bundle(tmp / "bundle")
    images, labels = images_and_labels(60, 0)
    labels[[5, 17]] = [3, 9]
    np.savez(root / "clean.npz", images=images, labels=labels)
    return root


def make_count_mismatch(tmp: Path) -> Path:
    root = write_bundle(tmp / "bundle")
    images, labels = images_and_labels(60, 0)
    np.savez(root / "clean.npz", images=images, labels=labels[:59])
    return root


def make_missing_file(tmp: Path) -> Path:
    return _spec_with(lambda spec: spec["tracks"][0]["evaluation_sets"][1]["data"].update(path="shift-v2"))(tmp)


def make_duplicate_set_names(tmp: Path) -> Path:
    return _spec_with(lambda spec: spec["tracks"][0]["evaluation_sets"][1].update(name="toy-hidden"))(tmp)


def make_duplicate_track_slugs(tmp: Path) -> Path:
    def change(spec: dict[str, Any]) -> None:
        second = {**copy.deepcopy(spec["tracks"][0]), "name": "Toy digits again"}  # no shared nodes: no YAML aliases
        spec["tracks"].append(second)

    return _spec_with(change)(tmp)


def make_two_clean_sets(tmp: Path) -> Path:
    def change(spec: dict[str, Any]) -> None:
        shift = spec["tracks"][0]["evaluation_sets"][1]
        shift["role"] = "clean"
        shift.pop("shift_kind")

    return _spec_with(change)(tmp)


def make_undescribed_reference(tmp: Path) -> Path:
    def change(spec: dict[str, Any]) -> None:
        spec["tracks"][0]["evaluation_sets"].append(
            {"name": "toy-corrupted", "role": "shift", "shift_kind": "synthetic", "source": "corruptions",
             "license": "CC0", "generate": {"kind": "corruptions", "from": "toy-clean", "definition": "cifar10-c",
                                            "per_cell": 2}})

    return _spec_with(change)(tmp)


def make_served_hidden_set(tmp: Path) -> Path:
    return _spec_with(lambda spec: spec["tracks"][0]["evaluation_sets"][1].update(hidden=False))(tmp)


def make_class_names_mismatch(tmp: Path) -> Path:
    return _spec_with(lambda spec: spec["tracks"][0].update(class_names=["zero", "one", "two", "three"]))(tmp)


def make_bad_baseline(tmp: Path) -> Path:
    def change(spec: dict[str, Any]) -> None:
        spec["tracks"][0]["baselines"] = [{"name": "Not a model", "file": "baseline.pt2", "format": "pt2",
                                           "model_type": "standard"}]

    root = _spec_with(change)(tmp)
    (root / "baseline.pt2").write_bytes(b"PK\x03\x04 this is not an exported program" * 10)
    return root


def make_zip_slip(tmp: Path) -> Path:
    root = write_bundle(tmp / "bundle")
    return _zip(root, tmp / "slip.zip", {"../escaped.txt": b"written outside the destination"})


def make_symlink(tmp: Path) -> Path:
    root = write_bundle(tmp / "bundle")
    secret = tmp / "server-secret.png"
    shutil.copyfile(next((root / "shift" / "zero").glob("*.png")), secret)
    os.symlink(secret, root / "shift" / "zero" / "9999.png")
    return root


def make_archive_bomb(tmp: Path) -> Path:
    """2 MiB of zeros deflate to about 2 KiB: a ratio near 1000, over the limit of 200."""
    root = write_bundle(tmp / "bundle")
    return _zip(root, tmp / "bomb.zip", {"padding.npy": bytes(2 << 20)})


def make_float_pixels_out_of_range(tmp: Path) -> Path:
    """Float pixels in 0-255: headers pass, the first chunk read while *writing* the set is refused."""
    root = write_bundle(tmp / "bundle")
    images, labels = images_and_labels(60, 0)
    np.savez(root / "clean.npz", images=images.astype(np.float32), labels=labels)
    return root


def make_undecodable_png(tmp: Path) -> Path:
    """A PNG whose header is intact and whose pixel data is cut: refused while the set is written."""
    root = write_bundle(tmp / "bundle")
    path = sorted((root / "shift" / "two").glob("*.png"))[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 20])
    return root


def make_hidden_fraction_leaves_empty_part(tmp: Path) -> Path:
    return _spec_with(lambda spec: spec["tracks"][0]["evaluation_sets"][0]["split"].update(hidden_fraction=0.001))(tmp)


CASES = (
    Case("bad YAML", make_bad_yaml, ("benchmark.yaml is not valid YAML",)),
    Case("YAML aliases", make_yaml_aliases, ("YAML aliases (*lol) are not allowed in a manifest",)),
    Case("deeply nested YAML", make_deep_nesting, ("benchmark.yaml nests too deeply",)),
    Case("a misspelt detector-attack parameter", make_detector_attacks_typo,
         ("tracks[0].detector_attacks: not parameters of the detector attack suite", "pgd_budget")),
    Case("schema: unknown key", make_unknown_key,
         ("tracks[0]: Additional properties are not allowed ('colour' was unexpected)",)),
    Case("schema: wrong type", make_wrong_type, ("tracks[0].classes: 'three' is not of type 'integer'",)),
    Case("schema: missing required key", make_missing_required, ("benchmark: 'name' is a required property",)),
    Case("schema: bad slug", make_bad_slug, ("benchmark.slug: 'Toy Benchmark!' does not match",)),
    Case("a set with both data and split", make_data_and_split,
         ("tracks[0].evaluation_sets[0]: exactly one of data, split or generate is needed, found data, split",)),
    Case("a shift set without shift_kind", make_shift_without_kind,
         ("tracks[0].evaluation_sets[1]: 'shift_kind' is a required property",)),
    Case("image size mismatch in a PNG class folder", make_image_size_mismatch,
         ("tracks[0].evaluation_sets[1].data: 3 images are 30x32, the track says 32x32",)),
    Case("channel mismatch (RGB PNGs on a 1-channel track)", make_channel_mismatch,
         ("tracks[0].evaluation_sets[1].data: 4 images are RGB, the track has 1 channel (first: one/",)),
    Case("labels outside the classes (npz)", make_labels_outside_classes,
         ("tracks[0].evaluation_sets[0].split.data: 2 labels lie outside 0..2 (first: 3 at image 5); "
          "the track has 3 classes",)),
    Case("image/label count mismatch", make_count_mismatch,
         ("tracks[0].evaluation_sets[0].split.data: clean.npz:images has 60 images but clean.npz:labels has 59 "
          "labels",)),
    Case("missing data file", make_missing_file, ("tracks[0].evaluation_sets[1].data: shift-v2 is missing",)),
    Case("duplicate set names", make_duplicate_set_names,
         ("tracks[0].evaluation_sets[1].name: set 'toy-hidden' is described twice in this track",)),
    Case("duplicate track slugs", make_duplicate_track_slugs,
         ("tracks[1].slug: track 'toy-digits' is described twice",)),
    Case("two clean sets", make_two_clean_sets,
         ("tracks[0].evaluation_sets: a track has exactly one clean set, found 2",)),
    Case("generate.from names an undescribed set", make_undescribed_reference,
         ("tracks[0].evaluation_sets[2].generate.from: 'toy-clean' names no set described before this one",)),
    Case("a scored set declared hidden: false", make_served_hidden_set,
         ("tracks[0].evaluation_sets[1].hidden: a scored set must stay hidden: the site would serve it",)),
    Case("class_names count mismatch", make_class_names_mismatch, ("tracks[0].class_names: 4 names for 3 classes",)),
    Case("a baseline that is not a valid artifact", make_bad_baseline,
         ("tracks[0].baselines[0].file: The file starts like a zip archive but is damaged",)),
    Case("zip-slip member", make_zip_slip, ("'../escaped.txt' has a '..' component",)),
    Case("symlink inside a folder bundle", make_symlink, ("'shift/zero/9999.png' is a symlink",)),
    Case("archive bomb (compression ratio)", make_archive_bomb,
         ("'padding.npy' has a compression ratio of", "more than the limit of 200")),
    Case("float pixels outside [0, 1], found while writing", make_float_pixels_out_of_range,
         ("tracks[0].evaluation_sets[0].split.data: clean.npz:images has float pixels in [0, 255]",
          "float pixels must lie in [0, 1] (pixels in 0-255 are stored as uint8)")),
    Case("an undecodable PNG, found while writing", make_undecodable_png,
         ("tracks[0].evaluation_sets[1].data: two/", "cannot be decoded")),
    Case("a split with an empty part", make_hidden_fraction_leaves_empty_part,
         ("tracks[0].evaluation_sets[0].split.hidden_fraction: splits 60 images into an empty part",)),
)


# --- The checks -----------------------------------------------------------------------------------------------


def _written(folder: Path) -> list[str]:
    """Files under ``folder`` other than the installation's secret (created once, kept by design)."""
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if not p.is_dir() and "secrets" not in p.relative_to(folder).parts)


def _snapshot() -> dict[str, list[dict[str, Any]]]:
    return {model.__name__: list(model.objects.order_by("pk").values()) for model in MODELS}


def _refuse(source: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Import ``source`` through the command, expect the refusal, return what the host read on stderr."""
    capsys.readouterr()
    with pytest.raises(CommandError, match=r"bundle refused \(\d+ problem\(s\)\); nothing was registered"):
        call_command("import_benchmark", str(source))
    return capsys.readouterr().err


def _assert_nothing_left(arena_dirs: Path, data_before: list[str] | None = None,
                         media_before: list[str] | None = None) -> None:
    """Files as they were (none by default), and the staging and unpacking folders empty or absent."""
    data = arena_dirs / "data"
    assert _written(data) == (data_before or []), "a refused import left files under ARENA_DATA_DIR"
    assert _written(arena_dirs / "media") == (media_before or []), "a refused import stored an upload"
    for scratch in (".bundle-staging", ".bundle-unpacked"):
        assert not (data / scratch).exists() or not any((data / scratch).iterdir()), f"{scratch} is not empty"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_malformed_bundle_is_refused_naming_the_key_and_leaves_nothing(case: Case, arena_dirs: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    source = case.make(arena_dirs / "made")
    err = _refuse(source, capsys)
    for fragment in case.expected:
        assert fragment in err, f"{case.name}: {fragment!r} not in stderr:\n{err}"
    assert {model.__name__: model.objects.count() for model in MODELS} == dict.fromkeys(
        (model.__name__ for model in MODELS), 0)
    _assert_nothing_left(arena_dirs)
    assert not list(arena_dirs.rglob("escaped.txt")), "a zip member was written outside its folder"


def test_the_table_covers_enough_malformed_bundles() -> None:
    assert len(CASES) >= 18 and len({case.name for case in CASES}) == len(CASES)


def test_a_track_slug_of_another_benchmark_is_refused_and_the_other_is_untouched(
        arena_dirs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("import_benchmark", str(write_bundle(arena_dirs / "other", manifest(slug="other"))))
    rows, files, media = _snapshot(), _written(arena_dirs / "data"), _written(arena_dirs / "media")
    assert rows["Track"] and files  # registered: a track with its sets and their files
    bundle = write_bundle(arena_dirs / "bundle", manifest(slug="toy"), seed=3)
    err = _refuse(bundle, capsys)
    assert "tracks[0].slug: track 'toy-digits' belongs to benchmark 'other'" in err
    assert _snapshot() == rows
    _assert_nothing_left(arena_dirs, data_before=files, media_before=media)


def test_a_refusal_lists_every_problem_at_once(arena_dirs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A host fixing a bundle sees the whole list, not one problem per upload."""
    root = make_labels_outside_classes(arena_dirs / "made")
    spec = manifest()
    spec["tracks"][0]["evaluation_sets"][1]["data"]["path"] = "shift-v2"
    set_manifest(root, spec)
    err = _refuse(root, capsys)
    assert "tracks[0].evaluation_sets[0].split.data: 2 labels lie outside 0..2" in err
    assert "tracks[0].evaluation_sets[1].data: shift-v2 is missing" in err
    _assert_nothing_left(arena_dirs)
