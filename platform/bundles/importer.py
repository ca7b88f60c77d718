"""Import a benchmark bundle: check everything, write every set, then register it all at once.

A bundle is a folder (or a zip, see :mod:`evaluator.data.archives`) with ``benchmark.yaml`` and
data files. :func:`import_bundle` works in three phases so that a refused bundle leaves nothing
behind:

1. **Check** (reads headers only): the manifest against its schema and itself
   (:mod:`bundles.manifest`), every data file against the track (count, size, channels, labels
   within the classes), every baseline artifact through the upload screen researchers' files
   pass, every generator file, and the registered state (a track slug of another benchmark, sets
   that would disappear).
2. **Write** into a private staging folder under ``ARENA_DATA_DIR``: data sets stream chunk by
   chunk from the bundle's files into :class:`~evaluator.data.evalset_writer.EvaluationSetWriter`
   (peak memory does not grow with the number of images); splits are drawn by a seed derived from
   the installation's secret and the benchmark (:mod:`benchmarks.hidden_seeds`), never from a
   number in the bundle; generated shifts (corruptions, laundering, fakes from a generator, a
   transfer attack) are computed from sets already written.
3. **Register**, in one database transaction, only when every set was written: the files move to
   content-addressed names (an old result's file is never overwritten), the rows are created or
   updated, and baselines are submitted like any upload. A track whose scored content changed gets a
   new suite version when its old one has published results (``<version>+<digest>``), so old scores
   stay under the version they were measured with and nothing is silently re-scored.

A dry run performs phases 1 and 2 and removes the staging folder: its report (counts, sha256s,
what would change) is exact, and nothing is registered or left written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import transaction

from accounts.models import TrackQuota
from benchmarks.hidden_seeds import HiddenSeeds, load_or_create
from benchmarks.models import Benchmark, EvaluationSet, Track
from bundles.baselines import submit_baseline
from bundles.manifest import MANIFEST_NAME, BundleInvalid, Problem, load_manifest, set_reference
from bundles.models import BundleImport
from evaluator.data.evalset_writer import EvaluationSetWriter
from evaluator.data.evalsets import read_evaluation_set, split_indices, write_evaluation_set
from evaluator.data.integrity import sha256_file, tree_sha256
from evaluator.data.streams import ImageStream, StreamError, open_stream
from evaluator.spec import DetectorAttackSpec
from submissions.models import Result
from submissions.uploads import check_artifact

logger = logging.getLogger(__name__)

#: Images per chunk while streaming a set from the bundle to its file.
CHUNK = 2048
#: Where staging folders live, under ARENA_DATA_DIR (same file system: the final move is a rename).
STAGING = ".bundle-staging"


@dataclass
class SetOutcome:
    """One set as written (or, for a deferred set, as planned)."""

    track: str
    name: str
    count: int = 0
    sha256: str = ""
    deferred: bool = False
    relative_path: str = ""
    public: bool = False
    #: Provenance a generated set adds to its row (a corruption set's definition, cells, ...).
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrackOutcome:
    slug: str
    status: str = "new"  # new | changed | unchanged
    suite_version: str = ""
    previous_version: str = ""
    digest: str = ""
    sets: list[SetOutcome] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """What an import did (or a dry run would do), for the command's output and the admin page."""

    benchmark: str
    dry_run: bool
    bundle_sha256: str
    tracks: list[TrackOutcome] = field(default_factory=list)

    def lines(self) -> list[str]:
        verb = "would be" if self.dry_run else "was"
        out = [f"benchmark {self.benchmark}: manifest sha256 {self.bundle_sha256[:12]}"]
        for track in self.tracks:
            change = {"new": "new track", "unchanged": "unchanged", "changed": "changed"}[track.status]
            version = track.suite_version
            if track.previous_version and track.previous_version != version:
                version = (f"{version} (new suite version; results under {track.previous_version} stay as they "
                           "are, re-run them with manage.py rerun_track)")
            out.append(f"track {track.slug}: {change}, suite version {version}")
            for s in track.sets:
                what = "deferred (import_benchmark --deferred builds it)" if s.deferred else (
                    f"{s.count:,} images, sha256 {s.sha256[:12]}")
                out.append(f"  {'public part' if s.public else 'set'} {s.name}: {what}")
            for name in track.retired:
                out.append(f"  set {name}: retired (not in the bundle; its scores go with it)")
            for name in track.baselines:
                out.append(f"  baseline {name} {verb} submitted")
        return out


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Importer:
    """One import of one bundle folder; see the module docstring for the phases."""

    def __init__(self, root: Path, *, seeds: HiddenSeeds | None = None, log: Callable[[str], None] | None = None,
                 retire_missing: bool = False, keep_missing: bool = False, include_deferred: bool = False,
                 imported_by: str = "") -> None:
        self.root = Path(root)
        self.data_dir = Path(settings.ARENA_DATA_DIR)
        self._seeds = seeds
        self.log = log or (lambda _: None)
        #: Registered sets the bundle no longer describes: refused (default), retired with their scores, or kept.
        self.retire_missing = retire_missing
        self.keep_missing = keep_missing
        self.include_deferred = include_deferred
        self.imported_by = imported_by
        self.manifest: dict[str, Any] = {}
        self.staging: Path | None = None
        #: (track, set) -> staged file; ("public", track, name) -> staged public file.
        self.staged: dict[tuple[str, ...], Path] = {}
        self.streams: dict[tuple[str, str], ImageStream] = {}

    # -- helpers -----------------------------------------------------------------------------
    @property
    def seeds(self) -> HiddenSeeds:
        if self._seeds is None:
            self._seeds, created = load_or_create()
            if created:
                self.log("hidden-data secret created (keep ARENA_DATA_DIR/secrets private and backed up)")
        return self._seeds

    def secret_seed(self, name: str) -> int:
        """The seed a bundle names ``name``: derived from the installation's secret and the benchmark's slug.

        The slug is part of the derivation so that no other benchmark's bundle can name its way to
        this benchmark's seeds (and, by exporting a public part, publish the complement of a hidden one).
        """
        return self.seeds.seed(f"bundle|{self.manifest['benchmark']['slug']}|{name}")

    def split_seed(self, split: dict[str, Any], default_name: str) -> int:
        """The seed of a public/hidden split: its secret's name, bound to the fraction and to the data's bytes.

        Two sets that split the same files by the same fraction under the same secret draw the same
        halves (the demo's tracks share one MNIST split). Any other split, a different fraction or
        files with any byte changed (a re-ordered copy, images replaced by their index), draws
        afresh: otherwise a second bundle could reuse a secret's permutation on data of its own
        choosing and publish, as its "public part", which positions the first bundle keeps hidden.
        """
        return self.secret_seed(split_seed_name(split.get("secret", default_name), split["hidden_fraction"],
                                                data_digest(self.root, split["data"])))

    @staticmethod
    def _shape(track: dict[str, Any]) -> tuple[int, int, int]:
        spec = track["input"]
        return int(spec["channels"]), int(spec["height"]), int(spec["width"])

    @staticmethod
    def _classes(track: dict[str, Any]) -> int:
        if track["task"] == "detector":
            return 2
        return int(track.get("classes", len(track.get("class_names", []))))

    def _open(self, track: dict[str, Any], data: dict[str, Any], key: str) -> ImageStream:
        spec = {k: v for k, v in data.items() if k != "layout"}
        try:
            stream = open_stream(data["layout"], self.root, spec, self._shape(track),
                                 track.get("class_names") if data["layout"] == "folders" else None)
        except StreamError as exc:
            raise BundleInvalid([Problem(key, str(exc))]) from None
        return stream

    def _check_labels(self, track: dict[str, Any], labels: np.ndarray, key: str) -> list[Problem]:
        classes = self._classes(track)
        bad = (labels < 0) | (labels >= classes)
        if bad.any():
            return [Problem(key, f"{int(bad.sum())} labels lie outside 0..{classes - 1} (first: {int(labels[bad][0])}"
                                 f" at image {int(np.flatnonzero(bad)[0])}); the track has {classes} classes")]
        if track["task"] == "detector" and len(labels) and len(np.unique(labels)) < 2:
            return [Problem(key, "a detector set needs both reals (label 0) and fakes (label 1)")]
        return []

    # -- phase 1: check ------------------------------------------------------------------------
    def check(self) -> None:
        """Everything that can be checked before writing; BundleInvalid with every problem found."""

        self.manifest = load_manifest(self.root)
        problems: list[Problem] = []
        benchmark = self.manifest["benchmark"]["slug"]
        for t, track in enumerate(self.manifest["tracks"]):
            where = f"tracks[{t}]"
            existing = Track.objects.filter(slug=track["slug"]).select_related("benchmark").first()
            if existing is not None and existing.benchmark.slug != benchmark:
                problems.append(Problem(f"{where}.slug", f"track {track['slug']!r} belongs to benchmark "
                                                         f"{existing.benchmark.slug!r}"))
            for name, generator in track.get("generators", {}).items():
                problems += self._check_file(f"{where}.generators.{name}.file", generator["file"])
            if track.get("detector_attacks"):
                overrides = {k: v for k, v in track["detector_attacks"].items() if k != "enabled"}
                try:
                    DetectorAttackSpec.from_dict(overrides)
                except (TypeError, ValueError) as exc:
                    problems.append(Problem(f"{where}.detector_attacks", f"not parameters of the detector attack "
                                                                         f"suite: {exc}"))
            for s, evaluation_set in enumerate(track["evaluation_sets"]):
                key = f"{where}.evaluation_sets[{s}]"
                try:
                    problems += self._check_set(track, evaluation_set, key)
                except BundleInvalid as exc:
                    problems += exc.problems
            for b, baseline in enumerate(track.get("baselines", [])):
                problems += self._check_baseline(track, baseline, f"{where}.baselines[{b}]")
            if existing is not None and not self.retire_missing and not self.keep_missing:
                described = {s["name"] for s in track["evaluation_sets"]}
                gone = sorted(set(existing.evaluation_sets.values_list("name", flat=True)) - described)
                if gone:
                    problems.append(Problem(f"{where}.evaluation_sets",
                                            f"registered set(s) {', '.join(gone)} are not in the bundle; import with "
                                            "--retire-missing to remove them and their scores, or --keep-missing "
                                            "to keep them"))
        if problems:
            raise BundleInvalid(problems)

    def _check_file(self, key: str, relative: str) -> list[Problem]:
        path = self.root / relative
        if ".." in Path(relative).parts or Path(relative).is_absolute():
            return [Problem(key, f"{relative} leaves the bundle")]
        if path.is_symlink():
            return [Problem(key, f"{relative} is a link; bundles may not contain links")]
        if not path.is_file():
            return [Problem(key, f"{relative} is missing")]
        return []

    def _check_set(self, track: dict[str, Any], evaluation_set: dict[str, Any], key: str) -> list[Problem]:
        problems: list[Problem] = []
        shape = self._shape(track)
        if "data" in evaluation_set or "split" in evaluation_set:
            data = evaluation_set["data"] if "data" in evaluation_set else evaluation_set["split"]["data"]
            data_key = f"{key}.data" if "data" in evaluation_set else f"{key}.split.data"
            if track["task"] == "classifier" and data["layout"] == "real_fake":
                return [Problem(f"{data_key}.layout", "real_fake is a detector layout; this is a classifier track")]
            stream = self._open(track, data, data_key)
            labels = stream.labels()
            problems += self._check_labels(track, labels, data_key)
            if stream.count == 0:
                problems.append(Problem(data_key, "holds no images"))
            self.streams[(track["slug"], evaluation_set["name"])] = stream
            count = stream.count
            if "split" in evaluation_set:
                count = round(count * evaluation_set["split"]["hidden_fraction"])
                if count == 0 or count == stream.count:
                    problems.append(Problem(f"{key}.split.hidden_fraction",
                                            f"splits {stream.count} images into an empty part"))
            groups = evaluation_set.get("groups")
            if groups:
                problems += self._check_groups(groups, stream.count, f"{key}.groups")
        else:
            generate = evaluation_set["generate"]
            inline = generate.get("reals") if isinstance(generate.get("reals"), dict) else None
            if inline:
                data = inline["data"] if "data" in inline else inline["split"]["data"]
                stream = self._open(track, data, f"{key}.generate.reals.{'data' if 'data' in inline else 'split.data'}")
                self.streams[(track["slug"], f"{evaluation_set['name']}#reals")] = stream
                available = stream.count if "data" in inline else round(
                    stream.count * inline["split"]["hidden_fraction"])
                if generate["first"] > available:
                    problems.append(Problem(f"{key}.generate.first",
                                            f"{generate['first']} reals asked for, {available} available"))
            if generate["kind"] == "corruptions":
                from evaluator.shifts.corruptions import get_definition  # torch: loaded only when needed

                definition = get_definition(generate["definition"])
                if definition.image_shape is not None and tuple(definition.image_shape) != shape:
                    problems.append(Problem(f"{key}.generate.definition",
                                            f"{definition.id} is defined for "
                                            f"{'x'.join(map(str, definition.image_shape))} images, the track says "
                                            f"{'x'.join(map(str, shape))}"))
            if generate["kind"] == "transfer_attack":
                from evaluator.models.zoo import get_architecture  # torch: loaded only when needed

                try:
                    entry = get_architecture(generate["surrogate_architecture"])
                except (KeyError, ValueError):
                    entry = None
                if entry is None or entry.task != "detector" or tuple(entry.input_shape) != shape:
                    problems.append(Problem(f"{key}.generate.surrogate_architecture",
                                            f"{generate['surrogate_architecture']!r} is not a zoo detector for "
                                            f"{'x'.join(map(str, shape))} images"))
            if evaluation_set.get("subsample"):
                problems.append(Problem(f"{key}.subsample", "generated sets say their own size"))
        return problems

    def _check_groups(self, groups: dict[str, Any], count: int, key: str) -> list[Problem]:
        problems = self._check_file(f"{key}.path", groups["path"])
        if problems:
            return problems
        try:
            array = np.load(self.root / groups["path"], allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return [Problem(f"{key}.path", f"cannot read {groups['path']} as .npy: {exc}")]
        if array.shape != (count,) or not np.issubdtype(array.dtype, np.integer):
            return [Problem(f"{key}.path", f"{groups['path']} must hold {count} integers, holds {array.dtype} "
                                           f"{array.shape}")]
        if count and (int(array.min()) < 0 or int(array.max()) >= len(groups["names"])):
            return [Problem(f"{key}.path", f"group indices must lie in 0..{len(groups['names']) - 1}")]
        return []

    def _check_baseline(self, track: dict[str, Any], baseline: dict[str, Any], key: str) -> list[Problem]:
        problems = self._check_file(f"{key}.file", baseline["file"])
        if problems:
            return problems


        with (self.root / baseline["file"]).open("rb") as handle:
            try:
                check_artifact(File(handle, name=Path(baseline["file"]).name), baseline["format"],
                               baseline.get("zoo_architecture", ""))
            except ValidationError as exc:
                messages = [m for ms in getattr(exc, "message_dict", {"": exc.messages}).values() for m in ms]
                return [Problem(f"{key}.file", " ".join(messages))]
        if baseline.get("zoo_architecture"):
            from evaluator.models.zoo import get_architecture  # torch: loaded only when needed

            try:
                entry = get_architecture(baseline["zoo_architecture"])
            except (KeyError, ValueError):
                return [Problem(f"{key}.zoo_architecture",
                                f"unknown zoo architecture {baseline['zoo_architecture']!r}")]
            if entry.task != track["task"] or tuple(entry.input_shape) != self._shape(track):
                return [Problem(f"{key}.zoo_architecture",
                                f"{baseline['zoo_architecture']} is a {entry.task} for "
                                f"{'x'.join(map(str, entry.input_shape))} inputs; the track is a {track['task']} "
                                f"for {'x'.join(map(str, self._shape(track)))}")]
        return []

    # -- phase 2: write ------------------------------------------------------------------------
    def _stage_path(self, *parts: str) -> Path:
        assert self.staging is not None
        path = self.staging.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _write_stream(self, path: Path, stream: ImageStream, indices: np.ndarray | None,
                      metadata: dict[str, str], groups: tuple[np.ndarray, list[str]] | None = None) -> str:
        labels = stream.labels() if indices is None else stream.labels()[indices]
        group_array, group_names = (None, None) if groups is None else groups
        if group_array is not None and indices is not None:
            group_array = group_array[indices]
        with EvaluationSetWriter(path, labels.astype(np.int64), stream.shape, metadata, group_array,
                                 group_names) as writer:
            chunks = stream.chunks(CHUNK) if indices is None else stream.take(indices, CHUNK)
            for images, _ in chunks:
                writer.write(images)
        return writer.sha256

    def _header(self, track: dict[str, Any], evaluation_set: dict[str, Any]) -> dict[str, str]:
        metadata = {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                    for key, value in evaluation_set.get("metadata", {}).items()}
        return {**metadata, "name": evaluation_set["name"], "track": track["slug"],
                "benchmark": self.manifest["benchmark"]["slug"]}

    def _subsample(self, n: int, evaluation_set: dict[str, Any], track: dict[str, Any]) -> np.ndarray | None:
        subsample = evaluation_set.get("subsample")
        if not subsample or subsample["count"] >= n:
            return None
        seed = self.secret_seed(subsample.get("secret", f"{track['slug']}/{evaluation_set['name']}/subsample"))
        return np.sort(np.random.Generator(np.random.PCG64(seed)).permutation(n)[: subsample["count"]])

    def _read_staged(self, track: dict[str, Any], reference: str) -> tuple[np.ndarray, np.ndarray]:
        public, slug, name = set_reference(track, reference)
        path = self.staged[("public", slug, name) if public else (slug, name)]
        data = read_evaluation_set(path)
        return data.images.numpy(), data.labels.numpy()

    def write(self) -> list[TrackOutcome]:
        """Phase 2: every set of every track into the staging folder."""
        outcomes = []
        for t, track in enumerate(self.manifest["tracks"]):
            outcome = TrackOutcome(track["slug"])
            for s, evaluation_set in enumerate(track["evaluation_sets"]):
                try:
                    outcome.sets += self._write_set(track, evaluation_set)
                except StreamError as exc:
                    # Pixels are only read now (float range, truncated or undecodable images): still the
                    # bundle's fault, so a refusal naming the key, not a traceback (run() removes the staging).
                    key = _data_key(evaluation_set, f"tracks[{t}].evaluation_sets[{s}]")
                    raise BundleInvalid([Problem(key, str(exc))]) from None
            outcomes.append(outcome)
        return outcomes

    def _write_set(self, track: dict[str, Any], evaluation_set: dict[str, Any]) -> list[SetOutcome]:
        slug, name = track["slug"], evaluation_set["name"]
        self.log(f"  writing {slug}:{name}")
        header = self._header(track, evaluation_set)
        made: list[SetOutcome] = []
        path = self._stage_path("evalsets", slug, f"{name}.safetensors")
        if "data" in evaluation_set:
            stream = self.streams[(slug, name)]
            digest = self._write_stream(path, stream, self._subsample(stream.count, evaluation_set, track), header,
                                        self._groups(evaluation_set))
        elif "split" in evaluation_set:
            split = evaluation_set["split"]
            stream = self.streams[(slug, name)]
            seed = self.split_seed(split, f"{slug}/{name}/split")
            public, hidden = split_indices(stream.count, split["hidden_fraction"], seed)
            keep = self._subsample(len(hidden), evaluation_set, track)
            # Groups are indexed like the images: split and subsampled with them.
            digest = self._write_stream(path, stream, hidden if keep is None else hidden[keep], header,
                                        self._groups(evaluation_set))
            made += self._public_part(slug, split, stream, public)
        else:
            generate = evaluation_set["generate"]
            if generate.get("defer") and not self.include_deferred:
                return [SetOutcome(slug, name, deferred=True)]
            inline = generate.get("reals") if isinstance(generate.get("reals"), dict) else None
            if inline:  # generate from the staged reals, keeping the manifest as written
                made += self._inline_reals(track, evaluation_set, inline)
                evaluation_set = {**evaluation_set, "generate": {**generate, "reals": f"{name}#reals"}}
            images, labels, groups, names, metadata = generate_set(
                track, evaluation_set, lambda reference: self._read_staged(track, reference), self.secret_seed,
                self.root, self.log)
            header = {**header, **{k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                                   for k, v in metadata.items()}}
            digest = write_evaluation_set(path, images, labels, header, groups, names)
            self.staged[(slug, name)] = path
            made.insert(0, SetOutcome(slug, name, len(labels), digest, metadata=metadata))
            return made
        self.staged[(slug, name)] = path
        made.insert(0, SetOutcome(slug, name, self._count_of(path), digest))
        return made

    def _groups(self, evaluation_set: dict[str, Any]) -> tuple[np.ndarray, list[str]] | None:
        """The set's optional groups file (checked in phase 1) and names."""
        groups = evaluation_set.get("groups")
        if not groups:
            return None
        return (np.load(self.root / groups["path"], allow_pickle=False).astype(np.int64), list(groups["names"]))

    def _public_part(self, slug: str, split: dict[str, Any], stream: ImageStream,
                     public: np.ndarray) -> list[SetOutcome]:
        """Stage a split's public part when the manifest names one (for researchers and the export)."""
        if "public_name" not in split:
            return []
        path = self._stage_path("public", slug, f"{split['public_name']}.safetensors")
        digest = self._write_stream(path, stream, public, {"name": split["public_name"], "track": slug,
                                                           "public": "true"})
        self.staged[("public", slug, split["public_name"])] = path
        return [SetOutcome(slug, split["public_name"], len(public), digest, public=True)]

    def _inline_reals(self, track: dict[str, Any], evaluation_set: dict[str, Any],
                      inline: dict[str, Any]) -> list[SetOutcome]:
        """Stage the reals a generated set names inline (files, or a split's hidden part) as "<name>#reals"."""
        slug, name = track["slug"], evaluation_set["name"]
        stream = self.streams[(slug, f"{name}#reals")]
        first = evaluation_set["generate"]["first"]
        made = []
        if "split" in inline:
            split = inline["split"]
            seed = self.split_seed(split, f"{slug}/{name}/split")
            public, hidden = split_indices(stream.count, split["hidden_fraction"], seed)
            made += self._public_part(slug, split, stream, public)
            indices = hidden[:first]
        else:
            indices = np.arange(first, dtype=np.int64)
        path = self._stage_path("inputs", slug, f"{name}-reals.safetensors")
        self._write_stream(path, stream, indices, {"name": f"{name}#reals"})
        self.staged[(slug, f"{name}#reals")] = path
        return made

    @staticmethod
    def _count_of(path: Path) -> int:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            return int(handle.get_slice("labels").get_shape()[0])

    # -- phase 3: register ---------------------------------------------------------------------
    def run(self, dry_run: bool = False) -> ImportReport:
        """Check, write and (unless ``dry_run``) register; BundleInvalid when refused, nothing left behind."""
        self.check()
        bundle_sha = sha256_file(self.root / MANIFEST_NAME)
        staging_root = self.data_dir / STAGING
        staging_root.mkdir(parents=True, exist_ok=True)
        self.staging = staging_root / uuid.uuid4().hex
        moved: list[Path] = []
        try:
            outcomes = self.write()
            report = ImportReport(self.manifest["benchmark"]["slug"], dry_run, bundle_sha, outcomes)
            with transaction.atomic():
                self._register(report, moved, dry_run)
                if dry_run:
                    transaction.set_rollback(True)
            return report
        except BaseException:
            for path in moved:
                path.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _digest(self, track: dict[str, Any], outcome: TrackOutcome, generator_shas: dict[str, str]) -> str:
        """What decides the track's scores; presentation (names, texts, quotas, queue) is left out."""
        scored = {key: track.get(key) for key in ("task", "input", "classes", "class_names", "seed", "attack_suite",
                                                  "threat_models", "attack_points", "reliability_points",
                                                  "detector_attacks", "attack_generator")}
        sets = []
        for evaluation_set, made in zip(track["evaluation_sets"], [s for s in outcome.sets if not s.public],
                                        strict=True):
            sets.append({"name": evaluation_set["name"], "role": evaluation_set["role"],
                         "shift_kind": evaluation_set.get("shift_kind", ""),
                         "content": evaluation_set["generate"] if made.deferred else made.sha256})
        return hashlib.sha256(_canonical({"track": scored, "sets": sets, "generators": generator_shas})).hexdigest()

    def _register(self, report: ImportReport, moved: list[Path], dry_run: bool) -> None:

        spec = self.manifest["benchmark"]
        benchmark, _ = Benchmark.objects.update_or_create(
            slug=spec["slug"], defaults={"name": spec["name"], "description": spec.get("description", "")})
        for index, (track_spec, outcome) in enumerate(zip(self.manifest["tracks"], report.tracks, strict=True)):
            slug = track_spec["slug"]
            generator_files = {}
            for key, generator in sorted(track_spec.get("generators", {}).items()):
                source = self.root / generator["file"]
                digest = sha256_file(source)
                relative = f"{slug}/generator-{key}-{digest[:16]}.safetensors"
                generator_files[key] = (relative, digest, generator["architecture"])
            outcome.digest = self._digest(track_spec, outcome, {k: v[1] for k, v in generator_files.items()})
            track = Track.objects.filter(slug=slug).first()
            previous = track.bundle_imports.first() if track is not None else None
            wanted = track_spec["suite_version"]
            if track is None:
                outcome.status, version = "new", wanted
            elif previous is not None and previous.digest == outcome.digest and track.suite_version in (
                    wanted, f"{wanted[:31]}+{outcome.digest[:8]}"):
                outcome.status, version = "unchanged", track.suite_version
            else:
                outcome.status = "changed"
                version = suite_version_for(track, wanted, outcome.digest)
                outcome.previous_version = track.suite_version
            outcome.suite_version = version
            try:
                track = self._save_track(benchmark, track_spec, version, generator_files, moved, dry_run)
            except ValidationError as exc:  # what the model refuses beyond the schema: a refusal, not a traceback
                messages = [m for ms in getattr(exc, "message_dict", {"": exc.messages}).values() for m in ms]
                raise BundleInvalid([Problem(f"tracks[{index}]", " ".join(messages))]) from None
            quota = track_spec.get("quota")
            if quota:
                TrackQuota.objects.update_or_create(track=track, defaults={
                    "daily_limit": quota.get("daily", settings.ARENA_DEFAULT_DAILY_LIMIT),
                    "total_limit": quota.get("total", settings.ARENA_DEFAULT_TOTAL_LIMIT)})
            public_files = {}
            for made, set_spec in self._pairs(track_spec, outcome):
                if made.deferred:
                    continue
                staged = self.staged[("public", slug, made.name) if made.public else (slug, made.name)]
                folder = "public" if made.public else "evalsets"
                made.relative_path = f"{folder}/{slug}/{made.name}-{made.sha256[:16]}.safetensors"
                self._place(staged, made.relative_path, made.sha256, moved, dry_run)
                if made.public:
                    public_files[made.name] = {"relative_path": made.relative_path, "sha256": made.sha256,
                                               "num_examples": made.count}
                    continue
                metadata = {**set_spec.get("metadata", {}), **made.metadata}
                EvaluationSet.objects.update_or_create(track=track, name=made.name, defaults={
                    "version": made.sha256[:12], "role": set_spec["role"],
                    "shift_kind": set_spec.get("shift_kind", ""), "is_hidden": True,
                    "relative_path": made.relative_path, "sha256": made.sha256, "num_examples": made.count,
                    "source": metadata.pop("source", set_spec["source"]), "license": set_spec["license"],
                    "metadata": metadata})
            if self.retire_missing:
                described = {s["name"] for s in track_spec["evaluation_sets"]}
                for gone in track.evaluation_sets.exclude(name__in=described):
                    outcome.retired.append(gone.name)
                    gone.delete()
            pending = [s for s in track_spec["evaluation_sets"]
                       if any(m.deferred and m.name == s["name"] for m in outcome.sets)]
            BundleImport.objects.create(
                track=track, digest=outcome.digest, suite_version=version, bundle_sha256=report.bundle_sha256,
                manifest={"format": self.manifest["format"], "benchmark": spec, "track": track_spec,
                          "stored_generators": {key: v[0] for key, v in generator_files.items()}},
                public_files=public_files, pending=[s["name"] for s in pending], imported_by=self.imported_by)
            for baseline in track_spec.get("baselines", []):
                if dry_run:
                    outcome.baselines.append(baseline["name"])
                elif self._submit_baseline(track, baseline):
                    outcome.baselines.append(baseline["name"])

    @staticmethod
    def _pairs(track_spec: dict[str, Any], outcome: TrackOutcome) -> list[tuple[SetOutcome, dict[str, Any]]]:
        by_name = {s["name"]: s for s in track_spec["evaluation_sets"]}
        return [(made, by_name.get(made.name, {})) for made in outcome.sets]

    def _place(self, staged: Path, relative: str, sha256: str, moved: list[Path], dry_run: bool) -> None:
        """Move a staged file to its content-addressed name; an existing file with that content is kept."""
        if dry_run:
            return
        target = self.data_dir / relative
        if target.exists() and sha256_file(target) == sha256:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        moved.append(target)

    def _save_track(self, benchmark: Any, spec: dict[str, Any], version: str,
                    generator_files: dict[str, tuple[str, str, str]], moved: list[Path], dry_run: bool) -> Any:

        value_range = spec["input"].get("value_range", [0.0, 1.0])
        ladder = spec.get("ladder", {})
        defaults = {
            "benchmark": benchmark, "name": spec["name"], "description": spec.get("description", ""),
            "notes": spec.get("notes", ""), "task_kind": spec["task"],
            "input_channels": spec["input"]["channels"], "input_height": spec["input"]["height"],
            "input_width": spec["input"]["width"], "value_min": float(value_range[0]),
            "value_max": float(value_range[1]), "num_classes": self._classes(spec),
            "class_names": spec.get("class_names", []), "suite_version": version, "seed": spec.get("seed", 0),
            "threat_models": spec.get("threat_models", []), "attack_points": spec.get("attack_points", 1000),
            "attack_suite": spec.get("attack_suite", "attacks-2"),
            "reliability_points": spec.get("reliability_points", 200),
            "ladder": ladder.get("enabled", False), "ladder_margin": ladder.get("margin", 0.0),
            "queue": spec.get("queue", ""), "queue_priority": spec.get("queue_priority", 0),
            "batch_size": spec.get("batch_size", 256), "is_public": spec.get("public", True),
            "baseline_min_accuracy": spec.get("baseline_min_accuracy", 0.0),
            "detector_attacks": spec.get("detector_attacks", {}), "generator": {},
        }
        for key, (relative, digest, architecture) in generator_files.items():
            if not dry_run:
                target = self.data_dir / relative
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial = target.with_name(f".{target.name}.part")
                    shutil.copyfile(self.root / spec["generators"][key]["file"], partial)
                    os.replace(partial, target)
                    moved.append(target)
            if key == spec.get("attack_generator"):
                from evaluator.models.zoo import get_architecture  # torch: loaded only when needed

                defaults["generator"] = {"architecture": architecture, "relative_path": relative, "sha256": digest,
                                         "latent_dim": int(getattr(get_architecture(architecture), "latent_dim", 0)
                                                           or 0)}
        track, _ = Track.objects.update_or_create(slug=spec["slug"], defaults=defaults)
        track.full_clean()
        return track

    def _submit_baseline(self, track: Any, baseline: dict[str, Any]) -> bool:

        metadata = {key: baseline[key] for key in ("architecture", "training_data", "license", "code_url",
                                                   "paper_url", "zoo_architecture") if key in baseline}
        made = submit_baseline(track, self.root / baseline["file"], name=baseline["name"],
                               artifact_format=baseline["format"], model_type=baseline["model_type"], **metadata)
        return made is not None


def _data_key(evaluation_set: dict[str, Any], key: str) -> str:
    """The manifest key of the files a set's data comes from, as phase 1 names them."""
    if "data" in evaluation_set:
        return f"{key}.data"
    if "split" in evaluation_set:
        return f"{key}.split.data"
    reals = evaluation_set.get("generate", {}).get("reals")
    if isinstance(reals, dict):
        return f"{key}.generate.reals.{'data' if 'data' in reals else 'split.data'}"
    return key


def suite_version_for(track: Track, wanted: str, digest: str) -> str:
    """The suite version a changed track is registered under: the manifest's, unless it already tags results.

    Results measured under a version were measured on that version's content; new content under the
    same name would mix two benchmarks in one column. So a version that tags any result of the track
    (the current one, or one the track had before) is not reused for new content: the track gets
    ``<version>+<digest>``, a name bound to this content (a later return to exactly this content may reuse it).
    """
    if not Result.objects.filter(evaluation_set__track=track, suite_version=wanted).exists():
        return wanted
    return f"{wanted[:31]}+{digest[:8]}"


def generate_set(track: dict[str, Any], evaluation_set: dict[str, Any],
                 read: Callable[[str], tuple[np.ndarray, np.ndarray]], secret_seed: Callable[[str], int],
                 root: Path | None, log: Callable[[str], None], step: Callable[[str], None] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str] | None, dict[str, Any]]:
    """Compute one generated set from sets already written: (images, labels, groups, names, header metadata).

    ``read(reference)`` gives a written set's arrays; ``secret_seed(name)`` a seed of this
    installation; ``step`` hears the part in progress of a slow set ("surrogate training", ...).
    Generated sets are bounded by their own parameters (images per cell, per class), so they are
    computed in memory.
    """
    generate = evaluation_set["generate"]
    slug, name = track["slug"], evaluation_set["name"]
    kind = generate["kind"]
    recipe = {"recipe": json.dumps(generate, sort_keys=True)}
    if kind == "corruptions":
        from evaluator.shifts.corruptions import (  # torch: loaded only when needed
            SEVERITIES,
            build_corruption_set,
            corruption_set_metadata,
            describe_corruption_set,
        )

        images, labels = read(generate["from"])
        seed = secret_seed(generate.get("secret", f"{slug}/{name}/corruptions"))
        log(f"  corrupting {generate['per_cell']} images per cell ({generate['definition']}) for {slug}:{name}")
        c_images, c_labels, groups, names = build_corruption_set(
            images, labels, base_seed=seed, per_cell=min(generate["per_cell"], len(labels)),
            severities=SEVERITIES, definition=generate["definition"])
        per_cell = min(generate["per_cell"], len(labels))
        metadata = corruption_set_metadata(generate["definition"], list(names), per_cell)
        corruptions = list(dict.fromkeys(n.rpartition(":")[0] for n in names))
        # The row's source says what was done to which images (the manifest's source names the images).
        metadata["source"] = describe_corruption_set(generate["definition"], corruptions, SEVERITIES, per_cell,
                                                     evaluation_set["source"])
        return c_images, c_labels, groups, list(names), {**metadata, **recipe}
    if kind == "laundering":
        from evaluator.shifts.laundering import laundered_set  # torch: loaded only when needed

        images, labels = read(generate["from"])
        reals, fakes = _first_of_each(images, labels, generate["per_class"])
        both = np.concatenate([reals, fakes])
        l_images, l_labels, groups, names = laundered_set(both, _real_fake_labels(len(reals), len(fakes)))
        return l_images, l_labels, groups, names, recipe
    generator_spec = track["generators"][generate["generator"]]
    if kind == "generator_fakes":
        from evaluator.models.loading import load_generator  # torch: loaded only when needed
        from evaluator.models.zoo import get_architecture  # torch: loaded only when needed
        from evaluator.testbed.detectors import sample_generator  # torch: loaded only when needed

        images, labels = read(generate["reals"])
        _, reals_track, reals_name = set_reference(track, generate["reals"])
        if reals_track == slug and not reals_name.endswith("#reals"):  # a set of this detector track: its reals
            images = images[labels == 0]
        reals = images[: generate["first"]]
        generator = load_generator(root / generator_spec["file"], generator_spec["architecture"])
        latent = int(getattr(get_architecture(generator_spec["architecture"]), "latent_dim", 0) or
                     generator.latent_dim)
        fakes = sample_generator(generator, len(reals),
                                 secret_seed(generate.get("secret", f"{slug}/{name}/fakes")), latent)
        return (np.concatenate([reals, fakes]), _real_fake_labels(len(reals), len(fakes)), None, None, recipe)
    if kind == "transfer_attack":
        return _transfer_set(track, evaluation_set, read, secret_seed, root, log, step or (lambda _: None))
    raise ValueError(f"unknown generated set kind {kind!r}")


