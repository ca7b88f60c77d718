"""Fixtures for the Django side: an isolated data/media folder, a digits track, users."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from torch import nn

from tests.web.celery_workers import CeleryWorkers


@pytest.fixture(autouse=True)
def _fresh_cache():
    """API throttle counters live in the cache, which outlives a test: each test starts from zero."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def arena_dirs(tmp_path, settings):
    settings.ARENA_DATA_DIR = tmp_path / "data"
    settings.MEDIA_ROOT = tmp_path / "media"
    return tmp_path


@pytest.fixture
def digits_track(db, arena_dirs, mnist_test):
    """A digits classifier track whose hidden set is the last 2,000 real MNIST test images."""
    from benchmarks.models import Benchmark, EvaluationSet, Track
    from evaluator.data.evalsets import write_evaluation_set

    images, labels = mnist_test
    benchmark = Benchmark.objects.create(slug="t", name="Test benchmark")
    track = Track.objects.create(benchmark=benchmark, slug="digits", name="Digits", task_kind="classifier",
                                 input_channels=1, input_height=28, input_width=28, num_classes=10,
                                 time_budget_seconds=30)
    relative = "evalsets/digits/mnist-hidden.safetensors"
    digest = write_evaluation_set(Path(arena_dirs / "data" / relative), images[-2000:], labels[-2000:], {})
    EvaluationSet.objects.create(track=track, name="mnist-hidden", role="clean", relative_path=relative,
                                 sha256=digest, num_examples=2000)
    return track


@pytest.fixture
def researcher(db):
    return get_user_model().objects.create_user("ada", password="a-long-password-1")


@pytest.fixture
def other_user(db):
    return get_user_model().objects.create_user("bob", password="a-long-password-2")


@pytest.fixture
def token(researcher) -> str:
    return Token.objects.create(user=researcher).key



class NaNModel(nn.Module):
    """Looks like a classifier but returns NaN logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * torch.tensor(float("nan"))


def export(model: nn.Module, shape: tuple[int, int, int], path: Path) -> Path:
    model.eval()
    example = torch.rand(2, *shape)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(path))
    return path


def wrong_input_model(path: Path) -> Path:
    """A CIFAR-shaped classifier (3x32x32) submitted to a digits track."""
    return export(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), (3, 32, 32), path)


def nan_model(path: Path) -> Path:
    return export(NaNModel(), (1, 28, 28), path)


@pytest.fixture
def bad_models(tmp_path) -> dict[str, Path]:
    """Models exported the way a researcher would, each broken in one way."""
    return {"wrong_input": wrong_input_model(tmp_path / "cifar.pt2"), "nan": nan_model(tmp_path / "nan.pt2")}


@pytest.fixture
def celery_worker(arena_dirs, settings, tmp_path) -> Iterator[CeleryWorkers]:
    """Start real `celery -A arena worker` processes on a queue of this test's own (``celery_worker.queue``, also
    the test process's default queue): ``celery_worker(name, **options)`` returns one started and ready (see
    :class:`tests.web.celery_workers.CeleryWorkers`). All are stopped, and their logs shown, afterwards.
    The bundle tasks get a queue of the test's own too, ``<queue>-bundles`` (``ARENA_BUNDLE_QUEUE``)."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    settings.ARENA_BUNDLE_QUEUE = f"{queue}-bundles"
    workers = CeleryWorkers(tmp_path, settings, queue)
    yield workers
    workers.close()


@pytest.fixture
def live_worker(celery_worker, settings) -> str:
    """One worker (solo pool, stopped gracefully) on a queue of its own, pointed at the test database: its queue.
    Like scripts/demo's, it also consumes the bundle queue (``settings.ARENA_BUNDLE_QUEUE``)."""
    celery_worker("worker", [celery_worker.queue, settings.ARENA_BUNDLE_QUEUE])
    return celery_worker.queue


def _wait_terminal(public_id: str, timeout: float = 240.0):
    """Poll the database until the submission reaches a final state."""
    from submissions.models import Submission

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        submission = Submission.objects.get(public_id=public_id)
        if submission.is_terminal:
            return submission
        time.sleep(0.5)
    raise AssertionError(f"submission {public_id} still not finished after {timeout} s")


@pytest.fixture
def wait_terminal():
    """A function that polls a submission until it is finished, failed or cancelled."""
    return _wait_terminal
