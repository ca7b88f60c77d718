"""The demo starts fast: ``build_demo --fast`` trains nothing, ``prepare_demo`` adds the rest later.

``scripts/demo`` serves pages once the fast phase is done; the detector track's transfer-attack set
(a surrogate trained, then attacked) and the baseline testbeds are prepared in the background, and
the track page says what is still being prepared, and whether the job behind it is still alive.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

import evaluator.testbed.detectors as _detectors
from benchmarks.models import Benchmark, EvaluationSet, Track
from builders.models import STALE_AFTER, Preparation
from submissions.models import Result, Submission
from tests.shared_paths import needs_shared

pytestmark = pytest.mark.django_db

_REAL = {name: getattr(_detectors, name) for name in ("train_detector", "transfer_attack")}

LIMIT = "200"
PAGE = "/tracks/mnist-gan-detector/"


def _page(path: str = PAGE) -> str:
    response = Client().get(path)
    assert response.status_code == 200
    return response.content.decode()


def _forbid(monkeypatch, *names: str) -> None:
    """Make the named trainers of the evaluator's testbed fail the test if anything calls them.

    The importer imports them when a transfer set is generated, so a patch of the module is what it calls.
    """
    for name in names:
        def trained(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} was called")
        monkeypatch.setattr(f"evaluator.testbed.detectors.{name}", trained)


@pytest.mark.slow
@needs_shared
def test_fast_phase_trains_nothing_and_the_background_adds_the_transfer_set(arena_dirs, monkeypatch, settings):
    import builders.demo as demo
    import evaluator.testbed.detectors as detectors
    from bundles.models import public_part

    settings.ARENA_LEADERBOARD_CACHE_SECONDS = 0  # the page is read several times as its notice changes
    monkeypatch.setattr("submissions.dispatch.enqueue", lambda submission: None)  # no broker here

    # Fast phase: every set but the transfer-attack one, the baseline queued, nothing trained.
    _forbid(monkeypatch, "train_detector", "transfer_attack")
    call_command("build_demo", "--fast", "--limit", LIMIT, "--track", "mnist-gan-detector")
    track = Track.objects.get(slug="mnist-gan-detector")
    names = set(track.evaluation_sets.values_list("name", flat=True))
    assert names == {"mnist-vs-gan", "mnist-vs-vae", "mnist-vs-gan-laundered"}
    part = public_part("mnist-gan-detector", "mnist-test-public")
    assert track.generator and part and (arena_dirs / "data" / part[0]).is_file()
    baseline = Submission.objects.get(track=track, is_baseline=True)
    page = _page()  # from the first page on, the track says what is still to come
    assert "Waiting: transfer-attack set" in page and "Preparing" not in page

    # The baseline was evaluated before the set existed: scored on the clean set, not on the transfer set.
    clean = track.evaluation_sets.get(name="mnist-vs-gan")
    Submission.objects.filter(pk=baseline.pk).update(state=Submission.State.FINISHED)
    Result.objects.create(submission=baseline, evaluation_set=clean, metric="auc", value=0.77, ci_low=0.75,
                          ci_high=0.79, num_examples=40, suite_version=track.suite_version, seed=track.seed)

    # A background run that dies in the attack: the step reads failed, no half-made set is registered.
    monkeypatch.setattr(detectors, "train_detector", _real("train_detector"))
    with pytest.raises(CommandError, match="transfer-set"):
        call_command("prepare_demo", "--limit", LIMIT, "--no-baselines")
    row = Preparation.objects.get(track=track, key="transfer-set")
    assert row.state == Preparation.State.FAILED and "transfer_attack was called" in row.message
    assert not track.evaluation_sets.filter(name=demo.TRANSFER_SET).exists()
    assert "Failed: transfer-attack set" in _page()

    # The real run: while the surrogate trains, the page says so; then the set is registered and the
    # baseline scored without it is queued again.
    seen = []
    train = _real("train_detector")

    def watched_train(*args, **kwargs):
        seen.append(_page())
        return train(*args, **kwargs)

    monkeypatch.setattr(detectors, "train_detector", watched_train)
    monkeypatch.setattr(detectors, "transfer_attack", _real("transfer_attack"))
    call_command("prepare_demo", "--limit", LIMIT, "--no-baselines")
    assert len(seen) == 1 and "Preparing: transfer-attack set (surrogate training), started" in seen[0]
    transfer = track.evaluation_sets.get(name=demo.TRANSFER_SET)
    assert transfer.role == "shift" and transfer.shift_kind == "adversarial" and transfer.num_examples == 40
    row.refresh_from_db()
    assert row.state == Preparation.State.DONE and row.finished_at is not None
    assert "Preparing" not in _page() and "Failed" not in _page()
    baseline.refresh_from_db()
    assert baseline.state == Submission.State.QUEUED

    # A restarted demo: the fast phase keeps the set, the background finds it current and trains nothing.
    sha = transfer.sha256
    _forbid(monkeypatch, "train_detector", "transfer_attack")
    call_command("build_demo", "--fast", "--limit", LIMIT, "--track", "mnist-gan-detector", "--no-baselines")
    call_command("prepare_demo", "--limit", LIMIT, "--no-baselines")
    assert EvaluationSet.objects.get(pk=transfer.pk).sha256 == sha
    assert Preparation.objects.get(track=track, key="transfer-set").state == Preparation.State.DONE


def _real(name: str):
    """The evaluator's own function, as it was before any patch."""
    return _REAL[name]


@pytest.fixture
def track(db) -> Track:
    benchmark = Benchmark.objects.create(slug="demo", name="Demo")
    return Track.objects.create(benchmark=benchmark, slug="mnist-digits", name="Digits", task_kind="classifier",
                                input_channels=1, input_height=28, input_width=28)


def test_the_track_page_says_what_is_prepared_and_when_a_job_stalled(track, settings):
    settings.ARENA_LEADERBOARD_CACHE_SECONDS = 0
    now = timezone.now()
    row = Preparation.objects.create(track=track, key="digit-baselines", label="digits baseline testbed",
                                     state=Preparation.State.RUNNING, step="training mlp-8", done=2, total=5,
                                     unit="baselines trained", started_at=now, updated_at=now)
    page = _page("/tracks/mnist-digits/")
    assert "Preparing: digits baseline testbed (training mlp-8), 2 of 5 baselines trained, started" in page
    assert timezone.localtime(now).strftime("%H:%M") in page

    # The job died: no heartbeat for longer than STALE_AFTER, and the page stops saying "preparing".
    Preparation.objects.filter(pk=row.pk).update(updated_at=now - STALE_AFTER - timedelta(seconds=1))
    page = _page("/tracks/mnist-digits/")
    assert "Preparing" not in page and "Stalled: digits baseline testbed" in page

    Preparation.objects.filter(pk=row.pk).update(state=Preparation.State.WAITING, updated_at=now)
    assert "Waiting: digits baseline testbed" in _page("/tracks/mnist-digits/")
    Preparation.objects.filter(pk=row.pk).update(state=Preparation.State.DONE, finished_at=now)
    assert 'id="preparation"' not in _page("/tracks/mnist-digits/")


def test_the_heartbeat_keeps_only_its_own_unfinished_rows_alive(track):
    from builders.preparation import DIGIT_BASELINES, Progress

    progress = Progress((DIGIT_BASELINES,))
    progress.plan()
    old = timezone.now() - timedelta(hours=1)
    Preparation.objects.update(updated_at=old)
    progress.beat()
    assert Preparation.objects.get().updated_at > old

    other = Progress((DIGIT_BASELINES,))
    other.plan()  # a newer run takes the row over: the first one's heartbeat no longer touches it
    Preparation.objects.update(updated_at=old)
    progress.beat()
    assert Preparation.objects.get().updated_at == old
    other.finish(DIGIT_BASELINES)
    Preparation.objects.update(updated_at=old)
    other.beat()  # a finished step is not kept "alive"
    assert Preparation.objects.get().updated_at == old