def data_files(data: dict[str, Any]) -> list[str]:
    """The files (or folders) a ``data`` spec names, in a fixed order."""
    return [data["images"], data["labels"]] if data["layout"] in ("npy", "idx") else [data["path"]]


def data_digest(root: Path, data: dict[str, Any]) -> str:
    """sha256 over the bytes of the files a ``data`` spec names (a folder by its tree hash)."""
    return files_digest([tree_sha256(root / f) if (root / f).is_dir() else sha256_file(root / f)
                         for f in data_files(data)])


def files_digest(file_sha256s: list[str]) -> str:
    """One sha256 over the files' own sha256s, in the order ``data_files`` names them."""
    return hashlib.sha256("|".join(file_sha256s).encode()).hexdigest()


def split_seed_name(secret: str, hidden_fraction: float, digest: str) -> str:
    """The name a split's seed is derived under (see :meth:`Importer.split_seed`)."""
    return f"{secret}|split|{hidden_fraction!r}|{digest}"


def _first_of_each(images: np.ndarray, labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    reals = images[labels == 0][:per_class]
    fakes = images[labels == 1][:per_class]
    count = min(len(reals), len(fakes))
    return reals[:count], fakes[:count]


def _real_fake_labels(reals: int, fakes: int) -> np.ndarray:
    return np.concatenate([np.zeros(reals, dtype=np.int64), np.ones(fakes, dtype=np.int64)])


def _transfer_set(track: dict[str, Any], evaluation_set: dict[str, Any],
                  read: Callable[[str], tuple[np.ndarray, np.ndarray]], secret_seed: Callable[[str], int],
                  root: Path | None, log: Callable[[str], None], step: Callable[[str], None],
                  ) -> tuple[np.ndarray, np.ndarray, None, None, dict[str, Any]]:
    """Hidden reals against hidden fakes attacked through a surrogate trained on public data (black box)."""
    import time

    from evaluator.models.loading import load_generator  # torch: loaded only when needed
    from evaluator.models.zoo import get_architecture  # torch: loaded only when needed
    from evaluator.testbed.detectors import (  # torch: loaded only when needed
        detector_auc,
        sample_generator,
        train_detector,
        transfer_attack,
    )

    generate = evaluation_set["generate"]
    slug, name = track["slug"], evaluation_set["name"]
    images, labels = read(generate["from"])
    reals, fakes = _first_of_each(images, labels, generate["per_class"])
    public_reals, _ = read(generate["public_reals"])
    public_reals = public_reals[: generate.get("public_first", len(public_reals))]
    generator_spec = track["generators"][generate["generator"]]
    generator_path = Path(generator_spec["file"]) if root is None else root / generator_spec["file"]
    generator = load_generator(generator_path, generator_spec["architecture"])
    latent = int(getattr(get_architecture(generator_spec["architecture"]), "latent_dim", 0) or generator.latent_dim)
    public_fakes = sample_generator(generator, len(public_reals), generate.get("public_fake_seed", 1), latent)
    step("surrogate training")
    started = time.perf_counter()
    surrogate = train_detector(generate["surrogate_architecture"], public_reals, public_fakes,
                               seed=secret_seed(generate.get("secret", f"{slug}/{name}") + "/surrogate"),
                               epochs=generate["surrogate_epochs"])
    log(f"  surrogate {generate['surrogate_architecture']} for {slug}:{name}: {len(public_reals)} + "
        f"{len(public_fakes)} public images in {time.perf_counter() - started:.1f} s, public AUC "
        f"{detector_auc(surrogate, public_reals, public_fakes):.4f}")
    step(f"attacking {len(fakes)} hidden fakes")
    attacked = transfer_attack(surrogate, fakes, generate["eps"], steps=generate["steps"],
                               seed=secret_seed(generate.get("secret", f"{slug}/{name}") + "/transfer"))
    return (np.concatenate([reals, attacked]), _real_fake_labels(len(reals), len(attacked)), None, None,
            {"recipe": json.dumps(generate, sort_keys=True)})


def complete_deferred(tracks: list[str] | None = None, *, seeds: HiddenSeeds | None = None,
                      log: Callable[[str], None] | None = None,
                      step: Callable[[str], None] | None = None) -> list[Any]:
    """Build the deferred generated sets of imported tracks (``import_benchmark --deferred``).

    Each pending set is computed from the track's registered sets and public parts, as its stored
    recipe says, and registered once its file is complete (an evaluation that starts earlier
    simply lacks its score). A registered set made by the same recipe from the same inputs is
    kept: a repeated call trains nothing. Returns the sets registered now.
    """

    log = log or (lambda _: None)
    seeds = seeds or load_or_create()[0]
    made = []
    queryset = Track.objects.filter(bundle_imports__isnull=False).distinct()
    if tracks:
        queryset = queryset.filter(slug__in=tracks)
    for track in queryset:
        latest = track.bundle_imports.first()
        if latest is None or not latest.pending:
            continue
        spec = json.loads(json.dumps(latest.manifest["track"]))
        benchmark = latest.manifest["benchmark"]["slug"]
        for key, relative in latest.manifest.get("stored_generators", {}).items():
            spec["generators"][key]["file"] = relative

        def read(reference: str, spec: dict[str, Any] = spec) -> tuple[np.ndarray, np.ndarray]:
            is_public, slug, name = set_reference(spec, reference)
            if is_public:
                source = BundleImport.objects.filter(track__slug=slug).first()
                entry = (source.public_files if source else {}).get(name)
                if entry is None:
                    raise BundleInvalid([Problem("", f"public part {reference!r} is not registered")])
                data = read_evaluation_set(Path(settings.ARENA_DATA_DIR) / entry["relative_path"], entry["sha256"])
            else:
                registered = EvaluationSet.objects.get(track__slug=slug, name=name)
                data = read_evaluation_set(registered.path, registered.sha256)
            return data.images.numpy(), data.labels.numpy()

        for name in list(latest.pending):
            set_spec = next(s for s in spec["evaluation_sets"] if s["name"] == name)
            generate = set_spec["generate"]
            inputs = _inputs_digest(spec, generate, latest)
            existing = track.evaluation_sets.filter(name=name).first()
            if (existing is not None and existing.metadata.get("recipe") == json.dumps(generate, sort_keys=True)
                    and existing.metadata.get("inputs") == inputs and existing.path.exists()
                    and sha256_file(existing.path) == existing.sha256):
                log(f"  evaluation set {track.slug}:{name}: up to date, kept")
            else:
                if step:
                    step(f"building {name}")
                def secret_seed(secret: str, benchmark: str = benchmark) -> int:
                    return seeds.seed(f"bundle|{benchmark}|{secret}")

                images, labels, groups, names, metadata = generate_set(
                    spec, set_spec, read, secret_seed, Path(settings.ARENA_DATA_DIR), log, step)
                metadata = {**metadata, "inputs": inputs}
                header = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
                staging = Path(settings.ARENA_DATA_DIR) / STAGING / uuid.uuid4().hex
                try:
                    staged = staging / f"{name}.safetensors"
                    digest = write_evaluation_set(staged, images, labels,
                                                  {**header, "name": name, "track": track.slug,
                                                   "benchmark": benchmark}, groups, names)
                    relative = f"evalsets/{track.slug}/{name}-{digest[:16]}.safetensors"
                    (Path(settings.ARENA_DATA_DIR) / relative).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, Path(settings.ARENA_DATA_DIR) / relative)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                metadata = {**set_spec.get("metadata", {}), **metadata}
                evaluation_set, _ = EvaluationSet.objects.update_or_create(track=track, name=name, defaults={
                    "version": digest[:12], "role": set_spec["role"], "shift_kind": set_spec.get("shift_kind", ""),
                    "is_hidden": True, "relative_path": relative, "sha256": digest, "num_examples": len(labels),
                    "source": metadata.pop("source", set_spec["source"]), "license": set_spec["license"],
                    "metadata": metadata})
                made.append(evaluation_set)
                log(f"  evaluation set {track.slug}:{name}: {len(labels)} images, sha256 {digest[:12]}")
            latest.pending = [n for n in latest.pending if n != name]
            latest.save(update_fields=["pending"])
    return made


def _inputs_digest(spec: dict[str, Any], generate: dict[str, Any], latest: BundleImport) -> str:
    """sha256 over the registered sets and public parts a deferred recipe reads."""

    parts = []
    for field_name in ("from", "reals", "public_reals"):
        if field_name not in generate:
            continue
        is_public, slug, name = set_reference(spec, generate[field_name])
        if is_public:
            source = BundleImport.objects.filter(track__slug=slug).first()
            parts.append((source.public_files if source else {}).get(name, {}).get("sha256", ""))
        else:
            parts.append(EvaluationSet.objects.filter(track__slug=slug, name=name)
                         .values_list("sha256", flat=True).first() or "")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
