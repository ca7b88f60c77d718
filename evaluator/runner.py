"""Runs one JobSpec to a Result: host the model, check its contract, score every evaluation set.

This is the scorer, what ``python -m evaluator run`` calls. It holds the evaluation sets, the
labels and the generator, and computes every number; the submitted model runs in a process of
its own (:mod:`evaluator.remote`) and is only ever asked for outputs and input gradients. It
never raises for a bad submission: every failure becomes a Result with an error code and a
sentence a researcher understands. Only aggregate metrics and per-class accuracies leave this
function; per-example outputs on hidden data never do.

Batches cannot be gamed: every evaluation set is fed in an order drawn from a secret seed of
this job (so no batch is one class, and no model can tell which stored image is in which
batch), and a sample of each set's hidden images is evaluated again alone, in another batch, at
another batch size and twice; a model whose outputs differ beyond rounding fails as
``batch_dependent`` or ``nondeterministic`` (:func:`check_batch_consistency`).
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from evaluator.attacks.common import derive_seed
from evaluator.data.evalsets import read_evaluation_set
from evaluator.devices import autocast_dtype, use_mixed_precision
from evaluator.errors import EvaluationError
from evaluator.hardware import hardware_description
from evaluator.metrics.classification import accuracy_with_interval, per_class_accuracy
from evaluator.metrics.detection import detection_metrics, fixed_threshold_rates, threshold_at_fpr
from evaluator.models.contract import check_contract
from evaluator.progress import ProgressCallback, StagedProgress, ignore_progress
from evaluator.remote.client import HostOptions, ModelRaised, RemoteModel, host_model
from evaluator.sandbox import SandboxUnavailable
from evaluator.spec import InputSpec, JobSpec, MetricValue, Result

__all__ = ["hardware_description", "run_job", "predict", "check_batch_consistency"]

#: Share of the progress bar given to loading and checking the model, before any data is seen.
_SETUP_WEIGHT = 0.03
#: Progress weight of one attacked point, relative to one clean image.
_ATTACK_WEIGHT = 200.0


def to_pixels(images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Stored 8-bit pixels as float images in [0, 1]: the space every attack budget is defined in."""
    return images_uint8.to(device=device, dtype=torch.float32).div_(255.0)


def to_model_input(images_uint8: torch.Tensor, input_spec: InputSpec, device: torch.device) -> torch.Tensor:
    """The one place where stored 8-bit pixels become the float images a model sees."""
    low, high = input_spec.value_range
    x = to_pixels(images_uint8, device)
    if (low, high) != (0.0, 1.0):
        x = x.mul_(high - low).add_(low)
    return x


class _FromPixels(torch.nn.Module):
    """A model that takes [low, high], fed from pixels in [0, 1] by the same map as ``to_model_input``."""

    def __init__(self, model: torch.nn.Module, low: float, high: float) -> None:
        super().__init__()
        self.model, self.low, self.scale = model, low, high - low

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.low)


def in_pixel_space(model: torch.nn.Module, input_spec: InputSpec) -> torch.nn.Module:
    """The model as the attacks must see it: taking pixels in [0, 1].

    Threat models are stated on pixels (Linf 8/255 is 8 grey levels; a valid image has pixels in
    [0, 1]) and the attacks clip to that box. Attacking a model that takes [-1, 1] directly would
    clip to the wrong box and halve every budget, so its input map moves inside the attacked function.
    """
    low, high = input_spec.value_range
    if (low, high) == (0.0, 1.0):
        return model
    return _FromPixels(model, low, high).eval()


def evaluation_order(count: int, rng: torch.Generator | None = None) -> torch.Tensor:
    """The order a set's images are fed in: a permutation from the job's secret generator.

    Stored sets are sorted (a detector set holds its reals, then its fakes); fed in that order,
    every batch would be one class and a model could read the class off the batch. A random
    order mixes classes, and a secret seed means the model cannot know which image is where.
    """
    return torch.randperm(count, generator=rng)


