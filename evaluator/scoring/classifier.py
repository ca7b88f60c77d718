"""Classifier tracks: accuracy per set (and per group, per class), then the attack cascade.

The cascade (:mod:`evaluator.attacks.cascade`) runs on a subset of the clean set drawn from the
job's public seed, so a leaderboard's robust accuracies can be reproduced; the reliability
checks (:mod:`evaluator.attacks.reliability`) run on part of that subset after each threat
model's cascade, and a fired check makes the suite escalate on that threat model's survivors.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from evaluator.attacks.cascade import CascadeReport, ThreatModelOutcome, get_suite, run_cascade
from evaluator.attacks.reliability import run_reliability_checks
from evaluator.checkpoints import Checkpoint, CheckpointCallback, attack_stage, ignore_checkpoint
from evaluator.data.evalsets import EvaluationSetData
from evaluator.metrics.classification import accuracy_with_interval, per_class_accuracy
from evaluator.models.contract import pixels_to_unit
from evaluator.progress import ProgressCallback
from evaluator.scoring.feeding import in_pixel_space
from evaluator.scoring.task import SetScores, clean_set_index
from evaluator.spec import JobSpec, MetricValue, ThreatModel

__all__ = ["ClassifierScoring", "attack_subset", "run_attacks", "score_classifier"]


#: The clean accuracy of the attacked subset, reported beside the robust accuracies.
ATTACKED_CLEAN = "attacked_clean_accuracy"


def score_classifier(
    outputs: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    set_name: str,
    groups: torch.Tensor | None = None,
    group_names: list[str] | None = None,
) -> tuple[list[MetricValue], dict[str, float]]:
    """Accuracy with its interval, per-class accuracy and, for grouped sets, accuracy per group.

    A grouped set (for example every corruption x severity cell of a corruption shift) reports
    ``accuracy@<group>`` for each cell beside the overall ``accuracy`` over all its images.
    """
    predictions = outputs.argmax(dim=1)
    hits = predictions == labels
    n = int(labels.shape[0])
    accuracy, low, high = accuracy_with_interval(int(hits.sum()), n)
    metrics = [MetricValue(set_name, "accuracy", accuracy, n, low, high, "clopper-pearson-95")]
    if groups is not None and group_names:
        for index, name in enumerate(group_names):
            in_group = groups == index
            count = int(in_group.sum())
            if count:
                value, lo, hi = accuracy_with_interval(int(hits[in_group].sum()), count)
                metrics.append(MetricValue(set_name, f"accuracy@{name}", value, count, lo, hi, "clopper-pearson-95"))
    return metrics, per_class_accuracy(predictions.numpy(), labels.numpy(), num_classes)


def attack_subset(num_examples: int, points: int, seed: int) -> torch.Tensor:
    """The seeded subset of the clean set that the attack suite attacks (sorted indices)."""
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return order[: min(points, num_examples)].sort().values


def run_attacks(
    model: torch.nn.Module, spec: JobSpec, set_name: str, images_uint8: torch.Tensor, labels: torch.Tensor,
    device: torch.device, progress: ProgressCallback, *, done: dict[str, Checkpoint] | None = None,
    on_done: CheckpointCallback = ignore_checkpoint,
) -> tuple[list[MetricValue], dict[str, Any]]:
    """The attack cascade on a seeded subset of the clean set, plus the reliability checks.

    Returns ``robust_accuracy@<threat>`` (final, with its interval) and
    ``robust_accuracy@<threat>><stage>`` (after each stage) metrics, and per threat model the
    passes spent, seconds and reliability flags for the provenance.

    Each threat model is a stage of its own (:func:`evaluator.checkpoints.attack_stage`): its
    cascade draws from streams seeded by the threat model, so it gives the same numbers alone as
    beside the others. A threat model in ``done`` (a resumed job) is not attacked again; each one
    attacked here is handed to ``on_done`` as soon as it finishes.
    """
    done = done or {}
    subset = attack_subset(int(labels.shape[0]), spec.attack_points, spec.seed)
    model = in_pixel_space(model, spec.input)
    x = pixels_to_unit(images_uint8[subset], device)
    y = labels[subset].to(device)
    threats = spec.threat_models
    finished: dict[str, Checkpoint] = {}
    for index, threat in enumerate(threats):
        key = attack_stage(threat)
        if key in done:
            finished[key] = done[key]
            continue
        finished[key] = _attack_threat(model, spec, set_name, x, y, threat, device, progress,
                                       (index / len(threats), 1 / len(threats)))
        on_done(finished[key])
    metrics: list[MetricValue] = []
    details: dict[str, Any] = {}
    for threat in threats:
        checkpoint = finished[attack_stage(threat)]
        metrics.extend(m for m in checkpoint.metrics if m.metric != ATTACKED_CLEAN)
        details.update(checkpoint.provenance["attacks"])
    # Every threat model's stage carries the attacked points' clean accuracy (the same number): kept once.
    metrics += [m for m in finished[attack_stage(threats[0])].metrics if m.metric == ATTACKED_CLEAN]
    return metrics, details


def _attack_threat(model: torch.nn.Module, spec: JobSpec, set_name: str, x: torch.Tensor, y: torch.Tensor,
                   threat: ThreatModel, device: torch.device, progress: ProgressCallback,
                   share: tuple[float, float]) -> Checkpoint:
    """One threat model's cascade and reliability checks, as a finished stage; ``share`` is its part of the bar."""
    low, width = share
    last = [low]

    def on_cascade(fraction: float, stage: str) -> None:
        last[0] = low + width * fraction
        progress(last[0], f"attacks: {stage}")

    flags: list[dict[str, Any]] = []

    reuse = get_suite(spec.attack_suite).reliability_reuses_white_box

    def checks(threat: ThreatModel, outcome: ThreatModelOutcome) -> list[str]:
        """The reliability checks of this threat model; the names that fired make the suite escalate."""
        if spec.reliability_points <= 0:
            return []
        progress(last[0], f"reliability checks: {threat.label}")
        result = run_reliability_checks(model, x, y, threat, subset=spec.reliability_points, seed=spec.seed,
                                        cascade_report=outcome.report, cascade_points=outcome if reuse else None,
                                        batch_size=spec.batch_size, device=device)
        flags.extend(asdict(flag) for flag in result.flags)
        return [flag.check for flag in result.flags if flag.flagged]

    report = run_cascade(model, x, y, (threat,), suite=spec.attack_suite, seed=spec.seed,
                         batch_size=spec.batch_size, device=device, progress=on_cascade, checks=checks)
    return _threat_checkpoint(attack_stage(threat), set_name, threat, report, flags)


