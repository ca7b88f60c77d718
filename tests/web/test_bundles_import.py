"""Importing a benchmark bundle: what is registered, re-imports, dry runs, export without hidden data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from django.core.management import CommandError, call_command

from benchmarks.models import EvaluationSet, Track
from bundles.importer import data_digest, split_seed_name
from bundles.models import BundleImport
from evaluator.data.evalsets import read_evaluation_set, split_indices
from tests.web.bundle_factory import images_and_labels, manifest, write_bundle

pytestmark = pytest.mark.django_db


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and "secrets" not in p.parts}


def test_a_bundle_registers_its_tracks_sets_and_public_part(arena_dirs, capsys):
    bundle = write_bundle(arena_dirs / "bundle")
    call_command("import_benchmark", str(bundle))
    out = capsys.readouterr().out
    track = Track.objects.get(slug="toy-digits")
    assert track.benchmark.slug == "toy" and track.suite_version == "toy-1" and track.num_classes == 3
    assert track.class_names == ["zero", "one", "two"] and track.quota.daily_limit == 3
    hidden = track.evaluation_sets.get(name="toy-hidden")
    shift = track.evaluation_sets.get(name="toy-shift")
    assert (hidden.role, hidden.is_hidden, shift.shift_kind) == ("clean", True, "natural")
    images, labels = images_and_labels(60, 0)
    # The split: 30 hidden by a seed derived from this installation's secret, never a number in the bundle.
    from benchmarks.hidden_seeds import load_or_create

    seeds, _ = load_or_create()
    digest = data_digest(bundle, {"layout": "npz", "path": "clean.npz"})  # the split is bound to the bytes split
    public, hidden_index = split_indices(60, 0.5, seeds.seed(f"bundle|toy|{split_seed_name('split', 0.5, digest)}"))
    data = read_evaluation_set(hidden.path, hidden.sha256)
    assert np.array_equal(data.images.numpy(), images[hidden_index])
    assert np.array_equal(data.labels.numpy(), labels[hidden_index])
    entry = BundleImport.objects.get(track=track).public_files["toy-public"]
    public_data = read_evaluation_set(arena_dirs / "data" / entry["relative_path"], entry["sha256"])
    assert np.array_equal(public_data.images.numpy(), images[public])
    assert read_evaluation_set(shift.path, shift.sha256).images.shape == (30, 1, 8, 8)
    assert "track toy-digits: new track, suite version toy-1" in out


def test_reimport_unchanged_keeps_the_version_and_a_change_after_results_gets_a_new_one(arena_dirs, researcher):
    from submissions.models import Result, Submission

    bundle = write_bundle(arena_dirs / "bundle")
    call_command("import_benchmark", str(bundle))
    track = Track.objects.get(slug="toy-digits")
    first = {s.name: (s.sha256, s.relative_path) for s in track.evaluation_sets.all()}
    call_command("import_benchmark", str(bundle))
    track.refresh_from_db()
    assert track.suite_version == "toy-1"
    assert {s.name: (s.sha256, s.relative_path) for s in track.evaluation_sets.all()} == first
    # A published result under toy-1, then the clean data changes while the manifest keeps toy-1.
    submission = Submission.objects.create(owner=researcher, track=track, name="m", state="finished")
    clean = track.evaluation_sets.get(name="toy-hidden")
    Result.objects.create(submission=submission, evaluation_set=clean, metric="accuracy", value=0.5,
                          num_examples=30, suite_version="toy-1", seed=7)
    write_bundle(bundle, n=60, seed=5)
    call_command("import_benchmark", str(bundle))
    track.refresh_from_db()
    assert track.suite_version.startswith("toy-1+") and len(track.suite_version) == len("toy-1+") + 8
    result = Result.objects.get(submission=submission)
    assert result.suite_version == "toy-1" and result.value == 0.5  # never re-scored
    old_path = arena_dirs / "data" / first["toy-hidden"][1]
    assert old_path.is_file()  # content-addressed: the old file stays for its results
    assert track.evaluation_sets.get(name="toy-hidden").sha256 != first["toy-hidden"][0]


def test_a_dry_run_computes_everything_and_leaves_nothing(arena_dirs, capsys):
    bundle = write_bundle(arena_dirs / "bundle")
    before = _files(arena_dirs / "data") if (arena_dirs / "data").exists() else set()
    call_command("import_benchmark", str(bundle), "--dry-run")
    out = capsys.readouterr().out
    assert "set toy-hidden: 30 images, sha256" in out and "dry run: nothing registered" in out
    assert not Track.objects.exists() and not BundleImport.objects.exists()
    after = _files(arena_dirs / "data")
    assert after == before


def test_a_zip_bundle_imports_like_its_folder(arena_dirs):
    import shutil

    bundle = write_bundle(arena_dirs / "bundle")
    archive = shutil.make_archive(str(arena_dirs / "bundle"), "zip", root_dir=bundle)
    call_command("import_benchmark", archive)
    assert EvaluationSet.objects.filter(track__slug="toy-digits").count() == 2
    assert not any((arena_dirs / "data" / ".bundle-unpacked").iterdir())


def test_a_refused_bundle_registers_and_writes_nothing(arena_dirs, capsys):
    spec = manifest()
    spec["tracks"][0]["evaluation_sets"][1]["data"]["path"] = "nowhere"
    bundle = write_bundle(arena_dirs / "bundle", spec)
    with pytest.raises(CommandError, match="nothing was registered"):
        call_command("import_benchmark", str(bundle))
    assert "tracks[0].evaluation_sets[1].data" in capsys.readouterr().err
    assert not Track.objects.exists()
    staged = arena_dirs / "data" / ".bundle-staging"
    assert not staged.exists() or not any(staged.iterdir())


def test_export_holds_the_public_part_and_no_hidden_image(arena_dirs):
    bundle = write_bundle(arena_dirs / "bundle")
    call_command("import_benchmark", str(bundle))
    call_command("export_benchmark", "toy", str(arena_dirs / "export"))
    hidden_hashes = set()
    for evaluation_set in EvaluationSet.objects.filter(track__benchmark__slug="toy"):
        for image in read_evaluation_set(evaluation_set.path).images.numpy():
            hidden_hashes.add(hashlib.sha256(image.tobytes()).hexdigest())
    exported = yaml.safe_load((arena_dirs / "export" / "benchmark.yaml").read_text())
    public = exported["tracks"][0]["public_parts"][0]
    data = np.load(arena_dirs / "export" / public["file"])
    assert len(data["images"]) == 30
    exported_hashes = {hashlib.sha256(image.tobytes()).hexdigest() for image in data["images"]}
    assert exported_hashes and not exported_hashes & hidden_hashes
    text = "".join(p.read_text(errors="ignore") for p in (arena_dirs / "export").rglob("*")
                   if p.is_file() and p.suffix != ".npz")
    for evaluation_set in EvaluationSet.objects.all():
        assert evaluation_set.sha256 not in text  # no hidden set's hash either


def test_a_secret_splits_the_same_files_alike_and_anything_else_afresh(arena_dirs):
    """Two tracks that split the same files by the same fraction under one secret get the same halves (the demo's
    tracks share one MNIST split). A re-ordered copy of the files, or another fraction, under the same secret gets a
    different draw: otherwise a second bundle could apply the secret's permutation to data of its choice and
    publish, as its public part, which positions the first one keeps hidden."""
    import shutil

    spec = manifest()
    first = spec["tracks"][0]
    second = {**first, "slug": "toy-again", "evaluation_sets": [dict(first["evaluation_sets"][0])]}
    second["evaluation_sets"][0]["split"] = {**first["evaluation_sets"][0]["split"], "public_name": "again-public"}
    third = {**first, "slug": "toy-reordered", "evaluation_sets": [dict(first["evaluation_sets"][0])]}
    third["evaluation_sets"][0]["split"] = {**first["evaluation_sets"][0]["split"], "public_name": "reordered-public",
                                            "data": {"layout": "npz", "path": "reordered.npz"}}
    fourth = {**first, "slug": "toy-tenth", "evaluation_sets": [dict(first["evaluation_sets"][0])]}
    fourth["evaluation_sets"][0]["split"] = {**first["evaluation_sets"][0]["split"], "public_name": "tenth-public",
                                             "hidden_fraction": 0.9}
    spec["tracks"] += [second, third, fourth]
    bundle = write_bundle(arena_dirs / "bundle", spec)
    images, labels = images_and_labels(60, 0)
    order = np.arange(60)[::-1].copy()
    np.savez(bundle / "reordered.npz", images=images[order], labels=labels[order])
    call_command("import_benchmark", str(bundle))
    shutil.rmtree(bundle)

    def hidden(track: str) -> set[bytes]:
        data = read_evaluation_set(EvaluationSet.objects.get(track__slug=track, name="toy-hidden").path)
        return {image.tobytes() for image in data.images.numpy()}

    assert hidden("toy-digits") == hidden("toy-again")
    assert hidden("toy-reordered") != hidden("toy-digits")
    # The 90% split under the same secret does not simply extend the 50% one (its draw is its own).
    assert not hidden("toy-digits") <= hidden("toy-tenth")


def test_a_version_that_tags_results_is_never_reused_for_new_content(arena_dirs, researcher):
    """Content changes twice: first under toy-1 (which has results: new content gets toy-1+digest), then the
    host renames the version to toy-2 and later back to toy-1 with yet other content: toy-1 tags old results,
    so the track gets toy-1+<that content's digest>, never plain toy-1 again."""
    from submissions.models import Result, Submission

    bundle = write_bundle(arena_dirs / "bundle")
    call_command("import_benchmark", str(bundle))
    track = Track.objects.get(slug="toy-digits")
    submission = Submission.objects.create(owner=researcher, track=track, name="m", state="finished")
    Result.objects.create(submission=submission, evaluation_set=track.evaluation_sets.get(name="toy-hidden"),
                          metric="accuracy", value=0.5, num_examples=30, suite_version="toy-1", seed=7)
    spec = manifest(version="toy-2")
    write_bundle(bundle, spec, seed=3)
    call_command("import_benchmark", str(bundle))
    track.refresh_from_db()
    assert track.suite_version == "toy-2"  # nothing published under toy-2: the manifest's name
    write_bundle(bundle, manifest(version="toy-1"), seed=4)
    call_command("import_benchmark", str(bundle))
    track.refresh_from_db()
    assert track.suite_version.startswith("toy-1+")
    call_command("import_benchmark", str(bundle))  # the same content again: the same version
    track.refresh_from_db()
    assert track.suite_version.startswith("toy-1+")


def test_groups_of_a_split_set_follow_its_images(arena_dirs):
    spec = manifest()
    spec["tracks"][0]["evaluation_sets"][0]["groups"] = {"path": "groups.npy", "names": ["even", "odd"]}
    bundle = write_bundle(arena_dirs / "bundle", spec)
    np.save(bundle / "groups.npy", np.arange(60) % 2)
    call_command("import_benchmark", str(bundle))
    hidden = EvaluationSet.objects.get(name="toy-hidden")
    data = read_evaluation_set(hidden.path, hidden.sha256)
    images, _ = images_and_labels(60, 0)
    index = {image.tobytes(): i for i, image in enumerate(images)}
    positions = np.array([index[image.tobytes()] for image in data.images.numpy()])
    assert data.group_names == ["even", "odd"] and np.array_equal(data.groups.numpy(), positions % 2)
