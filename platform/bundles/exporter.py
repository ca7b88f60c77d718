"""Export the public part of a benchmark, for review and reproduction elsewhere; never its hidden data.

``export_benchmark SLUG DEST`` writes a folder (or, for ``DEST.zip``, a zip) with

* ``benchmark.yaml``: the benchmark and each track as registered (input, classes, suite version,
  threat models, attack points, quotas as published) and each set's description (role, shift kind,
  source, licence, size, metadata, how it was made: the manifest's recipe with its secret *names*,
  which only this installation's secret turns into seeds). A hidden set is described, never
  included, and neither its sha256 nor any seed is written: both would let someone check guesses
  of the hidden images.
* ``public/<track>/<name>.npz``: the public part of each split (``images`` uint8 NCHW, ``labels``).
* ``scores.json``: every public baseline's results under the track's current suite version, rounded
  as the site releases them (:mod:`submissions.rounding`) with their intervals, and their provenance
  (artifact sha256, model type, suite version, seed).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from django.conf import settings

from benchmarks.models import Benchmark
from bundles.models import BundleImport
from evaluator.data.evalsets import read_evaluation_set
from submissions.models import EvaluationRun, Result, Submission
from submissions.rounding import round_released

#: Set metadata the importer keeps for itself (bundles.importer.complete_deferred), never exported.
INTERNAL_METADATA = frozenset({"inputs"})


def _track_description(track: Any) -> dict[str, Any]:
    latest = BundleImport.objects.filter(track=track).first()
    recipes = {}
    if latest is not None:
        for spec in latest.manifest["track"]["evaluation_sets"]:
            how = {key: spec[key] for key in ("split", "generate", "subsample") if key in spec}
            if "data" in spec:
                how["data"] = {"layout": spec["data"]["layout"], "included": False}
            recipes[spec["name"]] = how
    quota = getattr(track, "quota", None)
    description: dict[str, Any] = {
        "slug": track.slug, "name": track.name, "description": track.description, "notes": track.notes,
        "task": track.task_kind,
        "input": {"channels": track.input_channels, "height": track.input_height, "width": track.input_width,
                  "value_range": [track.value_min, track.value_max]},
        "classes": track.num_classes, "class_names": list(track.class_names), "seed": track.seed,
        "suite_version": track.suite_version, "attack_suite": track.attack_suite,
        "threat_models": track.threat_models, "attack_points": track.attack_points,
        "reliability_points": track.reliability_points,
        "ladder": {"enabled": track.ladder, "margin": track.ladder_margin},
        "detector_attacks": track.detector_attacks,
        "evaluation_sets": [],
    }
    if quota is not None:
        description["quota"] = {"daily": quota.daily_limit, "total": quota.total_limit}
    for evaluation_set in track.evaluation_sets.order_by("id"):
        entry = {"name": evaluation_set.name, "role": evaluation_set.role, "source": evaluation_set.source,
                 "license": evaluation_set.license, "hidden": evaluation_set.is_hidden,
                 "num_examples": evaluation_set.num_examples,
                 # "inputs" is a hash over the hidden sets a deferred set was made from: not for export.
                 "metadata": {k: v for k, v in evaluation_set.metadata.items() if k not in INTERNAL_METADATA},
                 "included": False}
        if evaluation_set.shift_kind:
            entry["shift_kind"] = evaluation_set.shift_kind
        if evaluation_set.name in recipes:
            entry["made_by"] = recipes[evaluation_set.name]
        description["evaluation_sets"].append(entry)
    return description


def _scores(track: Any) -> list[dict[str, Any]]:
    rows = []
    baselines = Submission.objects.filter(track=track, is_baseline=True, is_public=True).order_by("id")
    for submission in baselines:
        results = Result.objects.filter(submission=submission, suite_version=track.suite_version)
        run = EvaluationRun.objects.filter(submission=submission, suite_version=track.suite_version).first()
        released = []
        for result in results.select_related("evaluation_set").order_by("evaluation_set__id", "metric"):
            value, low, high = round_released(result.metric, result.value, result.ci_low, result.ci_high)
            released.append({"evaluation_set": result.evaluation_set.name, "metric": result.metric, "value": value,
                             "ci_low": low, "ci_high": high, "ci_method": result.ci_method,
                             "num_examples": result.num_examples})
        rows.append({"name": submission.name, "model_type": submission.model_type,
                     "zoo_architecture": submission.zoo_architecture, "artifact_sha256": submission.artifact_sha256,
                     "architecture": submission.architecture, "training_data": submission.training_data,
                     "license": submission.license, "code_url": submission.code_url,
                     "paper_url": submission.paper_url, "state": submission.state,
                     "suite_version": track.suite_version, "seed": track.seed,
                     "evaluated_at": run.created_at.isoformat() if run else None, "results": released})
    return rows


def export_benchmark(slug: str, dest: str | Path) -> Path:
    """Write the public part of benchmark ``slug`` to ``dest`` (a new folder, or a ``.zip``); returns it."""
    benchmark = Benchmark.objects.get(slug=slug)
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists; export into a new folder or zip")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / slug
        folder.mkdir()
        manifest = {"format": 1, "export": "public part only: hidden sets are described, never included",
                    "benchmark": {"slug": benchmark.slug, "name": benchmark.name,
                                  "description": benchmark.description}, "tracks": []}
        scores = {}
        for track in benchmark.tracks.filter(is_public=True).order_by("id"):
            description = _track_description(track)
            latest = BundleImport.objects.filter(track=track).first()
            public_parts = []
            for name, entry in sorted((latest.public_files if latest else {}).items()):
                data = read_evaluation_set(Path(settings.ARENA_DATA_DIR) / entry["relative_path"], entry["sha256"])
                relative = f"public/{track.slug}/{name}.npz"
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(folder / relative, images=data.images.numpy(), labels=data.labels.numpy())
                public_parts.append({"name": name, "file": relative, "num_examples": len(data)})
            description["public_parts"] = public_parts
            manifest["tracks"].append(description)
            scores[track.slug] = _scores(track)
        (folder / "benchmark.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True))
        (folder / "scores.json").write_text(json.dumps(scores, indent=1, sort_keys=True) + "\n")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.suffix == ".zip":
            shutil.make_archive(str(dest.with_suffix("")), "zip", root_dir=folder)
        else:
            shutil.copytree(folder, dest)
    return dest
