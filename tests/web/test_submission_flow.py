"""A submission from upload to result, through the Celery task and the sandboxed evaluator.

The task function is called in-process here (the broker is exercised in test_worker_integration);
the evaluation itself runs in a real child process under bubblewrap.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.files import File

from submissions.models import Result, Submission
from submissions.services import create_submission
from submissions.tasks import evaluate_submission

pytestmark = pytest.mark.django_db(transaction=True)


def _submit(user, track, path: Path, **meta) -> Submission:
    with path.open("rb") as handle:
        return create_submission(user, track, File(handle, name=path.name), name=meta.pop("name", path.stem), **meta)


def _reference_accuracy(weights: Path, mnist_test) -> float:
    """LeNet-5 accuracy on the track's 2,000 hidden images, from a plain loop outside the platform."""
    from safetensors.torch import load_file

    from evaluator.models.zoo import build_model

    model = build_model("mnist_lenet5")
    model.load_state_dict(load_file(weights))
    model.eval()
    images, labels = mnist_test
    x = torch.from_numpy(images[-2000:]).float() / 255
    with torch.no_grad():
        predictions = model(x).argmax(1).numpy()
    return float((predictions == labels[-2000:]).mean())


def test_lenet5_safetensors_is_scored_like_an_independent_loop(
    digits_track, researcher, lenet5_safetensors, mnist_test
):
    submission = _submit(researcher, digits_track, lenet5_safetensors, zoo_architecture="mnist_lenet5")
    assert submission.artifact_format == "safetensors"
    evaluate_submission(submission.pk)
    submission.refresh_from_db()
    assert submission.state == "finished", submission.failure_reason
    assert submission.progress == 1.0 and submission.started_at and submission.finished_at
    result = Result.objects.get(submission=submission, metric="accuracy")
    assert result.num_examples == 2000
    assert result.value == pytest.approx(_reference_accuracy(lenet5_safetensors, mnist_test), abs=1e-9)
    assert result.ci_low < result.value < result.ci_high
    assert result.suite_version == digits_track.suite_version and result.seed == digits_track.seed
    run = submission.runs.get()
    assert run.provenance["sandbox"] == "bubblewrap"
    assert run.provenance["stdlib_platform_module"].endswith("/lib/python3.11/platform.py")
    assert set(run.per_class["mnist-hidden"]) == {str(k) for k in range(10)}


def test_pt2_upload_gives_the_same_accuracy(digits_track, researcher, lenet5_pt2, lenet5_safetensors, mnist_test):
    submission = _submit(researcher, digits_track, lenet5_pt2)
    assert submission.artifact_format == "pt2"
    evaluate_submission(submission.pk)
    submission.refresh_from_db()
    assert submission.state == "finished", submission.failure_reason
    value = Result.objects.get(submission=submission, metric="accuracy").value
    assert value == pytest.approx(_reference_accuracy(lenet5_safetensors, mnist_test), abs=1e-9)


def test_bad_uploads_fail_with_reasons_and_do_not_disturb_the_queue(
    digits_track, researcher, lenet5_safetensors, tmp_path, bad_models
):
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    marker = tmp_path / "pwned"
    pickled = tmp_path / "model.pt"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    pickled.write_bytes(pickle.dumps(Evil()))
    state_dict = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(3)}, state_dict)

    cases = {
        "corrupt": (_submit(researcher, digits_track, corrupt), {"corrupt_artifact", "unsupported_format"}),
        "pickle": (_submit(researcher, digits_track, pickled, artifact_format="pt2"), {"unsafe_format"}),
        "torch.save": (_submit(researcher, digits_track, state_dict, artifact_format="pt2"), {"unsafe_format"}),
        "wrong input": (_submit(researcher, digits_track, bad_models["wrong_input"]),
                        {"wrong_input_shape"}),
        "nan": (_submit(researcher, digits_track, bad_models["nan"]), {"non_finite_output"}),
    }
    good = _submit(researcher, digits_track, lenet5_safetensors, zoo_architecture="mnist_lenet5")
    for submission, _ in cases.values():
        evaluate_submission(submission.pk)
    evaluate_submission(good.pk)

    for label, (submission, codes) in cases.items():
        submission.refresh_from_db()
        assert submission.state == "failed", label
        assert submission.failure_code in codes, (label, submission.failure_code, submission.failure_reason)
        assert len(submission.failure_reason) > 30, label  # a sentence, not a code
        assert not submission.results.exists(), label
    assert not marker.exists(), "a pickle was unpickled"
    good.refresh_from_db()
    assert good.state == "finished"


def test_redelivered_job_does_not_duplicate_results(digits_track, researcher, lenet5_safetensors):
    submission = _submit(researcher, digits_track, lenet5_safetensors, zoo_architecture="mnist_lenet5")
    evaluate_submission(submission.pk)
    first = list(Result.objects.filter(submission=submission).values_list("pk", "value"))
    # A late-acknowledged message delivered twice: the second delivery finds a finished job.
    assert evaluate_submission(submission.pk) == "finished"
    # A worker that died after writing: the job is still running when it comes back.
    Submission.objects.filter(pk=submission.pk).update(state="running")
    evaluate_submission(submission.pk)
    assert list(Result.objects.filter(submission=submission).values_list("pk", "value")) == first


def test_cancelled_job_is_not_evaluated(digits_track, researcher, lenet5_safetensors):
    from submissions.services import cancel

    submission = _submit(researcher, digits_track, lenet5_safetensors, zoo_architecture="mnist_lenet5")
    assert cancel(submission)
    assert evaluate_submission(submission.pk) == "cancelled"
    submission.refresh_from_db()
    assert submission.state == "cancelled" and not submission.results.exists()