def predict(
    model: torch.nn.Module,
    images_uint8: torch.Tensor,
    input_spec: InputSpec,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
    order: torch.Tensor | None = None,
    fed_order: bool = False,
) -> torch.Tensor:
    """Model outputs for every image, in batches, without autograd; outputs stay on the CPU.

    With ``order``, batch k holds the images ``order[k*batch_size:(k+1)*batch_size]``; the
    outputs come back in the stored order all the same, or in the order fed with ``fed_order``
    (needed when ``order`` repeats images).
    """
    outputs: list[torch.Tensor] = []
    total = images_uint8.shape[0] if order is None else int(order.shape[0])
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            batch = to_model_input(images_uint8[rows], input_spec, device)
            try:
                out = model(batch)
            except EvaluationError:
                raise
            except ModelRaised as exc:
                raise EvaluationError("model_error", str(exc)) from None
            except Exception as exc:  # the submission's code failed on real data
                raise EvaluationError(
                    "model_error", f"The model raised {type(exc).__name__} on evaluation images."
                ) from exc
            if not isinstance(out, torch.Tensor):
                raise EvaluationError("wrong_dtype", f"The model returned {type(out).__name__}, not a tensor.")
            outputs.append(out.detach().float().cpu())
            if on_batch is not None:
                on_batch(min(start + batch_size, total))
    stacked = torch.cat(outputs)
    if order is None or fed_order:
        return stacked
    restored = torch.empty_like(stacked)
    restored[order] = stacked
    return restored


def feed_with_repeats(count: int, batch_size: int, sample: int,
                      rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The job's feed for one set: a secret permutation, then ``sample`` of its images a second time.

    Returns ``(feed, chosen)``: the stored indices in the order they are sent (``count`` + k long,
    the repeats last, in the order of ``chosen``) and the repeated indices. Each repeated image is
    drawn from the batches before the one the repeats start in, so its second pass is always in
    another batch of the job's size, beside other companions. Without state a model cannot tell a
    repeat from any other image, so "the same image in another batch" costs k images instead of a
    batch of its own. When the whole set fits in one batch, nothing is repeated (k = 0).
    """
    order = evaluation_order(count, rng)
    before = (count // batch_size) * batch_size  # positions whose batch ends before the repeats start
    k = min(sample, before)
    if k <= 0:
        return order, order[:0]
    chosen = order[torch.randperm(before, generator=rng)[:k]]
    return torch.cat([order, chosen]), chosen


#: Hidden images per evaluation set that the batch checks look at again.
CONSISTENCY_SAMPLE = 16
#: Of those, how many are also evaluated alone (one call each).
ALONE_SAMPLE = 8
#: Outputs of the same image may differ by this share of their scale between batchings (float32
#: kernels sum in another order at another batch size); far below any change that moves a score.
CONSISTENCY_RTOL = 1e-4
#: The same, under autocast on a GPU (bfloat16 or float16 rounding).
CONSISTENCY_RTOL_MIXED = 5e-2


@dataclass(frozen=True)
class ConsistencyReport:
    """What the batch checks compared, for the provenance."""

    images: int
    comparisons: int
    max_batch_difference: float
    max_repeat_difference: float

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "comparisons": self.comparisons,
                "max_batch_difference": float(f"{self.max_batch_difference:.3g}"),
                "max_repeat_difference": float(f"{self.max_repeat_difference:.3g}")}


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().reshape(a.shape[0], -1), b.double().reshape(b.shape[0], -1)
    scale = torch.maximum(a.abs().amax(dim=1), b.abs().amax(dim=1)).clamp_min(1.0)
    return float(((a - b).abs().amax(dim=1) / scale).max()) if a.shape[0] else 0.0


def check_batch_consistency(
    model: torch.nn.Module,
    images_uint8: torch.Tensor,
    outputs: torch.Tensor,
    input_spec: InputSpec,
    batch_size: int,
    device: torch.device,
    rng: torch.Generator | None = None,
    *,
    sample: int = CONSISTENCY_SAMPLE,
    rtol: float = CONSISTENCY_RTOL,
    set_name: str = "",
    repeated: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ConsistencyReport:
    """Re-evaluate a random sample of hidden images alone, in another batch, at another size, and twice.

    ``outputs`` are the job's outputs for every image (stored order). A model whose output for an
    image depends on the other images of its batch (batch statistics, a batch mean added to every
    score) differs between these batchings and fails ``batch_dependent``; one whose outputs differ
    between two identical calls fails ``nondeterministic``. The sample and its companions come
    from the job's secret generator, so the checked images cannot be told from the others.

    ``repeated`` is ``(chosen, outputs)`` when the job's own pass already fed the sample a second
    time, in other batches of the job's size (:func:`feed_with_repeats`); otherwise the sample is
    sent again here beside other companions.
    """
    total = int(images_uint8.shape[0])
    if total == 0:
        return ConsistencyReport(0, 0, 0.0, 0.0)
    if repeated is not None:
        chosen, in_batch = repeated
    else:
        chosen = torch.randperm(total, generator=rng)[: min(sample, total)]
    picked = images_uint8[chosen]
    expected = outputs[chosen]
    size = max(1, min(batch_size, total))
    # Another batch size: neither the job's nor 1, and smaller than the sample so it splits it.
    other_size = max(2, min(len(chosen) // 2 + 1, size - 1)) if size > 2 else size + 1
    if repeated is None:
        # Another batch of the usual size: the sample beside other companions, at other positions.
        companions = torch.randperm(total, generator=rng)
        companions = companions[~torch.isin(companions, chosen)][: max(size - len(chosen), 0)]
        mixed_rows = torch.cat([chosen, companions])
        mixed_rows = mixed_rows[torch.randperm(len(mixed_rows), generator=rng)]
        position = {int(row): index for index, row in enumerate(mixed_rows.tolist())}
        where = torch.tensor([position[int(row)] for row in chosen.tolist()])
        in_batch = predict(model, images_uint8[mixed_rows], input_spec, len(mixed_rows), device)[where]
    # Alone: one call per image, the dearest check, so on part of the sample (the first ones: random).
    lone = min(len(chosen), ALONE_SAMPLE)
    alone = torch.cat([predict(model, picked[i : i + 1], input_spec, 1, device) for i in range(lone)])
    resized = predict(model, picked, input_spec, other_size, device)
    # Twice: the small batches again, exactly as before (cheaper than a second full batch, and as telling).
    resized_again = predict(model, picked, input_spec, other_size, device)
    repeat = _relative_difference(resized, resized_again)
    batch = max(_relative_difference(expected, in_batch), _relative_difference(expected[:lone], alone),
                _relative_difference(expected, resized))
    where_text = f" of {set_name}" if set_name else ""
    if repeat > rtol:
        raise EvaluationError(
            "nondeterministic",
            f"The same batch of evaluation images{where_text}, sent twice, gave outputs that differ by up to "
            f"{repeat:.3g} of their scale. Put the model in eval mode and remove randomness from its forward pass.",
        )
    if batch > rtol:
        raise EvaluationError(
            "batch_dependent",
            f"An evaluation image{where_text} got outputs that differ by up to {batch:.3g} of their scale depending "
            "on the other images in its batch or the batch size. Each image's output must depend on that image "
            "alone (no batch statistics: eval mode, no cross-batch operations).",
        )
    return ConsistencyReport(len(chosen), 3 * len(chosen) + lone, batch, repeat)


def _check_finite(outputs: torch.Tensor, set_name: str) -> None:
    finite_rows = torch.isfinite(outputs.reshape(outputs.shape[0], -1)).all(dim=1)
    bad = int((~finite_rows).sum())
    if bad:
        raise EvaluationError(
            "non_finite_output",
            f"The model returned NaN or infinite outputs for {bad} of {outputs.shape[0]} images of {set_name}.",
        )


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
    scores = outputs.reshape(outputs.shape[0], -1)[:, 0].numpy()
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


def attack_subset(num_examples: int, points: int, seed: int) -> torch.Tensor:
    """The seeded subset of the clean set that the attack suite attacks (sorted indices)."""
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return order[: min(points, num_examples)].sort().values


def run_attacks(
    model: torch.nn.Module, spec: JobSpec, set_name: str, images_uint8: torch.Tensor, labels: torch.Tensor,
    device: torch.device, progress: ProgressCallback,
) -> tuple[list[MetricValue], dict[str, Any]]:
    """The attack cascade on a seeded subset of the clean set, plus the reliability checks.

    Returns ``robust_accuracy@<threat>`` (final, with its interval) and
    ``robust_accuracy@<threat>><stage>`` (after each stage) metrics, and per threat model the
    passes spent, seconds and reliability flags for the provenance.
    """
    from dataclasses import asdict

    from evaluator.attacks.cascade import run_cascade
    from evaluator.attacks.reliability import run_reliability_checks
    from evaluator.attacks.threat import ThreatModel

    subset = attack_subset(int(labels.shape[0]), spec.attack_points, spec.seed)
    model = in_pixel_space(model, spec.input)
    x = to_pixels(images_uint8[subset], device)
    y = labels[subset].to(device)
    threats = [ThreatModel(t.norm, t.eps) for t in spec.threat_models]
    with_checks = spec.reliability_points > 0
    stages = StagedProgress(progress, [4.0 if with_checks else 1.0] + ([1.0] if with_checks else []))

    def on_cascade(fraction: float, stage: str) -> None:
        stages.report(0, fraction, f"attacks: {stage}")

    report = run_cascade(model, x, y, threats, suite=spec.attack_suite, seed=spec.seed,
                         batch_size=spec.batch_size, device=device, progress=on_cascade)
    metrics: list[MetricValue] = []
    details: dict[str, Any] = {}
    for index, (threat_spec, threat, outcome) in enumerate(
        zip(spec.threat_models, threats, report.threat_models, strict=True)
    ):
        label = threat_spec.label
        metrics.append(MetricValue(set_name, f"robust_accuracy@{label}", outcome.robust_accuracy, outcome.num_examples,
                                   outcome.ci_low, outcome.ci_high, outcome.ci_method))
        for stage in outcome.stages:
            metrics.append(MetricValue(set_name, f"robust_accuracy@{label}>{stage.attack}", stage.robust_accuracy,
                                       outcome.num_examples))
        flags: list[dict[str, Any]] = []
        if with_checks:
            stages.report(1, index / len(threats), f"reliability checks: {label}")
            checks = run_reliability_checks(model, x, y, threat, subset=spec.reliability_points, seed=spec.seed,
                                            cascade_report=outcome, batch_size=spec.batch_size, device=device)
            flags = [asdict(flag) for flag in checks.flags]
        details[label] = {
            "norm": threat.norm, "eps": threat.eps, "suite": report.suite_version, "points": outcome.num_examples,
            "clean_accuracy": outcome.clean_accuracy, "forward_passes": outcome.forward_passes,
            "backward_passes": outcome.backward_passes, "seconds": outcome.seconds, "flags": flags,
            "stages": [asdict(stage) for stage in outcome.stages],
        }
    metrics.append(MetricValue(set_name, "attacked_clean_accuracy", report.clean_accuracy, report.num_examples,
                               report.clean_ci_low, report.clean_ci_high, "clopper-pearson-95"))
    return metrics, details


def _clean_index(spec: JobSpec) -> int:
    return next((i for i, s in enumerate(spec.evaluation_sets) if s.role == "clean"), 0)


def _score_detector_sets(spec: JobSpec, datasets: list[Any], outputs: list[torch.Tensor]) -> list[MetricValue]:
    """Detector metrics of every set; shifted sets are judged at thresholds set on the clean reals."""
    clean = _clean_index(spec)
    clean_scores = outputs[clean].reshape(outputs[clean].shape[0], -1)[:, 0].numpy()
    clean_reals = clean_scores[datasets[clean].labels.numpy() == 0]
    thresholds = {fpr: threshold_at_fpr(clean_reals, fpr) for fpr in (0.01, 0.05)} if clean_reals.size else None
    metrics: list[MetricValue] = []
    for index, (set_spec, data, out) in enumerate(zip(spec.evaluation_sets, datasets, outputs, strict=True)):
        metrics += score_detector(
            out, data.labels, set_spec.name, spec.seed, None if index == clean else thresholds,
            getattr(data, "groups", None), getattr(data, "group_names", None),
        )
    return metrics


def run_detector_attacks(
    model: torch.nn.Module, spec: JobSpec, datasets: list[Any], device: torch.device, progress: ProgressCallback,
    clean_outputs: torch.Tensor | None = None, secret_seed: int | None = None,
) -> tuple[list[MetricValue], dict[str, Any]]:
    """The Carlini-Farid suite on the clean set: hidden reals against attacked hidden fakes.

    ``clean_outputs`` are the model's outputs on the clean set, already computed by the job; the
    suite then does not score those images again.
    """
    from evaluator.detector_attacks.suite import run_detector_suite
    from evaluator.models.loading import load_generator

    assert spec.detector_attacks is not None
    clean_spec, data = spec.evaluation_sets[_clean_index(spec)], datasets[_clean_index(spec)]
    generator, latent_dim = None, 0
    if spec.generator is not None:
        generator = load_generator(spec.generator.path, spec.generator.architecture, spec.generator.sha256).to(device)
        latent_dim = spec.generator.latent_dim
    labels = data.labels
    scores = None
    if clean_outputs is not None:
        column = clean_outputs.reshape(clean_outputs.shape[0], -1)[:, 0].double().numpy()
        scores = (column[labels.numpy() == 0], column[labels.numpy() == 1])
    return run_detector_suite(
        in_pixel_space(model, spec.input), data.images[labels == 0], data.images[labels == 1],
        spec.detector_attacks, clean_spec.name, spec.seed, generator=generator, latent_dim=latent_dim,
        batch_size=spec.batch_size, device=device, progress=progress, known_scores=scores,
        secret_seed=secrets.randbits(63) if secret_seed is None else secret_seed,
    )


class _Reading:
    """The job's evaluation sets, read in a thread while the model process starts (both take about a second)."""

    def __init__(self, spec: JobSpec) -> None:
        self._sets: list[Any] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(spec,), daemon=True)
        self._thread.start()

    def _read(self, spec: JobSpec) -> None:
        try:
            self._sets = [read_evaluation_set(s.path, s.sha256 or None) for s in spec.evaluation_sets]
        except BaseException as exc:  # re-raised in the scorer's own thread by result()
            self._error = exc

    def result(self) -> list[Any]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._sets


def _run_settings(spec: JobSpec, model: RemoteModel, device: str, backward: bool,
                  provenance: dict[str, Any]) -> JobSpec:
    """The spec as it runs here (its batch size fitted to the model's device), and the precision used.

    Both go to the provenance: a score computed with a smaller batch or in mixed precision says so.
    On a GPU the model process measures what fits; its answer can only lower the track's batch size.
    """
    choice: dict[str, Any] = {"batch_size": spec.batch_size, "requested": spec.batch_size, "reason": "cpu"}
    if device.startswith("cuda"):
        choice = model.plan(spec.batch_size, backward, spec.input.value_range)
    mixed = use_mixed_precision(spec.allow_mixed_precision, device)
    provenance["batch_size"] = choice
    provenance["mixed_precision"] = {
        "allowed": spec.allow_mixed_precision, "clean": mixed, "attacks": mixed,
        "dtype": str(autocast_dtype()).removeprefix("torch.") if mixed else "float32",
    }
    return replace(spec, batch_size=int(choice["batch_size"]))


def run_job(spec: JobSpec, progress: ProgressCallback = ignore_progress, host: HostOptions | None = None,
            secret_seed: int | None = None) -> Result:
    """Evaluate one submission as the spec says; failures come back as a Result, not an exception.

    The model runs in its own process, started as ``host`` says (by default under bubblewrap
    where it is installed). ``spec.device`` may be ``auto`` (see :mod:`evaluator.devices`): the
    model process resolves it, since only it knows whether a GPU reached it, and the provenance
    keeps both the device asked for and the one used. Everything the scorer computes stays on
    the CPU.

    ``secret_seed`` seeds what must stay unknown to the submitter (the batch order, the check
    samples, the detector suite's universal attacks); the platform leaves it None, which draws a
    fresh one from the operating system for every job. Tests fix it to compare two runs.
    """
    started = time.perf_counter()
    torch.manual_seed(spec.seed)
    provenance: dict[str, Any] = {"device_requested": spec.device}
    device = torch.device("cpu")
    #: Batch order and check samples: secret to this job, unknown to the model and to anyone watching.
    secret = secrets.randbits(63) if secret_seed is None else int(secret_seed)
    order_rng = torch.Generator().manual_seed(secret)
    try:
        progress(0.0, "loading model")
        attacking = spec.task == "classifier" and bool(spec.threat_models)
        attacking_detector = spec.task == "detector" and spec.detector_attacks is not None
        host = host or HostOptions.default()
        # The sets are read (and their hashes checked) while the model process starts.
        reading = _Reading(spec)
        with host_model(spec.artifact, spec.input, task=spec.task, num_classes=spec.num_classes, device=spec.device,
                        time_budget_s=spec.time_budget_s, batch_size=spec.batch_size,
                        mixed_precision=spec.allow_mixed_precision, options=host) as hosted:
            model = hosted.model
            provenance.update(hosted.hardware)
            provenance["device"] = hosted.device
            provenance["model_process"] = hosted.sandbox
            progress(0.0, "checking the model's input and output contract")
            # The time budget is per batch of the track's size, whatever size this device ends up using.
            contract = check_contract(model, spec.input, spec.task, spec.num_classes, spec.batch_size,
                                      spec.time_budget_s, "cpu")
            provenance["contract"] = {"probe_seconds": round(contract.probe_seconds, 4),
                                      "seconds_per_batch": round(contract.seconds_per_batch, 4)}
            model.strict = True
            provenance["startup_seconds"] = round(time.perf_counter() - started, 3)
            spec = _run_settings(spec, model, hosted.device, attacking or attacking_detector, provenance)
            model.batch_size = spec.batch_size
            result = _score(spec, model, device, progress, provenance, order_rng, attacking, attacking_detector,
                            derive_seed(secret, "detector-suite"), reading.result())
            provenance["spot_checks"] = {"calls": model.calls, "checked": model.spot_checks}
        elapsed = time.perf_counter() - started
        provenance.update(seconds=round(elapsed, 3),
                          images_per_second=round(provenance["images"] / elapsed, 1) if elapsed > 0 else None)
        result.provenance = provenance
        progress(1.0, "done")
        return result
    except EvaluationError as exc:
        provenance["seconds"] = round(time.perf_counter() - started, 3)
        return Result.failure(spec, exc.code, exc.message, **provenance)
    except MemoryError:
        return Result.failure(spec, "out_of_memory", "The evaluation exceeded its memory limit.", **provenance)
    except SandboxUnavailable as exc:
        return Result.failure(spec, "sandbox_unavailable", str(exc), **provenance)
    except Exception as exc:  # the platform's own fault: the traceback goes to the operator's log only
        traceback.print_exc(file=sys.stderr)
        return Result.failure(spec, "internal", f"The evaluator failed ({type(exc).__name__}).", **provenance)


def _score(spec: JobSpec, model: RemoteModel, device: torch.device, progress: ProgressCallback,
           provenance: dict[str, Any], order_rng: torch.Generator, attacking: bool,
           attacking_detector: bool, detector_secret: int, datasets: list[Any]) -> Result:
    """Every evaluation set through the model in a secret order, the batch checks, then the attacks."""
    total_images = sum(int(d.labels.shape[0]) for d in datasets)
    provenance["images"] = total_images
    # An attacked point costs hundreds of passes: weigh the attack stage accordingly.
    if attacking:
        attack_weight = [_ATTACK_WEIGHT * min(spec.attack_points, total_images)]
    elif attacking_detector:
        assert spec.detector_attacks is not None
        attack_weight = [_ATTACK_WEIGHT * min(spec.detector_attacks.points, total_images)]
    else:
        attack_weight = []
    stages = StagedProgress(
        progress, [_SETUP_WEIGHT * total_images] + [int(d.labels.shape[0]) for d in datasets] + attack_weight
    )
    stages.report(0, 1.0, "model checked")
    rtol = CONSISTENCY_RTOL_MIXED if provenance["mixed_precision"]["clean"] else CONSISTENCY_RTOL
    model.tolerance = rtol
    # From here on the model process sees hidden images: none of its own words are kept any more.
    model.hidden = True

    result = Result(job_id=spec.job_id, ok=True, suite_version=spec.suite_version, seed=spec.seed)
    detector_outputs: list[torch.Tensor] = []
    checks: dict[str, Any] = {}
    check_seconds = 0.0
    for index, (set_spec, data) in enumerate(zip(spec.evaluation_sets, datasets, strict=True), start=1):
        count = int(data.labels.shape[0])
        stage = f"evaluating {set_spec.name} ({set_spec.role})"

        def on_batch(done: int, index: int = index, count: int = count, stage: str = stage) -> None:
            stages.report(index, done / count, stage)

        feed, chosen = feed_with_repeats(count, spec.batch_size, CONSISTENCY_SAMPLE, order_rng)
        fed = predict(model, data.images, spec.input, spec.batch_size, device, on_batch, feed, fed_order=True)
        outputs = torch.empty((count, *fed.shape[1:]), dtype=fed.dtype)
        outputs[feed[:count]] = fed[:count]
        _check_finite(fed, set_spec.name)
        checking = time.perf_counter()
        checks[set_spec.name] = check_batch_consistency(
            model, data.images, outputs, spec.input, spec.batch_size, device, order_rng, rtol=rtol,
            set_name=set_spec.name, repeated=(chosen, fed[count:]) if len(chosen) else None,
        ).to_dict()
        check_seconds += time.perf_counter() - checking
        if spec.task == "classifier":
            metrics, per_class = score_classifier(
                outputs, data.labels, spec.num_classes, set_spec.name,
                getattr(data, "groups", None), getattr(data, "group_names", None),
            )
            result.per_class[set_spec.name] = per_class
            result.metrics.extend(metrics)
        else:
            detector_outputs.append(outputs)
    provenance["batch_checks"] = checks
    provenance["batch_check_seconds"] = round(check_seconds, 3)
    if spec.task == "detector":
        result.metrics.extend(_score_detector_sets(spec, datasets, detector_outputs))
    attack_stage = len(datasets) + 1

    def on_attack(fraction: float, stage: str) -> None:
        stages.report(attack_stage, fraction, stage)

    try:
        if attacking:
            clean_index = _clean_index(spec)
            clean_spec, clean_data = spec.evaluation_sets[clean_index], datasets[clean_index]
            attack_metrics, provenance["attacks"] = run_attacks(
                model, spec, clean_spec.name, clean_data.images, clean_data.labels, device, on_attack
            )
            result.metrics.extend(attack_metrics)
        if attacking_detector:
            attack_metrics, provenance["detector_attacks"] = run_detector_attacks(
                model, spec, datasets, device, on_attack, detector_outputs[_clean_index(spec)], detector_secret
            )
            result.metrics.extend(attack_metrics)
    except ModelRaised as exc:
        raise EvaluationError("model_error", str(exc)) from None
    return result
