"""The seam between the platform and the evaluator: a JobSpec goes in, a Result comes out.

Nothing else crosses between the Django side and the evaluator (apart from progress events,
see :mod:`evaluator.progress`). Both are plain dataclasses with a JSON round-trip so that the
trusted parent can hand a job to a sandboxed child process and read back nothing but JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TaskKind = Literal["classifier", "detector"]
ArtifactFormat = Literal["pt2", "safetensors"]

#: Bumped whenever the meaning of a JobSpec or Result field changes.
SPEC_VERSION = 1


@dataclass(frozen=True)
class InputSpec:
    """What the evaluator feeds the model: float32 images in ``value_range``, shape (N, C, H, W)."""

    channels: int
    height: int
    width: int
    value_range: tuple[float, float] = (0.0, 1.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class ArtifactSpec:
    """The submitted model file. ``architecture`` names a zoo entry for safetensors weights."""

    path: str
    format: ArtifactFormat
    sha256: str = ""
    architecture: str = ""


@dataclass(frozen=True)
class EvaluationSetSpec:
    """One materialised evaluation set: a safetensors file with ``images`` and ``labels``.

    ``images`` is uint8 (N, C, H, W); ``labels`` is int64 (N,). For detector tracks the label
    is 1 for a synthetic (fake) image and 0 for a real one: fake is the positive class.
    ``role`` is ``clean`` for the set a track's headline score comes from and ``shift`` for a
    distribution-shifted set.
    """

    name: str
    path: str
    sha256: str = ""
    role: Literal["clean", "shift"] = "clean"


@dataclass(frozen=True)
class ThreatModelSpec:
    """One threat model of the attack suite: an ``norm`` ball of radius ``eps`` in [0,1] pixel space.

    ``label`` names it in metric names and on pages, e.g. ``Linf-8/255`` or ``L2-0.5``.
    """

    norm: Literal["Linf", "L2"]
    eps: float
    label: str


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    task: TaskKind
    input: InputSpec
    artifact: ArtifactSpec
    evaluation_sets: tuple[EvaluationSetSpec, ...]
    num_classes: int = 10
    suite_version: str = "clean-1"
    seed: int = 0
    batch_size: int = 256
    #: Seconds the model may take for one batch of ``batch_size`` images before it is failed.
    time_budget_s: float = 600.0
    device: str = "cpu"
    #: Threat models the attack suite runs on the clean set (classifier tracks); empty: no attacks.
    threat_models: tuple[ThreatModelSpec, ...] = ()
    #: How many clean-set points (a seeded subset) the attack suite attacks.
    attack_points: int = 1000
    #: The registered attack-suite configuration (evaluator.attacks.cascade.SUITES).
    attack_suite: str = "attacks-1"
    #: Points (of the attacked subset) the reliability checks run on; 0 skips them.
    reliability_points: int = 200
    spec_version: int = SPEC_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        version = data.get("spec_version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise ValueError(f"job spec version {version} is not supported (expected {SPEC_VERSION})")
        raw_input = dict(data["input"])
        raw_input["value_range"] = tuple(raw_input.get("value_range", (0.0, 1.0)))
        data["input"] = InputSpec(**raw_input)
        data["artifact"] = ArtifactSpec(**data["artifact"])
        data["evaluation_sets"] = tuple(EvaluationSetSpec(**s) for s in data["evaluation_sets"])
        data["threat_models"] = tuple(ThreatModelSpec(**t) for t in data.get("threat_models", ()))
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        return cls.from_dict(json.loads(text))


@dataclass
class MetricValue:
    """One number with its interval, as it is stored per (submission, evaluation set, metric)."""

    evaluation_set: str
    metric: str
    value: float
    num_examples: int
    ci_low: float | None = None
    ci_high: float | None = None
    #: How the interval was made, e.g. ``clopper-pearson-95`` or ``bootstrap-95``.
    ci_method: str = ""


@dataclass
class Result:
    """What comes back from one job. ``error`` is set (and ``metrics`` empty) when it failed.

    ``error_code`` is machine-readable (see :class:`evaluator.errors.EvaluationError`);
    ``error`` is a sentence a researcher understands.
    """

    job_id: str
    ok: bool
    suite_version: str
    seed: int
    metrics: list[MetricValue] = field(default_factory=list)
    #: Per evaluation set, per class accuracy (aggregate only: never per-example data).
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    error_code: str = ""
    error: str = ""
    #: Provenance: evaluator version, torch version, device, hardware, seconds spent.
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        data = dict(data)
        data["metrics"] = [MetricValue(**m) for m in data.get("metrics", [])]
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls.from_dict(json.loads(text))

    @classmethod
    def failure(cls, spec: JobSpec, code: str, message: str, **provenance: Any) -> Result:
        return cls(
            job_id=spec.job_id,
            ok=False,
            suite_version=spec.suite_version,
            seed=spec.seed,
            error_code=code,
            error=message,
            provenance=dict(provenance),
        )