def _threat_checkpoint(key: str, set_name: str, threat: ThreatModel, report: CascadeReport,
                       flags: list[dict[str, Any]]) -> Checkpoint:
    """One threat model's cascade as a finished stage: its metrics, and its provenance under its label."""
    outcome = report.threat_models[0]
    label = threat.label
    metrics = [MetricValue(set_name, f"robust_accuracy@{label}", outcome.robust_accuracy, outcome.num_examples,
                           outcome.ci_low, outcome.ci_high, outcome.ci_method)]
    for stage in outcome.stages:
        metrics.append(MetricValue(set_name, f"robust_accuracy@{label}>{stage.attack}", stage.robust_accuracy,
                                   outcome.num_examples))
    details = {
        "norm": threat.norm, "eps": threat.eps, "suite": report.suite_version, "points": outcome.num_examples,
        "clean_accuracy": outcome.clean_accuracy, "forward_passes": outcome.forward_passes,
        "backward_passes": outcome.backward_passes, "seconds": outcome.seconds, "flags": flags,
        "escalated_for": outcome.escalated_for,
        "stages": [asdict(stage) for stage in outcome.stages],
    }
    metrics.append(MetricValue(set_name, ATTACKED_CLEAN, report.clean_accuracy, report.num_examples,
                               report.clean_ci_low, report.clean_ci_high, "clopper-pearson-95"))
    return Checkpoint(key, metrics, provenance={"attacks": {label: details}})


class ClassifierScoring:
    """The classifier kind of :class:`evaluator.scoring.task.TaskScoring`."""

    attack_record = "attacks"

    def attacked_points(self, spec: JobSpec) -> int | None:
        return spec.attack_points if spec.threat_models else None

    def score_sets(self, spec: JobSpec, datasets: list[EvaluationSetData], outputs: list[torch.Tensor]) -> SetScores:
        scores = SetScores()
        for set_spec, data, out in zip(spec.evaluation_sets, datasets, outputs, strict=True):
            metrics, per_class = score_classifier(out, data.labels, spec.num_classes, set_spec.name, data.groups,
                                                  data.group_names)
            scores.per_class[set_spec.name] = per_class
            scores.metrics.extend(metrics)
        return scores

    def attack(self, model: torch.nn.Module, spec: JobSpec, datasets: list[EvaluationSetData],
               outputs: list[torch.Tensor] | None, device: torch.device, progress: ProgressCallback,
               secret: int, done: dict[str, Checkpoint], on_done: CheckpointCallback,
               ) -> tuple[list[MetricValue], dict[str, Any]]:
        """The cascade on the clean set, a stage per threat model; seeded by ``spec.seed`` alone, so
        ``secret`` plays no part, and the sets' outputs are not needed (the cascade scores its points itself)."""
        clean = clean_set_index(spec)
        data = datasets[clean]
        return run_attacks(model, spec, spec.evaluation_sets[clean].name, data.images, data.labels, device, progress,
                           done=done, on_done=on_done)
