"""What a task kind adds to a job: how its sets are scored and which attacks run.

:func:`evaluator.scoring.job.run_job` does everything the kinds share (reading the sets,
hosting the model, the secret feed order, the batch checks, the provenance) and asks the
kind's :class:`TaskScoring`, chosen once from ``spec.task``, for the rest:
:mod:`evaluator.scoring.classifier` and :mod:`evaluator.scoring.detector`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from evaluator.checkpoints import Checkpoint, CheckpointCallback
from evaluator.data.evalsets import EvaluationSetData
from evaluator.progress import ProgressCallback
from evaluator.spec import JobSpec, MetricValue

__all__ = ["SetScores", "TaskScoring", "clean_set_index"]


@dataclass
class SetScores:
    """The metrics of every evaluation set, and per set the per-class accuracies (classifiers only)."""

    metrics: list[MetricValue] = field(default_factory=list)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)


class TaskScoring(Protocol):
    """One task kind's part of a job; its methods see only aggregates and the scorer's own data."""

    #: The provenance key the attacks' details are kept under.
    attack_record: str

    def attacked_points(self, spec: JobSpec) -> int | None:
        """Points the job's attacks attack (it weighs their share of the progress bar); None: no attacks.

        A job with attacks needs input gradients from the model, which sizes its batches.
        """
        ...

    def score_sets(self, spec: JobSpec, datasets: list[EvaluationSetData], outputs: list[torch.Tensor]) -> SetScores:
        """Metrics of every set from the model's outputs on it (stored order, one tensor per set)."""
        ...

    def attack(self, model: torch.nn.Module, spec: JobSpec, datasets: list[EvaluationSetData],
               outputs: list[torch.Tensor] | None, device: torch.device, progress: ProgressCallback,
               secret: int, done: dict[str, Checkpoint], on_done: CheckpointCallback,
               ) -> tuple[list[MetricValue], dict[str, Any]]:
        """The kind's attack suite (only when :meth:`attacked_points` is not None): metrics and provenance.

        ``secret`` is the job's secret seed, for attacks whose draws must stay unknown to the
        submitter; seeds that leaderboard numbers must be reproducible from come from ``spec.seed``.
        Stages in ``done`` (a resumed job) are taken as they are; each stage run is handed to
        ``on_done`` as it finishes. ``outputs`` is None when the sets were done by an earlier run.
        """
        ...


def clean_set_index(spec: JobSpec) -> int:
    """The set the headline score and the attacks use: the one with role ``clean`` (else the first)."""
    return next((i for i, s in enumerate(spec.evaluation_sets) if s.role == "clean"), 0)
