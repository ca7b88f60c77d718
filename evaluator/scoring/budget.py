"""A job's time budget, derived from the track's work and the model's measured speed.

One fixed hour is wrong both ways: a robust model keeps most of its points alive through every
attack stage and needs far longer than a model whose points break at once, and an hour says
nothing about a model that is slow per batch. So the two costs are kept apart:

* the model's speed is the researcher's business. The contract probe times it; a model slower
  than the track's per-batch budget fails at once (``too_slow``), and every call it answers later
  is held to the same per-batch deadline (:mod:`evaluator.remote.client`);
* the amount of work is the platform's. :func:`work_for` bounds it from the track: images in the
  sets, and per attacked point and threat model the most passes the suite can spend (every
  stage's full budget, the escalation and the reliability checks included: a point that is never
  broken costs exactly that), and the calls those passes take in batches.

:func:`derive_budget` prices that work at the speed the probe measured, adds the attack's own
arithmetic (the scorer's per-call and per-image cost, measured on the development machine and
stated below), multiplies by a safety factor and caps the result at the operator's per-attempt
limit. A job that still runs out of time is the platform's fault: it ends ``out_of_time`` with its
finished stages kept, is not charged, and a re-run resumes after those stages
(:mod:`evaluator.checkpoints`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from evaluator.attacks.suites import SuiteConfig, get_suite
from evaluator.spec import JobSpec

__all__ = ["PassBound", "TimeBudget", "Work", "derive_budget", "passes_per_point",
           "work_for"]

#: The budget is this many times the priced work: the work is already an upper bound, the factor covers
#: a machine slower than the probe saw (another job beside it, thermal throttling).
SAFETY_FACTOR = 2.0
#: Seconds for everything before the first hidden image (the model process starting, loading, the probe).
STARTUP_SECONDS = 120.0
#: A backward pass (input gradient) costs about this many forward passes (forward again plus backward).
BACKWARD_COST = 3.0
#: The scorer's own cost per model call (the attack's Python work per iteration, a round trip's framing),
#: measured with measurements/square_overhead.py on the 2-core development VM: about 1.1 ms per Square
#: query beside 6 ms of model time; rounded up.
PLATFORM_SECONDS_PER_CALL = 2e-3
#: The scorer's arithmetic per image pass and input value (projections, norms, random draws): about
#: 10 ns per value per pass measured on the same machine (APGD on CIFAR-10 shaped batches); rounded up.
PLATFORM_SECONDS_PER_VALUE = 2e-8
#: Reliability checks: APGD-CE at these multiples of eps, APGD-T, then Square with this many queries.
RELIABILITY_EPS_FACTORS = 4
RELIABILITY_SQUARE_QUERIES = 1000


@dataclass(frozen=True)
class PassBound:
    """The most model passes one attacked point can cost under one threat model, and the iterations
    (model calls per batch of points) they come in."""

    #: Passes with an input gradient (each is a forward and a backward pass).
    gradient: int
    #: Forward-only passes.
    forward: int
    #: Sequential steps: each costs one call per batch of points (a gradient step two: forward, backward).
    steps: int


def passes_per_point(config: SuiteConfig, reliability_share: float) -> PassBound:
    """Upper bound on a point's passes under one threat model: every stage's full budget, escalation included.

    ``reliability_share`` is the share of the attacked points the reliability checks run on. Each
    APGD iteration, FMN step and FAB-T iteration is one gradient pass, each Square query one forward
    pass; every stage adds one forward pass to check its claimed images (counted as a step).
    """
    apgd, fmn, fab = config.apgd_iterations + 1, config.fmn_steps + 1, config.min_norm_iterations + 1
    cascade = {
        "apgd-ce": config.apgd_restarts * apgd,
        "apgd-t": config.target_classes * apgd,
        "fmn": fmn,
        "fab-t": config.min_norm_restarts * config.min_norm_targets * fab,
    }
    gradient = sum(cascade.get(stage, 0) for stage in config.stages)
    forward = (config.square_queries + 1) if "square" in config.stages else 0
    if config.escalation:
        gradient += 2 * config.escalation_restarts * apgd + config.escalation_min_norm_restarts * fmn
        gradient += (config.escalation_min_norm_restarts * config.min_norm_targets
                     * config.escalation_iteration_factor * fab)
        forward += config.escalation_square_restarts * (config.square_queries + 1)
    # The checks' APGD runs: APGD-CE at each multiple of eps and APGD-T at eps; a suite that reads the white-box
    # verdict at eps from its own cascade runs only the other multiples.
    checks_runs = (RELIABILITY_EPS_FACTORS - 1 if config.reliability_reuses_white_box
                   else RELIABILITY_EPS_FACTORS + config.target_classes)
    checks_gradient = checks_runs * apgd
    gradient += math.ceil(reliability_share * checks_gradient)
    forward += math.ceil(reliability_share * (RELIABILITY_SQUARE_QUERIES + 1))
    stages = len(config.stages) + len(config.escalation)
    return PassBound(gradient=gradient, forward=forward + stages, steps=gradient * 2 + forward + stages)


@dataclass(frozen=True)
class Work:
    """The most the platform can ask of a model in one job (what is left of it on a resumed job)."""

    #: Images of the evaluation sets still to be scored (each once, plus the batch checks' repeats).
    set_images: int
    #: Attacked points times the threat models still to be attacked.
    attacked: int
    gradient_passes: int
    forward_passes: int
    #: Model calls: every set batch, and every attack step for every batch of points.
    calls: int
    #: Input values per image (channels x height x width): the attacks' arithmetic scales with it.
    values_per_image: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def work_for(spec: JobSpec, set_images: int, threat_models_left: int | None = None,
             detector_left: bool = True) -> Work:
    """The job's work bound; a resumed job passes what it still runs (0 set images when the sets are done,
    the threat models left, whether the detector suite is left)."""
    batch = max(int(spec.batch_size), 1)
    values = spec.input.channels * spec.input.height * spec.input.width
    gradient = forward = calls = attacked = 0
    if spec.task == "classifier" and spec.threat_models:
        left = len(spec.threat_models) if threat_models_left is None else threat_models_left
        points = int(spec.attack_points)
        bound = passes_per_point(get_suite(spec.attack_suite),
                                 min(spec.reliability_points, points) / points if points else 0.0)
        attacked = points * left
        gradient, forward = bound.gradient * attacked, bound.forward * attacked
        calls = bound.steps * math.ceil(points / batch) * left
    elif spec.task == "detector" and spec.detector_attacks is not None and detector_left:
        attacks = spec.detector_attacks
        points = int(attacks.points)
        # PGD (two step rules) at each budget, the minimum-distortion search (a growth and a bisection of
        # about a dozen PGD runs per norm), the universal attacks' training steps over their public images,
        # and scoring the attacked fakes.
        per_point = 2 * (attacks.pgd_steps + 1) * (len(attacks.pgd_budgets) + 12 * len(attacks.min_norms))
        universal = 2 * attacks.universal_steps * attacks.universal_train_images
        attacked = points
        gradient = per_point * points + universal
        forward = 10 * points
        calls = math.ceil(gradient / batch) * 2 + math.ceil(forward / batch)
    calls += math.ceil(set_images * 1.1 / batch)
    return Work(set_images=set_images, attacked=attacked, gradient_passes=gradient, forward_passes=forward,
                calls=calls, values_per_image=values)


@dataclass(frozen=True)
class TimeBudget:
    """The seconds a job may run, and how they were made (kept in the provenance)."""

    seconds: float
    model_seconds: float
    platform_seconds: float
    #: The operator's per-attempt limit, when it was lower than the derived budget.
    capped_at: float | None
    seconds_per_image: float
    seconds_per_call: float
    work: Work

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["work"] = self.work.to_dict()
        return out


def derive_budget(work: Work, probe_seconds: float, probe_images: int, seconds_per_batch: float,
                  batch_size: int, cap_seconds: float | None = None) -> TimeBudget:
    """Prices ``work`` at the probe's speed: per image from the full batch, per call from the small probe.

    The probe times ``probe_images`` images and (extrapolated or measured) ``batch_size`` of them;
    the line through both gives a fixed cost per call and a cost per image. With only one point
    (extrapolated), all of the probe's time is counted per image, which overstates large batches and
    errs towards more time.
    """
    per_image = max(seconds_per_batch / max(batch_size, 1), 0.0)
    per_call = max(probe_seconds - per_image * probe_images, 0.0)
    images = work.set_images * 1.1 + work.forward_passes + BACKWARD_COST * work.gradient_passes
    model = images * per_image + work.calls * per_call
    platform = (work.calls * PLATFORM_SECONDS_PER_CALL
                + (work.forward_passes + work.gradient_passes) * work.values_per_image * PLATFORM_SECONDS_PER_VALUE)
    seconds = STARTUP_SECONDS + SAFETY_FACTOR * (model + platform)
    capped = None
    if cap_seconds is not None and seconds > cap_seconds:
        seconds, capped = float(cap_seconds), float(cap_seconds)
    return TimeBudget(seconds=round(seconds, 3), model_seconds=round(model, 3), platform_seconds=round(platform, 3),
                      capped_at=capped, seconds_per_image=per_image, seconds_per_call=per_call, work=work)
