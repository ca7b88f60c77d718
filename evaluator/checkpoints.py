"""Finished stages of a job, handed out as they finish so that a job cut short loses none of them.

A job has stages whose results do not depend on each other: the evaluation sets (every set's
metrics), and the attack suite, per threat model on classifier tracks (each threat model's
cascade draws from its own seeded streams) or as one stage on detector tracks. As each finishes,
the job hands a :class:`Checkpoint` to its caller (the scorer prints it as a JSON line, the worker
stores it). A job that runs out of time, or whose worker is killed, keeps what it finished; the
next run of the same job receives the stored checkpoints (``resume``) and runs only the rest, and
its numbers are those an uninterrupted run gives (tests/evaluator/test_job_resume.py).

A checkpoint is only reused by a job with the same :func:`spec_fingerprint`: the same model file,
sets, suite, seed and parameters. The fingerprint leaves out what cannot change a number: the job
id, the device, the batch size and the files' paths where their sha256 is known (results depend on
none of them, a property the determinism tests hold the suite to).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from evaluator.spec import JobResult, JobSpec, MetricValue, ThreatModel

__all__ = ["DETECTOR_ATTACKS", "SETS", "Checkpoint", "CheckpointCallback", "attack_stage", "ignore_checkpoint",
           "incomplete_result", "resumed_stages", "spec_fingerprint", "stage_keys"]

#: Stage key of the evaluation sets (all of them: reading and scoring them takes seconds).
SETS = "sets"
#: Stage key of the detector suite (one stage: its universal attacks learn once for every budget).
DETECTOR_ATTACKS = "detector-attacks"


def attack_stage(threat: ThreatModel) -> str:
    """Stage key of one threat model's cascade and reliability checks on a classifier track."""
    return f"attacks:{threat.key}"


@dataclass
class Checkpoint:
    """One finished stage: its metrics, the per-class accuracies and provenance it adds to the result."""

    stage: str
    metrics: list[MetricValue] = field(default_factory=list)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(stage=str(data["stage"]), metrics=[MetricValue(**m) for m in data.get("metrics", [])],
                   per_class=dict(data.get("per_class") or {}), provenance=dict(data.get("provenance") or {}))


CheckpointCallback = Callable[[Checkpoint], None]


def ignore_checkpoint(checkpoint: Checkpoint) -> None:
    """The default callback: a job run directly keeps its stages in memory only."""


def spec_fingerprint(spec: JobSpec) -> str:
    """What a checkpoint must match to be reused: the spec without its job id, device and batch size, and
    with files named by their sha256 where it is known (the worker's copy of a model file has a new path
    on every run)."""
    data = json.loads(spec.to_json())
    for key in ("job_id", "device", "batch_size"):
        data.pop(key, None)
    for entry in [data["artifact"], *data["evaluation_sets"], data.get("generator") or {}]:
        if entry.get("sha256"):
            entry.pop("path", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def stage_keys(spec: JobSpec) -> list[str]:
    """Every stage of the job, in the order it runs: the sets, then the attack stages of its task kind."""
    keys = [SETS]
    if spec.task == "classifier":
        keys += [attack_stage(threat) for threat in spec.threat_models]
    elif spec.detector_attacks is not None:
        keys.append(DETECTOR_ATTACKS)
    return keys


def resumed_stages(spec: JobSpec, resume: dict[str, Any] | None) -> dict[str, Checkpoint]:
    """The stages an earlier run of this very job finished (nothing when the fingerprints differ)."""
    if not resume or resume.get("fingerprint") != spec_fingerprint(spec):
        return {}
    stages = [Checkpoint.from_dict(raw) for raw in resume.get("stages") or []]
    known = set(stage_keys(spec))
    return {c.stage: c for c in stages if c.stage in known}


def incomplete_result(spec: JobSpec, finished: list[Checkpoint], stage: str, reason: str,
                      provenance: dict[str, Any]) -> JobResult:
    """An ``out_of_time`` result that keeps the metrics of every finished stage, and says where it stopped.

    Not charged to the researcher (the failure table marks it the platform's fault): the budget was
    the platform's estimate of its own work. A run given the same spec and these stages resumes after them.
    """
    # Stages may carry the same number (each threat model's stage the attacked points' clean accuracy): once.
    metrics = list({(m.evaluation_set, m.metric): m for c in finished for m in c.metrics}.values())
    per_class = {k: v for c in finished for k, v in c.per_class.items()}
    for checkpoint in finished:
        for key, value in checkpoint.provenance.items():
            provenance[key] = {**provenance.get(key, {}), **value} if isinstance(value, dict) else value
    provenance["incomplete"] = {"stage": stage[:200], "finished": sorted(c.stage for c in finished),
                                "reason": reason}
    stopped = f" while {stage}" if stage else ""
    message = (f"The evaluation used its whole time budget{stopped}; the {len(finished)} finished "
               f"stage{'s are' if len(finished) != 1 else ' is'} kept and a re-run resumes after "
               f"{'them' if len(finished) != 1 else 'it'}.")
    result = JobResult.failure(spec, "out_of_time", message, **provenance)
    result.metrics, result.per_class = metrics, per_class
    return result
