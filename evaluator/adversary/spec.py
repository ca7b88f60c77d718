"""An attack job as data: what the platform sends the scorer for one attack against one model.

Free of torch, like :mod:`evaluator.spec`, so that the worker and the web processes can build and
send one without loading it; :mod:`evaluator.adversary.job` runs it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from evaluator.spec import JobSpec

__all__ = ["AttackJob", "AttackSource"]


@dataclass(frozen=True)
class AttackSource:
    """The submitted attack: one Python source file defining ``attack(model, x, y, threat, budget, generator)``."""

    path: str
    sha256: str
    name: str = ""


@dataclass(frozen=True)
class AttackJob:
    job_id: str
    attack: AttackSource
    #: The target model's job on its track: the artifact, the clean set, threat models, points and seed.
    target: JobSpec
    #: Model passes the attack may spend per attacked point (all points' passes pooled).
    passes_per_point: int = 10_000
    #: Seconds each threat model's run may take.
    seconds_per_threat: float = 1800.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackJob:
        return cls(job_id=str(data["job_id"]), attack=AttackSource(**data["attack"]),
                   target=JobSpec.from_dict(data["target"]), passes_per_point=int(data["passes_per_point"]),
                   seconds_per_threat=float(data["seconds_per_threat"]))
