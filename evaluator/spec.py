"""The seam between the platform and the evaluator: a JobSpec goes in, a JobResult comes out.

Nothing else crosses between the Django side and the evaluator (apart from progress events,
see :mod:`evaluator.progress`). Both are plain dataclasses with a JSON round-trip so that the
trusted parent can hand a job to a sandboxed child process and read back nothing but JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TaskKind = Literal["classifier", "detector"]
ArtifactFormat = Literal["pt2", "safetensors"]

#: Bumped whenever the meaning of a JobSpec or JobResult field changes.
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


Norm = Literal["Linf", "L2"]
NORMS: tuple[Norm, ...] = ("Linf", "L2")


@dataclass(frozen=True)
class ThreatModel:
    """An Lp ball of radius ``eps`` around each image, in [0, 1] pixel space (Linf 8/255 is 8 grey levels).

    One type for the job spec (where a track lists the threat models it is scored under) and for
    the attacks (:mod:`evaluator.attacks.threat` holds the tensor operations on it). It stays
    free of torch so that the platform can build job specs without importing the attacks.
    ``label`` names it in metric names and on pages, e.g. ``Linf-8/255`` or ``L2-0.5``; the
    attacks' own threat models (defaults, the reliability checks' scaled ones) leave it empty.
    """

    norm: Norm
    eps: float
    label: str = ""

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")

    @property
    def key(self) -> str:
        """A stable name, used in reports and to derive per-threat-model seeds (the label plays no part)."""
        return f"{self.norm}:{self.eps:.6g}"

    def scaled(self, factor: float) -> ThreatModel:
        """The same norm at ``factor`` times the radius (unlabelled: it is no track's threat model)."""
        return ThreatModel(self.norm, self.eps * factor)


@dataclass(frozen=True)
class GeneratorSpec:
    """A detector track's generator ``G(z)``: a zoo architecture, its safetensors weights, z ~ N(0, I).

    The universal attacks need it inside the sandbox: the patch learns on public fakes drawn
    from it, and the latent-space attack learns one change to its input.
    """

    architecture: str
    path: str
    sha256: str = ""
    latent_dim: int = 0


def budget_label(eps: float) -> str:
    """The metric suffix of a detector track's Linf budget: ``Linf-1/255`` for one grey level, else ``Linf-<eps>``.

    Here, free of torch, because the platform's pages and attack submissions name the detector's
    threat models by it too.
    """
    levels = round(eps * 255)
    if math.isclose(levels / 255, eps, rel_tol=1e-6, abs_tol=1e-9):
        return f"Linf-{levels}/255"
    return f"Linf-{eps:g}"


@dataclass(frozen=True)
class DetectorAttackSpec:
    """Parameters of the detector attack suite (Carlini & Farid 2020); see docs/evaluation.md.

    Every attack works on a seeded subset of ``points`` hidden fakes of the clean set and is
    scored against all of the clean set's hidden reals.
    """

    #: Hidden fakes attacked (a seeded subset of the clean set's fakes).
    points: int = 500
    #: A fake "scores as real" when it falls below the threshold that flags this share of reals.
    target_fpr: float = 0.05
    #: Linf budgets of the loss-maximising attack; 1/255 is "the lowest bit of each pixel".
    pgd_budgets: tuple[float, ...] = (1 / 255, 2 / 255, 4 / 255)
    pgd_steps: int = 50
    #: Norms of the distortion-minimising attack.
    min_norms: tuple[str, ...] = ("L2", "Linf", "L0")
    #: Share of the image area the universal patch covers (a square of the nearest whole side).
    patch_area: float = 0.01
    #: Public fakes (drawn from the generator with ``public_seed``) the universal attacks learn on.
    universal_train_images: int = 2000
    universal_steps: int = 300
    #: Latent attack radius relative to sqrt(latent_dim): ||delta||_2 <= latent_radius * sqrt(d).
    latent_radius: float = 0.5
    public_seed: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorAttackSpec:
        """From JSON (a job spec, or a track's overrides), where tuples arrive as lists."""
        raw = dict(data)
        for key in ("pgd_budgets", "min_norms"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)


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
    threat_models: tuple[ThreatModel, ...] = ()
    #: How many clean-set points (a seeded subset) the attack suite attacks.
    attack_points: int = 1000
    #: The registered attack-suite configuration (evaluator.attacks.cascade.SUITES).
    attack_suite: str = "attacks-2"
    #: Points (of the attacked subset) the reliability checks run on; 0 skips them.
    reliability_points: int = 200
    #: Detector tracks: the generator of the in-distribution fakes (for the universal attacks).
    generator: GeneratorSpec | None = None
    #: Detector tracks: the attack suite's parameters; None runs no detector attacks.
    detector_attacks: DetectorAttackSpec | None = None
    #: Whether the track accepts autocast (reduced precision) on CUDA, for clean predictions and attacks
    #: alike; off, everything runs in float32 (see evaluator.devices). Ignored on CPU.
    allow_mixed_precision: bool = False
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
        data["threat_models"] = tuple(ThreatModel(**t) for t in data.get("threat_models", ()))
        if data.get("generator"):
            data["generator"] = GeneratorSpec(**data["generator"])
        if data.get("detector_attacks"):
            data["detector_attacks"] = DetectorAttackSpec.from_dict(data["detector_attacks"])
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
class JobResult:
    """What comes back from one job. ``error`` is set (and ``metrics`` empty) when it failed.

    Named for the job, not ``Result``: the platform stores each of its metrics as a row of its own
    ``submissions.models.Result``, and one name for both read as one thing.

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
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        data = dict(data)
        data["metrics"] = [MetricValue(**m) for m in data.get("metrics", [])]
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> JobResult:
        return cls.from_dict(json.loads(text))

    @classmethod
    def failure(cls, spec: JobSpec, code: str, message: str, **provenance: Any) -> JobResult:
        return cls(
            job_id=spec.job_id,
            ok=False,
            suite_version=spec.suite_version,
            seed=spec.seed,
            error_code=code,
            error=message,
            provenance=dict(provenance),
        )
