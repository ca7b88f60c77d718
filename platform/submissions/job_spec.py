"""The Django side of the seam, going in: a Submission and its track become the evaluator's JobSpec.

The way back (a result becoming database rows) is :mod:`submissions.arrival`.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from benchmarks.models import Track
from evaluator.spec import (
    ArtifactSpec,
    DetectorAttackSpec,
    EvaluationSetSpec,
    GeneratorSpec,
    InputSpec,
    JobSpec,
    ThreatModel,
)
from submissions.models import Submission


def build_job_spec(submission: Submission, artifact_path: str) -> JobSpec:
    """The evaluator's job for this submission; ``artifact_path`` is the worker's local copy of the upload
    (``submissions.artifacts.local_artifact``), so the spec is built once, when the file is there.
    """
    track = submission.track
    sets = tuple(
        EvaluationSetSpec(name=s.name, path=str(s.path), sha256=s.sha256, role=s.role)
        for s in track.evaluation_sets.order_by("role", "id")
    )
    return JobSpec(
        job_id=str(submission.public_id),
        task=track.task_kind,
        input=InputSpec(
            track.input_channels, track.input_height, track.input_width, (track.value_min, track.value_max)
        ),
        artifact=ArtifactSpec(
            path=artifact_path,
            format=submission.artifact_format,
            sha256=submission.artifact_sha256,
            architecture=submission.zoo_architecture,
        ),
        evaluation_sets=sets,
        num_classes=track.num_classes,
        suite_version=track.suite_version,
        seed=track.seed,
        batch_size=track.batch_size,
        time_budget_s=track.time_budget_seconds,
        device=settings.ARENA_EVAL_DEVICE,
        threat_models=tuple(ThreatModel(**t) for t in track.threat_models),
        attack_points=track.attack_points,
        attack_suite=track.attack_suite,
        reliability_points=track.reliability_points,
        generator=generator_spec(track),
        detector_attacks=detector_attack_spec(track),
    )


def generator_spec(track: Track) -> GeneratorSpec | None:
    """The track's generator file (under ARENA_DATA_DIR, never served), if it has one."""
    if track.task_kind != Track.TaskKind.DETECTOR or not track.generator:
        return None
    g = track.generator
    return GeneratorSpec(architecture=g["architecture"], path=str(Path(settings.ARENA_DATA_DIR) / g["relative_path"]),
                         sha256=g.get("sha256", ""), latent_dim=int(g.get("latent_dim", 0)))


def detector_attack_spec(track: Track) -> DetectorAttackSpec | None:
    """The detector attack suite's parameters: the defaults, overridden by the track's JSON."""
    if track.task_kind != Track.TaskKind.DETECTOR:
        return None
    overrides = dict(track.detector_attacks or {})
    if not overrides.pop("enabled", True):
        return None
    return DetectorAttackSpec.from_dict(overrides)
