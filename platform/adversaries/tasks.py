"""The attack task: one attack against one model through the sandboxed evaluator, recorded per threat model."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from adversaries import dispatch
from adversaries.checks import ENTRY_FILE, PACKAGE_LIMITS, is_package
from adversaries.models import AttackRun
from adversaries.signals import attack_scores_changed
from adversaries.targets import lowered_metric
from evaluator.adversary.spec import AttackJob, AttackSource
from evaluator.data.archives import extract_bundle
from evaluator.sandbox import SandboxUnavailable
from evaluator.sandbox.launch import run_attack_sandboxed
from evaluator.spec import JobResult
from submissions.artifacts import ArtifactUnavailable, local_artifact
from submissions.failures import failure_message
from submissions.job_spec import build_job_spec
from submissions.models import Submission
from submissions.tasks import evaluation_limits, platform_failure

logger = logging.getLogger(__name__)

#: Seconds an attack run waits before looking again when model evaluations are queued.
STEP_ASIDE_SECONDS = 30.0


def _evaluations_waiting() -> bool:
    return Submission.objects.filter(state=Submission.State.QUEUED).exists()


@shared_task(name=dispatch.RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_attack(self: Task, run_id: int) -> str:
    """Run one attack against one model; returns what became of the run."""
    run = AttackRun.objects.select_related("attack", "submission__track").filter(pk=run_id).first()
    if run is None:
        return "missing"
    if run.state in (AttackRun.State.FINISHED, AttackRun.State.FAILED):
        return run.state
    # Lower priority than model evaluations: while one waits, this run steps aside (never in eager mode,
    # where the caller asked for this run now).
    if not settings.CELERY_TASK_ALWAYS_EAGER and _evaluations_waiting():
        dispatch.enqueue(run, countdown=STEP_ASIDE_SECONDS)
        return "deferred"
    attempt = run.claim()
    if attempt is None:
        return run.state
    attack, submission = run.attack, run.submission
    try:
        with local_artifact(submission) as artifact_path, _local_source(run) as source_path:
            job = AttackJob(
                job_id=str(uuid.uuid4()), attack=AttackSource(source_path, attack.source_sha256, attack.name),
                target=build_job_spec(submission, artifact_path), passes_per_point=attack.passes_per_point,
                seconds_per_threat=settings.ARENA_ATTACK_SECONDS_PER_THREAT,
            )
            result = run_attack_sandboxed(job, limits=evaluation_limits(),
                                          allow_unsandboxed=settings.ARENA_ALLOW_UNSANDBOXED)
    except ArtifactUnavailable as exc:
        result = platform_failure(run.submission, "internal", f"A file could not be fetched: {exc}.")
    except SandboxUnavailable as exc:
        result = platform_failure(run.submission, "sandbox_unavailable", str(exc))
    except Exception as exc:  # the platform's own fault: recorded, never left running
        logger.exception("attack run %s failed inside the platform", run.pk)
        result = platform_failure(run.submission, "internal", f"{type(exc).__name__}: {exc}")
    return record(run, attempt, result)


class _local_source:  # noqa: N801 - used as a context manager like local_artifact
    """The attack as local files (the media storage may be an object store): its source file, or its package
    unpacked (with the checks it passed at upload) into a folder whose ``attack.py`` is the entry point."""

    def __init__(self, run: AttackRun) -> None:
        self.run = run
        self.folder = ""

    def __enter__(self) -> str:
        attack = self.run.attack
        with attack.source.open("rb") as source:
            raw = source.read()
        # A truncated or replaced object must never run under this attack's name (as local_artifact for models).
        if hashlib.sha256(raw).hexdigest() != attack.source_sha256:
            raise ArtifactUnavailable(f"the stored attack {attack.source.name!r} does not match the sha256 recorded "
                                      "at upload")
        self.folder = tempfile.mkdtemp(prefix="arena-attack-")
        os.chmod(self.folder, 0o755)  # the sandbox uid reads what is bound in from here
        if not is_package(raw):
            path = os.path.join(self.folder, ENTRY_FILE)
            with open(path, "wb") as out:
                out.write(raw)
            os.chmod(path, 0o644)
            return path
        archive = os.path.join(self.folder, "attack.zip")
        with open(archive, "wb") as out:
            out.write(raw)
        root = extract_bundle(Path(archive), Path(self.folder) / "package", PACKAGE_LIMITS, marker=ENTRY_FILE)
        return str(root)

    def __exit__(self, *exc: object) -> None:
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def record(run: AttackRun, attempt: int, result: JobResult) -> str:
    """Write the run's outcome if ``attempt`` still owns it (a duplicate delivery that finished late writes nothing).

    Per threat label, the number the attack lowers: robust accuracy on a classifier track, the AUC under
    attack on a detector track (the other detector numbers stay in the result only).
    """
    prefix = f"{lowered_metric(run.submission.track)}@"
    robust = {m.metric.removeprefix(prefix): {"value": m.value, "num_examples": m.num_examples,
                                              "ci_low": m.ci_low, "ci_high": m.ci_high}
              for m in result.metrics if m.metric.startswith(prefix)}
    state = AttackRun.State.FINISHED if result.ok else AttackRun.State.FAILED
    written = AttackRun.objects.filter(pk=run.pk, state=AttackRun.State.RUNNING, attempts=attempt).update(
        state=state, robust=robust, provenance=result.provenance, failure_code=result.error_code,
        failure_reason=failure_message(result.error_code, result.error) if not result.ok else "",
        finished_at=timezone.now(),
    )
    if not written:
        return "superseded"
    # The leaderboards show the lowest robust accuracy any attack found: their cached tables are stale now.
    attack_scores_changed.send(sender=AttackRun, track_id=run.submission.track_id)
    return state
