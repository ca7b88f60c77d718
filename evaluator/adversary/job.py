"""One attack job: a submitted attack against one hosted model, on the track's hidden attack points.

The platform's seam for attack submissions, as :func:`evaluator.scoring.run_job` is for models: an
:class:`AttackJob` in, a :class:`evaluator.spec.JobResult` out. The target is described by the
model's own :class:`evaluator.spec.JobSpec` (its artifact, its track's clean set, threat models,
attacked points and seed), so the attack meets exactly the points the built-in suite attacked. The
model runs in its sandbox (:mod:`evaluator.remote`), the attack in another
(:mod:`evaluator.adversary.runner`); the scorer, holding the labels, counts and checks.

On a detector track the attack meets the detector suite's points instead: its seeded subset of the
clean set's hidden fakes, under each of the suite's Linf budgets, and its images are scored against
all the hidden reals, exactly as the suite's own loss-maximising attack is (``auc@Linf-k/255``).
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from evaluator import __version__ as evaluator_version
from evaluator.adversary.runner import run_attack
from evaluator.adversary.spec import AttackJob
from evaluator.data.evalsets import EvaluationSetData, read_evaluation_set
from evaluator.detector_attacks.common import fake_scores
from evaluator.detector_attacks.suite import attacked_subset, budget_label
from evaluator.errors import EvaluationError
from evaluator.metrics.classification import accuracy_with_interval
from evaluator.metrics.detection import detection_metrics
from evaluator.models.contract import check_contract, pixels_to_unit
from evaluator.progress import ProgressCallback, ignore_progress
from evaluator.remote.client import HostOptions, host_model
from evaluator.sandbox import SandboxUnavailable
from evaluator.scoring.classifier import attack_subset
from evaluator.scoring.feeding import in_pixel_space
from evaluator.scoring.task import clean_set_index
from evaluator.spec import JobResult, JobSpec, MetricValue, ThreatModel

__all__ = ["run_attack_job"]


def run_attack_job(job: AttackJob, progress: ProgressCallback = ignore_progress,
                   host: HostOptions | None = None) -> JobResult:
    """Run the attack under each of the target track's threat models; failures come back as a JobResult.

    Metrics, on a classifier track: ``robust_accuracy@<threat label>`` on the clean set's attacked points,
    with its Clopper-Pearson interval; on a detector track: ``auc@Linf-k/255`` (and the average precision
    and TPRs the suite reports beside it, bootstrap intervals seeded as the suite's) of all hidden reals
    against the attacked fakes. The provenance keeps the attack's sha256 and, per threat model, the
    passes it spent and its seconds. An attack that breaks a promise (a wrong shape, an image out of
    the ball, NaN, over budget, a crash, a timeout) fails the job with its code and the platform's
    sentence, like a model failure.
    """
    spec = job.target
    started = time.perf_counter()
    provenance: dict[str, Any] = {"attack": {"sha256": job.attack.sha256, "name": job.attack.name},
                                  "evaluator": evaluator_version,
                                  "passes_per_point": job.passes_per_point, "threat_models": {}}
    result = JobResult(job_id=job.job_id, ok=True, suite_version=spec.suite_version, seed=spec.seed)
    host = host or HostOptions.default()
    try:
        clean = clean_set_index(spec)
        set_spec = spec.evaluation_sets[clean]
        data = read_evaluation_set(set_spec.path, set_spec.sha256 or None)
        x, y, reals, threats = _points(spec, data)
        progress(0.0, "loading the target model")
        with host_model(spec.artifact, spec.input, task=spec.task, num_classes=spec.num_classes, device=spec.device,
                        time_budget_s=spec.time_budget_s, batch_size=spec.batch_size, options=host) as hosted:
            model = hosted.model
            check_contract(model, spec.input, spec.task, spec.num_classes, spec.batch_size, spec.time_budget_s, "cpu")
            model.strict = True
            model.hidden = True
            target = in_pixel_space(model, spec.input)
            real_scores = None
            if reals is not None:
                real_scores = fake_scores(target, pixels_to_unit(reals, torch.device("cpu")),
                                          spec.batch_size).double().numpy()
            for index, threat in enumerate(threats):
                progress(index / len(threats), f"attack under {threat.label}")
                # The attack gets a sandbox uid of its own, not the model process's.
                run = run_attack(job.attack.path, target, x, y, threat, job.passes_per_point, spec.seed,
                                 options=replace(host, uid=None), seconds=job.seconds_per_threat,
                                 batch_size=spec.batch_size, task=spec.task)
                provenance["threat_models"][threat.label] = {
                    "forward_passes": run.forward_passes, "backward_passes": run.backward_passes,
                    "seconds": run.seconds, "error_code": run.error_code, "points": run.points,
                }
                if not run.ok:
                    # The operator's log keeps the attack's stderr tail; the result keeps the platform's sentence.
                    print(run.details.get("stderr_tail", ""), file=sys.stderr)
                    provenance["seconds"] = round(time.perf_counter() - started, 3)
                    return _failure(job, run.error_code, run.error, **provenance)
                if run.scores is not None and real_scores is not None:
                    result.metrics += _attacked_auc(real_scores, run.scores, set_spec.name, threat.label, spec.seed)
                    continue
                robust = int(run.robust.sum()) if run.robust is not None else 0
                value, low, high = accuracy_with_interval(robust, run.points)
                result.metrics.append(MetricValue(set_spec.name, f"robust_accuracy@{threat.label}", value,
                                                  run.points, low, high, "clopper-pearson-95"))
    except EvaluationError as exc:  # the target model failed (it passed its own evaluation: rare)
        provenance["seconds"] = round(time.perf_counter() - started, 3)
        return _failure(job, exc.code, exc.message, **provenance)
    except SandboxUnavailable as exc:
        return _failure(job, "sandbox_unavailable", str(exc), **provenance)
    except Exception as exc:  # the platform's own fault
        traceback.print_exc(file=sys.stderr)
        return _failure(job, "internal", f"The evaluator failed ({type(exc).__name__}).", **provenance)
    provenance["seconds"] = round(time.perf_counter() - started, 3)
    result.provenance = provenance
    progress(1.0, "done")
    return result


def _points(spec: JobSpec, data: EvaluationSetData
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[ThreatModel]]:
    """The attacked points in [0, 1], their labels, the hidden reals (detectors only) and the threat models.

    The same points the built-in suite attacked: a classifier's seeded subset of the clean set under the
    track's threat models; a detector's seeded subset of the clean set's fakes (labels 1) under the
    detector suite's Linf budgets, judged against every hidden real.
    """
    if spec.task != "detector":
        subset = attack_subset(int(data.labels.shape[0]), spec.attack_points, spec.seed)
        return pixels_to_unit(data.images[subset], torch.device("cpu")), data.labels[subset], None, list(
            spec.threat_models)
    config = spec.detector_attacks
    if config is None or not config.pgd_budgets:
        raise ValueError("this detector track runs no Linf attacks, so it has no threat model to attack under")
    fakes, reals = data.images[data.labels == 1], data.images[data.labels == 0]
    if fakes.shape[0] == 0 or reals.shape[0] == 0:
        raise ValueError("the detector track's clean set needs hidden reals and fakes")
    subset = attacked_subset(int(fakes.shape[0]), config.points, spec.seed)
    x = pixels_to_unit(fakes[subset], torch.device("cpu"))
    threats = [ThreatModel("Linf", float(eps), budget_label(float(eps))) for eps in config.pgd_budgets]
    return x, torch.ones(x.shape[0], dtype=torch.long), reals, threats


def _attacked_auc(real_scores: np.ndarray, attacked: torch.Tensor, set_name: str, label: str,
                  seed: int) -> list[MetricValue]:
    """The detector suite's four numbers for these attacked fakes against all hidden reals, named ``<metric>@label``.

    Seeded as the suite seeds its bootstrap, so an attack that changes nothing gives the suite's
    ``@clean-subset`` numbers exactly, intervals included.
    """
    fakes = attacked.double().numpy()
    labels = np.concatenate([np.zeros(real_scores.size, dtype=np.int64), np.ones(fakes.size, dtype=np.int64)])
    values = detection_metrics(np.concatenate([real_scores, fakes]), labels, set_name, seed=seed)
    return [replace(v, metric=f"{v.metric}@{label}") for v in values]


def _failure(job: AttackJob, code: str, message: str, **provenance: Any) -> JobResult:
    """A failed result under the attack job's own id (the target spec carries the model's job id)."""
    result = JobResult.failure(job.target, code, message, **provenance)
    result.job_id = job.job_id
    return result
