"""An evaluation that runs out of time (issue 19): its finished stages are kept and shown, it is not charged,
and its owner's resume runs only the rest.

Real sandboxed evaluations of the shared LeNet-5 on a digits track with two threat models; the worker's
wall-clock limit is set low enough that the attacks cannot finish in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files import File
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import QuotaEntry
from submissions.models import Result, StageCheckpoint, Submission
from submissions.services import create_submission
from submissions.tasks import evaluate_submission

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

#: The scorer's budget is capped at 98% of the limit minus 30 s: about 21 s for the whole job, enough for
#: the model to start and the 2,000 clean images even on a loaded machine (about 5 s on a quiet one), not
#: for the second threat model (see ``attacked_track``).
SHORT_WALL_SECONDS = 52.0


@pytest.fixture
def attacked_track(digits_track):
    """Two threat models; the second, L2 0.1, leaves the LeNet-5 almost every point, so each of its stages spends
    its whole budget (Square: 5,000 queries a point). That is work, not a speed: about 40 s on a quiet 2-core
    machine on which the whole job fits in the short limit at L2 2.0 (where most points break early), and the
    first slice's ~21 s cannot hold it on a machine twice as fast."""
    digits_track.threat_models = [{"norm": "Linf", "eps": 0.3, "label": "Linf-0.3"},
                                  {"norm": "L2", "eps": 0.1, "label": "L2-0.1"}]
    digits_track.attack_points, digits_track.reliability_points = 16, 8
    digits_track.save()
    return digits_track


def _submit(user, track, path: Path) -> Submission:
    with path.open("rb") as handle:
        return create_submission(user, track, File(handle, name=path.name), name="LeNet-5",
                                 zoo_architecture="mnist_lenet5")


def test_a_job_cut_by_the_attempt_limit_continues_then_stays_incomplete_until_its_owner_resumes_it(
        attacked_track, researcher, lenet5_safetensors, settings, monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr("submissions.dispatch.enqueue", lambda submission: sent.append(submission.pk))
    submission = _submit(researcher, attacked_track, lenet5_safetensors)
    sent.clear()
    # Slice 1: the per-attempt limit cuts the job's budget; it finished stages, so it goes on in a new attempt.
    settings.ARENA_EVAL_WALL_SECONDS = SHORT_WALL_SECONDS
    assert evaluate_submission(submission.pk) == "queued" and sent == [submission.pk]
    submission.refresh_from_db()
    run = submission.runs.get()
    assert not run.ok and run.error_code == "out_of_time" and run.provenance["time_budget"]["capped_at"]
    first = run.provenance["incomplete"]["finished"]
    assert "sets" in first and len(first) < 3
    kept = dict(Result.objects.filter(submission=submission).values_list("metric", "value"))
    assert "accuracy" in kept and not any(m.startswith("robust_accuracy@L2-0.1") for m in kept)
    assert set(StageCheckpoint.objects.filter(submission=submission).values_list("stage", flat=True)) == set(first)
    # Not charged: the budget is the platform's estimate of its own work.
    assert QuotaEntry.objects.filter(submission=submission, kind=QuotaEntry.Kind.REFUND).count() == 1

    # Slice 2: a limit too short to finish anything more; no progress, so it stays incomplete.
    sent.clear()
    settings.ARENA_EVAL_WALL_SECONDS = 31.0
    assert evaluate_submission(submission.pk) == "incomplete" and sent == []
    submission.refresh_from_db()
    run = submission.runs.get()
    assert run.provenance["incomplete"]["finished"] == first and run.provenance["resumed_stages"] == first
    assert submission.failure_code == "out_of_time" and "time budget" in submission.failure_reason
    assert dict(Result.objects.filter(submission=submission).values_list("metric", "value")) == kept
    # Not on the leaderboard, but its page shows the finished stages, where it stopped, and a way on.
    assert not Submission.objects.filter(track=attacked_track, state=Submission.State.FINISHED).exists()
    owner = Client()
    owner.force_login(researcher)
    page = owner.get(submission.get_absolute_url()).content.decode()
    assert "Incomplete: stopped while" in page and "the evaluation sets" in page
    assert "Resume evaluation" in page and "mnist-hidden" in page
    assert "Resume evaluation" not in Client().get(submission.get_absolute_url()).content.decode()

    api = APIClient()
    api.force_authenticate(researcher)
    response = api.post(f"/api/v1/submissions/{submission.public_id}/resume/")
    assert response.status_code == 200 and response.json()["state"] == "queued" and sent == [submission.pk]
    assert api.post(f"/api/v1/submissions/{submission.public_id}/resume/").status_code == 409
    settings.ARENA_EVAL_WALL_SECONDS = 3600.0
    assert evaluate_submission(submission.pk) == "finished"
    submission.refresh_from_db()
    run = submission.runs.get()
    assert run.ok and run.provenance["resumed_stages"] == first
    final = dict(Result.objects.filter(submission=submission).values_list("metric", "value"))
    assert {"robust_accuracy@Linf-0.3", "robust_accuracy@L2-0.1", "attacked_clean_accuracy"} <= set(final)
    # The resumed stages' numbers are the kept ones.
    assert {m: final[m] for m in kept} == kept
    assert not StageCheckpoint.objects.filter(submission=submission).exists()
    # Still one charge and one refund: neither the slices nor the resume cost or refund anything more.
    assert QuotaEntry.objects.filter(submission=submission).count() == 2


@pytest.mark.parametrize(
    ("capped_at", "resumed", "finished", "goes_on"),
    [
        (3000.0, [], ["sets"], True),  # cut by the attempt limit, and it got further: next slice
        (3000.0, ["sets"], ["sets"], False),  # cut, but this slice finished nothing: its owner decides
        (None, [], ["sets"], False),  # its own budget ran out: the platform's estimate was wrong, owner decides
    ],
)
def test_which_incomplete_evaluations_continue_by_themselves(digits_track, researcher, capped_at, resumed, finished,
                                                             goes_on):
    from evaluator.spec import JobResult
    from submissions.arrival import continues

    submission = Submission(track=digits_track, owner=researcher, name="m", artifact_format="pt2",
                            state=Submission.State.INCOMPLETE, artifact="artifacts/m.pt2")
    result = JobResult("j", False, "v", 0, error_code="out_of_time", provenance={
        "time_budget": {"capped_at": capped_at}, "incomplete": {"finished": finished}, "resumed_stages": resumed})
    assert continues(submission, result) is goes_on
    submission.artifact = ""
    assert continues(submission, result) is False  # nothing to evaluate any more
