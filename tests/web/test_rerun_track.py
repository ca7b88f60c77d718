"""``manage.py rerun_track``: rotating a track's suite version queues its finished submissions again, once."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command

from benchmarks.models import Benchmark, EvaluationSet, Track
from evaluator.spec import JobResult, MetricValue
from submissions.arrival import record_result
from submissions.job_spec import build_job_spec
from submissions.management.commands.rerun_track import bumped
from submissions.models import Submission

pytestmark = pytest.mark.django_db


@pytest.fixture
def track(arena_dirs) -> Track:
    benchmark = Benchmark.objects.create(slug="b", name="B")
    track = Track.objects.create(benchmark=benchmark, slug="t", name="T", task_kind="classifier", input_channels=1,
                                 input_height=28, input_width=28, suite_version="clean-1")
    EvaluationSet.objects.create(track=track, name="hidden", role="clean", relative_path="x.safetensors",
                                 sha256="0" * 64, num_examples=10)
    return track


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """Stands in for the broker: the ids of the submissions sent to the queue, in order."""
    ids: list[int] = []
    monkeypatch.setattr("submissions.dispatch.enqueue", lambda submission: ids.append(submission.pk))
    return ids


@pytest.fixture
def rerun_track(django_capture_on_commit_callbacks):
    """``manage.py rerun_track ARGS``, its on-commit sends run (the test's transaction never commits); its output."""

    def run(*args: str) -> str:
        out = _Sink()
        with django_capture_on_commit_callbacks(execute=True):
            call_command("rerun_track", *args, stdout=out)
        return out.text

    return run


def _submission(track, owner, name, **kw) -> Submission:
    s = Submission(track=track, owner=owner, name=name, artifact_format="pt2", artifact_sha256="0" * 64, **kw)
    s.artifact.save("x", ContentFile(b"PK"), save=False)
    s.save()
    return s


def _evaluate(submission, ok: bool = True) -> Submission:
    """Run the submission to its end under the track's current suite version, as a worker would."""
    submission.transition("running")
    track = Track.objects.get(pk=submission.track_id)
    result = JobResult(job_id=str(submission.public_id), ok=ok, suite_version=track.suite_version,
                             seed=track.seed, metrics=[MetricValue("hidden", "accuracy", 0.9, 10)] if ok else [],
                             error_code="" if ok else "non_finite_output", error="" if ok else "NaN")
    record_result(submission, result)
    submission.refresh_from_db()
    return submission


def _states(*submissions) -> list[str]:
    return [Submission.objects.get(pk=s.pk).state for s in submissions]


def test_bumped_versions():
    assert bumped("clean-1") == "clean-2"
    assert bumped("demo-9") == "demo-10"
    assert bumped("v2.3") == "v2.4"
    assert bumped("attacks") == "attacks-2"


def test_bump_requeues_finished_submissions_once_baselines_first(track, researcher, sent, rerun_track):
    model = _evaluate(_submission(track, researcher, "model"))
    baseline = _evaluate(_submission(track, researcher, "baseline", is_baseline=True))
    private = _evaluate(_submission(track, researcher, "private", is_public=False))
    failed = _evaluate(_submission(track, researcher, "failed"), ok=False)
    waiting = _submission(track, researcher, "waiting")
    assert _states(model, baseline, private, failed, waiting) == ["finished"] * 3 + ["failed", "queued"]

    out = rerun_track("t", "--bump")
    assert Track.objects.get(pk=track.pk).suite_version == "clean-2"
    assert sent == [baseline.pk, model.pk, private.pk]
    assert _states(model, baseline, private, failed, waiting) == ["queued"] * 3 + ["failed", "queued"]
    assert "clean-1 -> clean-2" in out and "3 submission(s) queued under suite clean-2" in out

    # Evaluated under the new version, a submission is not queued again; one finished under the old
    # version (it was running during the bump) is.
    _evaluate(Submission.objects.get(pk=model.pk))
    late = _evaluate(_submission(track, researcher, "late"))
    late.runs.update(suite_version="clean-1")
    sent.clear()
    rerun_track("t")
    assert sent == [late.pk]
    assert Track.objects.get(pk=track.pk).suite_version == "clean-2"

    sent.clear()
    rerun_track("t", "--include-failed")
    assert sent == [failed.pk]


def test_dry_run_and_explicit_version(track, researcher, sent, rerun_track):
    model = _evaluate(_submission(track, researcher, "model"))
    assert "would queue" in rerun_track("t", "--suite-version", "clean-7", "--dry-run") and sent == []
    assert Track.objects.get(pk=track.pk).suite_version == "clean-1" and _states(model) == ["finished"]

    rerun_track("t", "--suite-version", "clean-7")
    assert Track.objects.get(pk=track.pk).suite_version == "clean-7" and sent == [model.pk]

    # Same version again, nothing new: nothing is queued.
    sent.clear()
    rerun_track("t", "--suite-version", "clean-7")
    assert sent == []


def test_a_new_attack_suite_rescores_and_keeps_the_old_numbers(track, researcher, sent, rerun_track):
    """Moving a track to another attack suite queues its submissions under a new suite version; the runs and
    results of the old version stay stored with their numbers and provenance."""
    Track.objects.filter(pk=track.pk).update(attack_suite="attacks-1")
    model = _evaluate(_submission(track, researcher, "model"))
    old_run = model.runs.get()
    old_result = model.results.get()
    assert (old_run.suite_version, old_result.suite_version, old_result.value) == ("clean-1", "clean-1", 0.9)

    with pytest.raises(CommandError, match="needs a new suite version"):
        rerun_track("t", "--attack-suite", "attacks-2")
    assert Track.objects.get(pk=track.pk).attack_suite == "attacks-1" and sent == []

    out = rerun_track("t", "--bump", "--attack-suite", "attacks-2")
    track.refresh_from_db()
    assert (track.suite_version, track.attack_suite) == ("clean-2", "attacks-2")
    assert "attack suite attacks-1 -> attacks-2" in out and sent == [model.pk]

    # The re-run's job is built for the new suite, and arrives beside the old run, not over it.
    submission = Submission.objects.get(pk=model.pk)
    submission.transition("running")
    record_result(submission, JobResult(job_id=str(submission.public_id), ok=True, suite_version="clean-2",
                                        seed=track.seed, metrics=[MetricValue("hidden", "accuracy", 0.8, 10)]))
    runs = dict(submission.runs.values_list("suite_version", "ok"))
    values = dict(submission.results.values_list("suite_version", "value"))
    assert runs == {"clean-1": True, "clean-2": True} and values == {"clean-1": 0.9, "clean-2": 0.8}
    old_run.refresh_from_db()
    assert old_run.provenance == model.runs.get(suite_version="clean-1").provenance


def test_the_job_spec_carries_the_track_attack_suite(track, researcher):
    Track.objects.filter(pk=track.pk).update(attack_suite="attacks-1")
    spec = build_job_spec(_submission(Track.objects.get(pk=track.pk), researcher, "m"), "/nowhere/model.pt2")
    assert spec.attack_suite == "attacks-1"


def test_an_unknown_attack_suite_is_refused(track):
    track.attack_suite = "attacks-99"
    with pytest.raises(ValidationError, match="Unknown attack suite 'attacks-99'"):
        track.full_clean()
    with pytest.raises(CommandError):
        call_command("rerun_track", "t", "--bump", "--attack-suite", "attacks-99")


def test_unknown_track_is_an_error(db):
    with pytest.raises(CommandError, match="No track"):
        call_command("rerun_track", "nope")


class _Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass
