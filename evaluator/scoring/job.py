"""One job from start to JobResult: read the sets, host the model, feed every set, check, score, attack.

Everything here is shared by the task kinds; what differs (how sets are scored, which attacks
run) is asked of the kind's :class:`evaluator.scoring.task.TaskScoring`, chosen once from
``spec.task`` (:data:`SCORING`).
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
import traceback
from dataclasses import replace
from typing import Any

import torch

from evaluator.checkpoints import (
    SETS,
    Checkpoint,
    CheckpointCallback,
    ignore_checkpoint,
    incomplete_result,
    resumed_stages,
    stage_keys,
)
from evaluator.data.evalsets import EvaluationSetData, read_evaluation_set
from evaluator.deadline import JobDeadline, OutOfTime
from evaluator.devices import autocast_dtype, use_mixed_precision
from evaluator.errors import EvaluationError
from evaluator.models.contract import ContractReport, check_contract, probe_images
from evaluator.progress import ProgressCallback, StagedProgress, ignore_progress
from evaluator.remote.client import HostOptions, ModelRaised, RemoteModel, host_model
from evaluator.sandbox import SandboxUnavailable
from evaluator.scoring.budget import TimeBudget, derive_budget, work_for
from evaluator.scoring.classifier import ClassifierScoring
from evaluator.scoring.consistency import (
    CONSISTENCY_RTOL,
    CONSISTENCY_RTOL_MIXED,
    CONSISTENCY_SAMPLE,
    check_batch_consistency,
    check_finite,
)
from evaluator.scoring.detector import DetectorScoring
from evaluator.scoring.feeding import feed_with_repeats, predict
from evaluator.scoring.task import TaskScoring
from evaluator.spec import JobResult, JobSpec, TaskKind

__all__ = ["SCORING", "run_job"]

#: Share of the progress bar given to loading and checking the model, before any data is seen.
_SETUP_WEIGHT = 0.03
#: Progress weight of one attacked point, relative to one clean image.
_ATTACK_WEIGHT = 200.0
#: A job out of time is the model's fault when its own time exceeded this many times what its probe speed allowed.
SLOWER_THAN_PROBE = 1.5
#: Seconds of the host's wall-clock limit kept back for the scorer to send a partial result.
WALL_MARGIN_SECONDS = 30.0

#: What each task kind adds to a job; the only place the kind is looked at.
SCORING: dict[TaskKind, TaskScoring] = {"classifier": ClassifierScoring(), "detector": DetectorScoring()}


class _Reading:
    """The job's evaluation sets, read in a thread while the model process starts (both take about a second)."""

    def __init__(self, spec: JobSpec) -> None:
        self._sets: list[EvaluationSetData] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(spec,), daemon=True)
        self._thread.start()

    def _read(self, spec: JobSpec) -> None:
        try:
            self._sets = [read_evaluation_set(s.path, s.sha256 or None) for s in spec.evaluation_sets]
        except BaseException as exc:  # re-raised in the scorer's own thread by result()
            self._error = exc

    def result(self) -> list[EvaluationSetData]:
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
            secret_seed: int | None = None, *, resume: dict[str, Any] | None = None,
            on_checkpoint: CheckpointCallback = ignore_checkpoint) -> JobResult:
    """Evaluate one submission as the spec says; failures come back as a JobResult, not an exception.

    The model runs in its own process, started as ``host`` says (by default under bubblewrap
    where it is installed). ``spec.device`` may be ``auto`` (see :mod:`evaluator.devices`): the
    model process resolves it, since only it knows whether a GPU reached it, and the provenance
    keeps both the device asked for and the one used. Everything the scorer computes stays on
    the CPU.

    ``secret_seed`` seeds what must stay unknown to the submitter (the batch order, the check
    samples, the detector suite's universal attacks); the platform leaves it None, which draws a
    fresh one from the operating system for every job. Tests fix it to compare two runs.

    Each finished stage goes to ``on_checkpoint`` (:mod:`evaluator.checkpoints`);
    ``resume`` (``{"fingerprint": ..., "stages": [checkpoint dicts]}``, from an earlier run of the
    same job) skips the stages it holds, and is ignored when its fingerprint is not this spec's.
    The job's time budget comes from its work and the model's measured speed
    (:mod:`evaluator.scoring.budget`), capped by the host's wall-clock limit; a job that runs out
    of it ends ``out_of_time`` with the metrics of its finished stages.
    """
    started = time.perf_counter()
    torch.manual_seed(spec.seed)
    provenance: dict[str, Any] = {"device_requested": spec.device}
    device = torch.device("cpu")
    #: Batch order and check samples: secret to this job, unknown to the model and to anyone watching.
    secret = secrets.randbits(63) if secret_seed is None else int(secret_seed)
    order_rng = torch.Generator().manual_seed(secret)
    done = resumed_stages(spec, resume)
    finished: dict[str, Checkpoint] = dict(done)
    if done:
        provenance["resumed_stages"] = sorted(done)
    reached = _Reached(progress)

    def keep(checkpoint: Checkpoint) -> None:
        finished[checkpoint.stage] = checkpoint
        on_checkpoint(checkpoint)

    host = host or HostOptions.default()
    try:
        reached(0.0, "loading model")
        scoring = SCORING[spec.task]
        attacked_points = scoring.attacked_points(spec)
        # The sets are read (and their hashes checked) while the model process starts.
        reading = _Reading(spec)
        with host_model(spec.artifact, spec.input, task=spec.task, num_classes=spec.num_classes, device=spec.device,
                        time_budget_s=spec.time_budget_s, batch_size=spec.batch_size,
                        mixed_precision=spec.allow_mixed_precision, options=host) as hosted:
            model = hosted.model
            provenance.update(hosted.hardware)
            provenance["device"] = hosted.device
            provenance["model_process"] = hosted.sandbox
            reached(0.0, "checking the model's input and output contract")
            # The time budget is per batch of the track's size, whatever size this device ends up using.
            contract = check_contract(model, spec.input, spec.task, spec.num_classes, spec.batch_size,
                                      spec.time_budget_s, "cpu")
            provenance["contract"] = {"probe_seconds": round(contract.probe_seconds, 4),
                                      "seconds_per_batch": round(contract.seconds_per_batch, 4)}
            model.strict = True
            provenance["startup_seconds"] = round(time.perf_counter() - started, 3)
            datasets = reading.result()
            contract = _timed_full_batch(model, spec, contract)
            provenance["contract"]["budget_batch_seconds"] = round(contract.seconds_per_batch, 4)
            budget = _budget(spec, datasets, done, contract, host)
            provenance["time_budget"] = budget.to_dict()
            model.deadline = JobDeadline(budget.seconds - (time.perf_counter() - started))
            spec = _run_settings(spec, model, hosted.device, attacked_points is not None, provenance)
            model.batch_size = spec.batch_size
            result = _score(spec, scoring, attacked_points, model, device, reached, provenance, order_rng, secret,
                            datasets, done, keep)
            provenance["spot_checks"] = {"calls": model.calls, "checked": model.spot_checks}
            provenance["model_seconds"] = round(model.model_seconds, 3)
            if hosted.device.startswith("cuda"):
                provenance["gpu_memory"] = model.gpu_memory()
        elapsed = time.perf_counter() - started
        provenance.update(seconds=round(elapsed, 3),
                          images_per_second=round(provenance["images"] / elapsed, 1) if elapsed > 0 else None)
        result.provenance = provenance
        reached(1.0, "done")
        return result
    except OutOfTime as exc:
        provenance["seconds"] = round(time.perf_counter() - started, 3)
        used = round(model.model_seconds, 3)
        provenance["model_seconds"] = used
        allowance = provenance["time_budget"]["model_seconds"]
        if used > SLOWER_THAN_PROBE * allowance:
            # The budget priced the most work the suite can ask at the probe's speed; a model that used more than
            # that answered hidden batches slower than it answered the probe: its own doing, and charged.
            return JobResult.failure(spec, "too_slow", (
                f"The model spent {used:.0f} s answering the evaluation's batches, more than the "
                f"{allowance:.0f} s its speed on the contract probe allows for all of the track's work."), **provenance)
        return incomplete_result(spec, list(finished.values()), reached.stage, str(exc), provenance)
    except EvaluationError as exc:
        provenance["seconds"] = round(time.perf_counter() - started, 3)
        return JobResult.failure(spec, exc.code, exc.message, **provenance)
    except MemoryError:
        return JobResult.failure(spec, "out_of_memory", "The evaluation exceeded its memory limit.", **provenance)
    except SandboxUnavailable as exc:
        return JobResult.failure(spec, "sandbox_unavailable", str(exc), **provenance)
    except Exception as exc:  # the platform's own fault: the traceback goes to the operator's log only
        traceback.print_exc(file=sys.stderr)
        return JobResult.failure(spec, "internal", f"The evaluator failed ({type(exc).__name__}).", **provenance)


class _Reached:
    """Passes progress on and remembers the last stage named: where a job that ran out of time stopped."""

    def __init__(self, progress: ProgressCallback) -> None:
        self.progress = progress
        self.stage = ""

    def __call__(self, fraction: float, stage: str) -> None:
        self.stage = stage
        self.progress(fraction, stage)


def _timed_full_batch(model: RemoteModel, spec: JobSpec, contract: ContractReport) -> ContractReport:
    """The contract with one batch of the track's size timed, when the probe only extrapolated it.

    The budget prices work per image from a full batch and per call from the small probe; extrapolated
    from the probe alone, every call's fixed cost is counted per image, which overstated a digits CNN's
    per-image cost about tenfold (0.74 ms) and made the "slower than its probe" check ten times looser.
    One batch of probe images (random, never hidden data) costs a fraction of a second.
    """
    if contract.measured_full_batch or spec.batch_size <= contract.probe_batch_size:
        return contract
    images = probe_images(spec.input, spec.batch_size, seed=2)
    try:
        with torch.inference_mode():
            model(images[:1])  # warm the path for this batch size's first call
            begun = time.perf_counter()
            model(images)
            seconds = time.perf_counter() - begun
    except ModelRaised:
        # Only a measurement: a model that raises here is judged where it matters, on the evaluation's own
        # batches (where its words are no longer kept); the budget keeps the probe's extrapolation.
        return contract
    return replace(contract, seconds_per_batch=seconds, measured_full_batch=True)


def _budget(spec: JobSpec, datasets: list[EvaluationSetData], done: dict[str, Checkpoint], contract: ContractReport,
            host: HostOptions) -> TimeBudget:
    """The job's time budget for the stages it still runs, from the job's start, capped by the host's wall clock.

    The cap keeps a margin (:data:`WALL_MARGIN_SECONDS` plus 2%) for the scorer to write its partial
    result before the worker's hard limit would stop it without one.
    """
    set_images = 0 if SETS in done else sum(int(d.labels.shape[0]) for d in datasets)
    stages_left = [key for key in stage_keys(spec) if key != SETS and key not in done]
    work = work_for(spec, set_images, threat_models_left=len(stages_left),
                    detector_left=bool(stages_left) and spec.task == "detector")
    cap = None
    limits = getattr(host, "limits", None)
    if limits is not None:
        cap = max(limits.wall_seconds * 0.98 - WALL_MARGIN_SECONDS, 1.0)
    return derive_budget(work, contract.probe_seconds, contract.probe_batch_size, contract.seconds_per_batch,
                         spec.batch_size, cap_seconds=cap)


def _score(spec: JobSpec, scoring: TaskScoring, attacked_points: int | None, model: RemoteModel,
           device: torch.device, progress: ProgressCallback, provenance: dict[str, Any], order_rng: torch.Generator,
           secret: int, datasets: list[EvaluationSetData], done: dict[str, Checkpoint],
           keep: CheckpointCallback) -> JobResult:
    """Every evaluation set through the model in a secret order, the batch checks, the scores, then the attacks.

    Stages in ``done`` are taken from the earlier run; every stage run here goes to ``keep`` as it ends.
    """
    total_images = sum(int(d.labels.shape[0]) for d in datasets)
    sets_done = done.get(SETS)
    # An attacked point costs hundreds of passes: weigh the attack stage accordingly.
    attack_weight = [] if attacked_points is None else [_ATTACK_WEIGHT * min(attacked_points, total_images)]
    set_weights = [0 if sets_done else int(d.labels.shape[0]) for d in datasets]
    stages = StagedProgress(progress, [_SETUP_WEIGHT * total_images] + set_weights + attack_weight)
    stages.report(0, 1.0, "model checked")
    rtol = CONSISTENCY_RTOL_MIXED if provenance["mixed_precision"]["clean"] else CONSISTENCY_RTOL
    model.tolerance = rtol
    # From here on the model process sees hidden images: none of its own words are kept any more.
    model.hidden = True

    outputs_by_set: list[torch.Tensor] | None = None
    if sets_done is None:
        outputs_by_set, sets_done = _score_sets(spec, scoring, model, device, stages, order_rng, datasets, rtol)
        keep(sets_done)
    provenance.update(sets_done.provenance)
    result = JobResult(job_id=spec.job_id, ok=True, suite_version=spec.suite_version, seed=spec.seed,
                       metrics=list(sets_done.metrics), per_class=dict(sets_done.per_class))
    if attacked_points is None:
        return result
    attack_stage = len(datasets) + 1

    def on_attack(fraction: float, stage: str) -> None:
        stages.report(attack_stage, fraction, stage)

    try:
        attack_metrics, provenance[scoring.attack_record] = scoring.attack(
            model, spec, datasets, outputs_by_set, device, on_attack, secret, done, keep
        )
    except ModelRaised as exc:
        raise EvaluationError("model_error", str(exc)) from None
    result.metrics.extend(attack_metrics)
    return result


def _score_sets(spec: JobSpec, scoring: TaskScoring, model: RemoteModel, device: torch.device, stages: StagedProgress,
                order_rng: torch.Generator, datasets: list[EvaluationSetData],
                rtol: float) -> tuple[list[torch.Tensor], Checkpoint]:
    """The sets' stage: every set fed in a secret order with its batch checks, then scored."""
    outputs_by_set: list[torch.Tensor] = []
    checks: dict[str, Any] = {}
    check_seconds = 0.0
    sets_started = time.perf_counter()
    for index, (set_spec, data) in enumerate(zip(spec.evaluation_sets, datasets, strict=True), start=1):
        count = int(data.labels.shape[0])
        stage = f"evaluating {set_spec.name} ({set_spec.role})"

        def on_batch(done: int, index: int = index, count: int = count, stage: str = stage) -> None:
            stages.report(index, done / count, stage)

        feed, chosen = feed_with_repeats(count, spec.batch_size, CONSISTENCY_SAMPLE, order_rng)
        fed = predict(model, data.images, spec.input, spec.batch_size, device, on_batch, feed, fed_order=True)
        outputs = torch.empty((count, *fed.shape[1:]), dtype=fed.dtype)
        outputs[feed[:count]] = fed[:count]
        check_finite(fed, set_spec.name)
        checking = time.perf_counter()
        checks[set_spec.name] = check_batch_consistency(
            model, data.images, outputs, spec.input, spec.batch_size, device, order_rng, rtol=rtol,
            set_name=set_spec.name, repeated=(chosen, fed[count:]) if len(chosen) else None,
        ).to_dict()
        check_seconds += time.perf_counter() - checking
        outputs_by_set.append(outputs)
    scores = scoring.score_sets(spec, datasets, outputs_by_set)
    provenance = {
        "images": sum(int(d.labels.shape[0]) for d in datasets), "batch_checks": checks,
        "batch_check_seconds": round(check_seconds, 3),
        # The sets' own time (their checks included): "images_per_second" divides by the whole job's, attacks too.
        "sets_seconds": round(time.perf_counter() - sets_started, 3),
    }
    return outputs_by_set, Checkpoint(SETS, scores.metrics, scores.per_class, provenance)
