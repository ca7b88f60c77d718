"""The Django side of the seam: a Submission becomes a JobSpec, a Result becomes database rows.

This module is the only place that knows both the ORM and the evaluator's dataclasses.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction

from benchmarks.models import Track
from evaluator.spec import (
    ArtifactSpec,
    DetectorAttackSpec,
    EvaluationSetSpec,
    GeneratorSpec,
    InputSpec,
    JobSpec,
    ThreatModelSpec,
)
from evaluator.spec import Result as EvaluatorResult
from submissions.artifacts import stored_path
from submissions.ladder import apply_ladder
from submissions.models import EvaluationRun, Result, Submission

logger = logging.getLogger(__name__)

#: Failure codes and the plain words shown to the researcher before the evaluator's own message.
FAILURE_HEADLINES = {
    "corrupt_artifact": "The uploaded file could not be read as a model.",
    "unsupported_format": "The uploaded file is not in a supported format (.pt2 or safetensors).",
    "unsafe_format": "The uploaded file is in a format that runs code when loaded, which is refused.",
    "format_mismatch": "The file's content does not match the format declared with it.",
    "unknown_architecture": "The safetensors weights name an architecture the model zoo does not have.",
    "weights_mismatch": "The safetensors weights do not fit the chosen zoo architecture.",
    "wrong_input_shape": "The model does not accept the track's input shape.",
    "wrong_output_shape": "The model's output has the wrong shape.",
    "wrong_dtype": "The model's output is not a floating-point tensor.",
    "non_finite_output": "The model returned NaN or infinite values.",
    "nondeterministic": "The model gave different outputs for identical inputs.",
    "batch_dependent": "The model's output for an image depended on the other images in its batch.",
    "model_too_large": "The model's program is larger than the platform accepts.",
    "model_crashed": "The model's process ended unexpectedly.",
    "too_slow": "The model is slower than the track's time budget.",
    "model_error": "The model raised an error during evaluation.",
    "timeout": "The evaluation ran past its time limit.",
    "out_of_memory": "The model ran out of memory.",
    "killed": "The evaluation process was killed.",
    "cancelled": "The evaluation was cancelled.",
    "data_integrity": "A hidden evaluation set failed its integrity check (a platform fault; it does not count).",
    "data_unavailable": "A hidden evaluation set could not be found (a platform fault; it does not count).",
    "internal": "The platform failed while evaluating (a platform fault; it does not count).",
    "sandbox_unavailable": "No sandbox was available to run the model (a platform fault; it does not count).",
}


def failure_text(submission: Submission) -> str:
    """The failure sentence the page shows: the platform's headline for the failure code, and the
    stored sentence only when the platform composed it.

    ``submissions.jobs.failure_message`` writes the code's headline followed by the evaluator's
    sentence (written by platform code; the evaluator keeps model text out of it), the watchdog
    writes its own sentence under ``worker_lost``, a cancellation writes "Cancelled.". A stored
    reason that is none of these is replaced by the headline alone.
    """
    from submissions.recovery import WORKER_LOST

    reason = submission.failure_reason or ""
    if submission.state == Submission.State.CANCELLED:
        return FAILURE_HEADLINES["cancelled"] if reason != "Cancelled." else reason
    if submission.state != Submission.State.FAILED:
        return ""
    code = submission.failure_code
    if code == WORKER_LOST:
        lost = "The worker evaluating this model stopped responding"
        return reason if reason.startswith(lost) else f"{lost}, so the evaluation was given up."
    headline = FAILURE_HEADLINES.get(code)
    if headline is None:
        return "The evaluation failed."
    return reason if reason.startswith(headline) else headline


def build_job_spec(submission: Submission, artifact_path: str | None = None) -> JobSpec:
    """The evaluator's job for this submission; ``artifact_path`` is the worker's local copy, if any.

    Without it the stored file's own path is used, which only the filesystem storage has (an object
    store's artifact must first be copied: ``submissions.artifacts.local_artifact``).
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
            path=artifact_path if artifact_path is not None else (stored_path(submission) or ""),
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
        threat_models=tuple(ThreatModelSpec(**t) for t in track.threat_models),
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


def failure_message(code: str, detail: str) -> str:
    headline = FAILURE_HEADLINES.get(code, "The evaluation failed.")
    return f"{headline} {detail}".strip() if detail and detail != headline else headline


def record_result(submission: Submission, result: EvaluatorResult) -> None:
    """Write a Result idempotently, in one transaction, keyed by submission and suite version.

    Delivering the same job twice (a worker killed after writing) overwrites the same rows
    instead of adding duplicates.
    """
    sets = {s.name: s for s in submission.track.evaluation_sets.all()}
    with transaction.atomic():
        EvaluationRun.objects.update_or_create(
            submission=submission,
            suite_version=result.suite_version,
            defaults={
                "seed": result.seed,
                "ok": result.ok,
                "error_code": result.error_code,
                "per_class": result.per_class,
                "provenance": result.provenance,
            },
        )
        if not result.ok:
            submission.transition(
                Submission.State.FAILED,
                failure_code=result.error_code,
                failure_reason=failure_message(result.error_code, result.error),
            )
            return
        # A re-run replaces the evaluation: rows of metrics it no longer produces (a changed
        # attack configuration, say) must not linger beside the new ones.
        produced = {(sets[m.evaluation_set].pk, m.metric) for m in result.metrics}
        stale = [pk for pk, set_id, name in Result.objects.filter(
            submission=submission, suite_version=result.suite_version).values_list("pk", "evaluation_set_id", "metric")
            if (set_id, name) not in produced]
        Result.objects.filter(pk__in=stale).delete()
        for metric in result.metrics:
            Result.objects.update_or_create(
                submission=submission,
                evaluation_set=sets[metric.evaluation_set],
                metric=metric.metric,
                suite_version=result.suite_version,
                defaults={
                    "value": metric.value,
                    "ci_low": metric.ci_low,
                    "ci_high": metric.ci_high,
                    "ci_method": metric.ci_method,
                    "num_examples": metric.num_examples,
                    "seed": result.seed,
                },
            )
        apply_ladder(submission)
        submission.transition(Submission.State.FINISHED, progress=1.0, progress_stage="finished")
