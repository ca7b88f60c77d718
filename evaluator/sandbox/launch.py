"""Runs one JobSpec across two processes, with the submitted model alone in bubblewrap.

The trusted parent (a Celery worker) never loads a submission itself. It starts the scorer,
``python -m evaluator run -``, as an ordinary child with no inherited environment (so no
database or broker credentials), resource limits and a wall-clock timeout; it passes the
JobSpec on stdin and reads back JSON lines only. The scorer holds the evaluation sets and
computes every number, and starts the model process (:mod:`evaluator.remote`) under
bubblewrap (:mod:`evaluator.sandbox.bubblewrap`): no network, read-only views of the artifact
(the only job file it can see) and the Python installation, a private size-limited /tmp. The
model process receives image batches and returns outputs and gradients, nothing else: it never
sees a label, an evaluation-set file, the generator or the result.

Besides the rlimits (:mod:`evaluator.sandbox.limits`), the parent watches the job's process
tree and stops a job that exceeds its limits (:mod:`evaluator.sandbox.supervision`).

Without bubblewrap the model still runs in a process of its own with a scrubbed environment and
resource limits, but it shares the host's network and file system: that mode must be allowed
explicitly by the operator (``allow_unsandboxed``), and the JobResult's provenance says which mode
ran.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from evaluator.checkpoints import (
    Checkpoint,
    CheckpointCallback,
    ignore_checkpoint,
    incomplete_result,
    resumed_stages,
)
from evaluator.progress import ProgressCallback, ignore_progress
from evaluator.sandbox import availability
from evaluator.sandbox.availability import SandboxUnavailable, bubblewrap_path, check_sandbox_available
from evaluator.sandbox.environment import child_env, project_root
from evaluator.sandbox.exit_reasons import describe_exit, describe_stop
from evaluator.sandbox.identity import IdentityUnavailable, claim_identity, wait_until_gone
from evaluator.sandbox.limits import SandboxLimits
from evaluator.sandbox.supervision import ChildExit, supervise
from evaluator.spec import JobResult, JobSpec

if TYPE_CHECKING:
    from evaluator.adversary.spec import AttackJob


def _parse_result(line: str, progress: ProgressCallback,
                  on_checkpoint: CheckpointCallback = ignore_checkpoint) -> JobResult | None:
    """One JSON line from the child: reports progress, hands on a finished stage, returns the JobResult if it is one."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    if event.get("event") == "progress":
        try:
            fraction = float(event.get("fraction", 0.0))
        except (TypeError, ValueError):  # a malformed event is ignored; the callback's own errors are not
            return None
        progress(fraction, str(event.get("stage", "")))
        return None
    if event.get("event") == "checkpoint" and isinstance(event.get("checkpoint"), dict):
        try:
            checkpoint = Checkpoint.from_dict(event["checkpoint"])
        except (KeyError, TypeError, ValueError):  # a malformed checkpoint is none
            return None
        on_checkpoint(checkpoint)
        return None
    if event.get("event") == "result" and isinstance(event.get("result"), dict):
        try:
            return JobResult.from_dict(event["result"])
        except (TypeError, ValueError):  # a malformed result is no result
            return None
    return None


def scorer_command() -> list[str]:
    """The scorer's command line: this Python running ``python -m evaluator run -`` (the job on stdin).

    The scorer runs from the worker's own interpreter and installation, so it evaluates with
    exactly the evaluator and torch the worker was deployed with.
    """
    return [sys.executable, "-m", "evaluator", "run", "-"]


def run_sandboxed(
    spec: JobSpec,
    progress: ProgressCallback = ignore_progress,
    limits: SandboxLimits | None = None,
    allow_unsandboxed: bool = False,
    should_cancel: Callable[[], bool] | None = None,
    resume: dict[str, Any] | None = None,
    on_checkpoint: CheckpointCallback = ignore_checkpoint,
) -> JobResult:
    """Evaluate ``spec`` in the scorer process (the model in its sandbox) and return its JobResult.

    Never raises for model faults. Every stage the scorer finishes goes to ``on_checkpoint`` as it
    finishes; ``resume`` (stages an earlier run of the same job finished) is passed to the scorer,
    which skips them. A scorer stopped at the wall-clock limit (which its own budget, capped below
    that limit, should have prevented) still keeps the stages it reported: the result is an
    ``out_of_time`` one with their metrics. ``should_cancel`` is polled about once a second; when it
    returns True the job's processes are killed and a ``cancelled`` JobResult comes back. Raises
    :class:`SandboxUnavailable` when no sandbox can be set up and the unsandboxed mode is not
    allowed.
    """
    limits = limits or SandboxLimits()
    finished: dict[str, Checkpoint] = {}

    def keep(checkpoint: Checkpoint) -> None:
        finished[checkpoint.stage] = checkpoint
        on_checkpoint(checkpoint)

    found, outcome, mode = _run_scorer({"spec": json.loads(spec.to_json()), "resume": resume}, progress, limits,
                                       allow_unsandboxed, should_cancel, keep)
    if outcome.stopped == "timeout":
        kept = [*resumed_stages(spec, resume).values(), *finished.values()]
        found = incomplete_result(spec, list({c.stage: c for c in kept}.values()), "",
                                  describe_stop("timeout", limits)[1], {})
        outcome = replace(outcome, stopped="")  # settled here: the stages it reported are its result
    return _settle(found, outcome, mode, spec, limits)


def run_attack_sandboxed(
    job: AttackJob,
    progress: ProgressCallback = ignore_progress,
    limits: SandboxLimits | None = None,
    allow_unsandboxed: bool = False,
    should_cancel: Callable[[], bool] | None = None,
) -> JobResult:
    """Run an attack job (:mod:`evaluator.adversary.job`) in the scorer process, as :func:`run_sandboxed`
    runs a model's evaluation: the scorer starts the target model's sandbox and the attack's own."""
    limits = limits or SandboxLimits()
    found, outcome, mode = _run_scorer({"attack_job": json.loads(job.to_json())}, progress, limits,
                                       allow_unsandboxed, should_cancel, ignore_checkpoint)
    return _settle(found, outcome, mode, replace(job.target, job_id=job.job_id), limits)


def _settle(found: JobResult | None, outcome: ChildExit, mode: str, spec: JobSpec,
            limits: SandboxLimits) -> JobResult:
    """The job's result from what the scorer printed and how it ended: a stop or a silent exit is a failure
    in the sandbox's words, a result for another job an internal one; the sandbox's own numbers are added."""
    result = found
    if outcome.stopped:
        result = JobResult.failure(spec, *describe_stop(outcome.stopped, limits))
    elif result is None:
        result = JobResult.failure(spec, *describe_exit(outcome.returncode, limits, outcome.stderr_tail, False))
    if result.job_id != spec.job_id:
        result = JobResult.failure(spec, "internal", "The evaluation returned a result for another job.")
    result.provenance.update(
        sandbox=mode, wall_seconds=outcome.wall_seconds, peak_tasks=outcome.peak.tasks,
        peak_memory_bytes=outcome.peak.memory_bytes,
    )
    return result


def _run_scorer(payload: dict[str, Any], progress: ProgressCallback, limits: SandboxLimits, allow_unsandboxed: bool,
                should_cancel: Callable[[], bool] | None,
                keep: CheckpointCallback) -> tuple[JobResult | None, ChildExit, str]:
    """The scorer process for one job (``payload`` is what it reads on stdin, the host part added here):
    its result line, how it ended, and the sandbox mode."""
    use_bwrap = bubblewrap_path() is not None
    if use_bwrap:
        check_sandbox_available()
    elif not allow_unsandboxed:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, and unsandboxed evaluation is not allowed on this worker"
        )
    mode = "bubblewrap" if use_bwrap else "unsandboxed"
    found: list[JobResult] = []

    def on_line(line: str) -> None:
        result = _parse_result(line, progress, keep)
        if result is not None and not found:
            found.append(result)

    host: dict[str, Any] = {"sandbox": "bubblewrap" if use_bwrap else "process", "limits": asdict(limits)}
    cwd = tempfile.mkdtemp(prefix="arena-job-")
    env = child_env(limits, str(project_root()))
    env["HOME"] = cwd
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, cwd, True)
        if use_bwrap and availability.runs_as_root():
            # The worker holds the job's sandbox uid, so that it is released only once nothing of the job
            # is left, even when the scorer itself was killed.
            try:
                identity = stack.enter_context(claim_identity())
            except IdentityUnavailable as exc:
                raise SandboxUnavailable(str(exc)) from None
            stack.callback(wait_until_gone, identity.uid)
            host["uid"] = identity.uid
        outcome = supervise(
            scorer_command(), stdin_text=json.dumps({**payload, "host": host}), limits=limits, on_stdout_line=on_line,
            env=env, cwd=cwd, should_cancel=should_cancel,
        )
    return (found[0] if found else None), outcome, mode
