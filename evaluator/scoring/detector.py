"""Detector tracks: AUC, AP and TPR at fixed false-alarm rates per set, then the Carlini-Farid suite.

A detector's score for an image is its first output column
(:func:`evaluator.models.contract.detector_scores`); fake is the positive class. Shifted sets
are judged at thresholds set on the clean set's reals, as a deployed detector's would be.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import torch

from evaluator.attacks.common import derive_seed
from evaluator.checkpoints import DETECTOR_ATTACKS, Checkpoint, CheckpointCallback
from evaluator.data.evalsets import EvaluationSetData
from evaluator.detector_attacks.suite import run_detector_suite
from evaluator.metrics.detection import detection_metrics, fixed_threshold_rates, threshold_at_fpr
from evaluator.models.contract import detector_scores
from evaluator.models.loading import load_generator
from evaluator.progress import ProgressCallback
from evaluator.scoring.feeding import in_pixel_space
from evaluator.scoring.task import SetScores, clean_set_index
from evaluator.spec import JobSpec, MetricValue

__all__ = ["DetectorScoring", "run_detector_attacks", "score_detector", "score_detector_sets"]

#: False-alarm rates at which shifted sets are judged with the clean set's thresholds.
FIXED_FPRS = (0.01, 0.05)


def score_detector(
    outputs: torch.Tensor,
    labels: torch.Tensor,
    set_name: str,
    seed: int,
    clean_thresholds: dict[float, float] | None = None,
    groups: torch.Tensor | None = None,
    group_names: list[str] | None = None,
) -> list[MetricValue]:
    """AUC, AP and TPR at 1 % and 5 % FPR, overall and (grouped sets) per group.

    On a shifted set the TPRs use thresholds set on the clean set's reals (``clean_thresholds``,
    FPR -> threshold), held fixed as a deployed detector's would be, and the set's false-alarm
    rate at those thresholds is reported beside them: a laundering that makes reals look fake
    shows up there rather than being hidden by re-tuning the threshold on shifted data.
    """
    scores = detector_scores(outputs).numpy()
    label_array = labels.numpy()
    parts = [("", np.ones(label_array.shape[0], dtype=bool))]
    if groups is not None and group_names:
        parts += [(f"@{name}", groups.numpy() == index) for index, name in enumerate(group_names)]
    metrics: list[MetricValue] = []
    for suffix, mask in parts:
        if not mask.any():
            continue
        computed = detection_metrics(scores[mask], label_array[mask], evaluation_set=set_name, seed=seed)
        if clean_thresholds:
            computed = [m for m in computed if not m.metric.startswith("tpr@")]
            computed += fixed_threshold_rates(scores[mask], label_array[mask], clean_thresholds, set_name)
        for metric in computed:
            metric.metric += suffix
        metrics.extend(computed)
    return metrics


def score_detector_sets(spec: JobSpec, datasets: list[EvaluationSetData],
                        outputs: list[torch.Tensor]) -> list[MetricValue]:
    """Detector metrics of every set; shifted sets are judged at thresholds set on the clean reals."""
    clean = clean_set_index(spec)
    clean_scores = detector_scores(outputs[clean]).numpy()
    clean_reals = clean_scores[datasets[clean].labels.numpy() == 0]
    thresholds = {fpr: threshold_at_fpr(clean_reals, fpr) for fpr in FIXED_FPRS} if clean_reals.size else None
    metrics: list[MetricValue] = []
    for index, (set_spec, data, out) in enumerate(zip(spec.evaluation_sets, datasets, outputs, strict=True)):
        metrics += score_detector(
            out, data.labels, set_spec.name, spec.seed, None if index == clean else thresholds,
            data.groups, data.group_names,
        )
    return metrics


def run_detector_attacks(
    model: torch.nn.Module, spec: JobSpec, datasets: list[EvaluationSetData], device: torch.device,
    progress: ProgressCallback, clean_outputs: torch.Tensor | None = None, secret_seed: int | None = None,
) -> tuple[list[MetricValue], dict[str, Any]]:
    """The Carlini-Farid suite on the clean set: hidden reals against attacked hidden fakes.

    ``clean_outputs`` are the model's outputs on the clean set, already computed by the job; the
    suite then does not score those images again. ``secret_seed`` seeds the universal patch and
    the latent offset (with public seeds a submitter could replay them offline); None draws one.
    """
    assert spec.detector_attacks is not None
    clean = clean_set_index(spec)
    clean_spec, data = spec.evaluation_sets[clean], datasets[clean]
    generator, latent_dim = None, 0
    if spec.generator is not None:
        generator = load_generator(spec.generator.path, spec.generator.architecture, spec.generator.sha256).to(device)
        latent_dim = spec.generator.latent_dim
    labels = data.labels
    scores = None
    if clean_outputs is not None:
        column = detector_scores(clean_outputs).double().numpy()
        scores = (column[labels.numpy() == 0], column[labels.numpy() == 1])
    return run_detector_suite(
        in_pixel_space(model, spec.input), data.images[labels == 0], data.images[labels == 1],
        spec.detector_attacks, clean_spec.name, spec.seed, generator=generator, latent_dim=latent_dim,
        batch_size=spec.batch_size, device=device, progress=progress, known_scores=scores,
        secret_seed=secrets.randbits(63) if secret_seed is None else secret_seed,
    )


class DetectorScoring:
    """The detector kind of :class:`evaluator.scoring.task.TaskScoring`."""

    attack_record = "detector_attacks"

    def attacked_points(self, spec: JobSpec) -> int | None:
        return spec.detector_attacks.points if spec.detector_attacks is not None else None

    def score_sets(self, spec: JobSpec, datasets: list[EvaluationSetData], outputs: list[torch.Tensor]) -> SetScores:
        return SetScores(metrics=score_detector_sets(spec, datasets, outputs))

    def attack(self, model: torch.nn.Module, spec: JobSpec, datasets: list[EvaluationSetData],
               outputs: list[torch.Tensor] | None, device: torch.device, progress: ProgressCallback,
               secret: int, done: dict[str, Checkpoint], on_done: CheckpointCallback,
               ) -> tuple[list[MetricValue], dict[str, Any]]:
        """The suite on the clean set (one stage), its universal attacks seeded from the job's secret.

        On a resumed job whose sets were done before, ``outputs`` is None and the suite scores the
        clean set's images itself.
        """
        if DETECTOR_ATTACKS in done:
            kept = done[DETECTOR_ATTACKS]
            return kept.metrics, kept.provenance[self.attack_record]
        clean_outputs = outputs[clean_set_index(spec)] if outputs is not None else None
        metrics, details = run_detector_attacks(model, spec, datasets, device, progress, clean_outputs,
                                                derive_seed(secret, "detector-suite"))
        on_done(Checkpoint(DETECTOR_ATTACKS, metrics, provenance={self.attack_record: details}))
        return metrics, details
