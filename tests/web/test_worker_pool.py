"""Many workers on one database and one broker, and per-track queues.

Two real `celery worker` processes consume the same queue: every one of 20 jobs finishes exactly
once (one run, one attempt, no duplicate rows), and both workers take a share. A track with a
queue of its own is served only by workers given that queue, so a heavy track cannot starve a
light one.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from safetensors.torch import load_file, save_file

from submissions import services
from submissions.models import EvaluationRun, Result, Submission

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _variants(lenet5_safetensors: Path, folder: Path, count: int) -> list[Path]:
    """Distinct files (identical files on a track are refused as duplicates): one bias nudged each."""
    weights = load_file(lenet5_safetensors)
    paths = []
    for index in range(count):
        changed = dict(weights)
        changed["linear2.bias"] = weights["linear2.bias"] + 1e-6 * (index + 1)
        path = folder / f"lenet-{index}.safetensors"
        save_file(changed, str(path))
        paths.append(path)
    return paths


def _submit(owner, track, path: Path, name: str) -> Submission:
    return services.create_submission(owner, track, SimpleUploadedFile(path.name, path.read_bytes()), name=name,
                                      zoo_architecture="mnist_lenet5")


def _wait_all(ids: list[int], timeout: float) -> list[Submission]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        subs = list(Submission.objects.filter(pk__in=ids))
        if all(s.is_terminal for s in subs):
            return subs
        time.sleep(1.0)
    states = {s.name: s.state for s in Submission.objects.filter(pk__in=ids)}
    raise AssertionError(f"not all jobs ended within {timeout} s: {states}")


def test_two_workers_finish_twenty_jobs_exactly_once(celery_worker, digits_track, tmp_path, lenet5_safetensors):
    staff = get_user_model().objects.create_user("pool", password="x" * 16, is_staff=True)  # quota-exempt
    paths = _variants(lenet5_safetensors, tmp_path, 20)
    with celery_worker("a") as worker_a, celery_worker("b") as worker_b:  # both on the test's queue
        ids = [_submit(staff, digits_track, path, f"variant {i}").pk for i, path in enumerate(paths)]
        subs = _wait_all(ids, timeout=900)
    assert {s.state for s in subs} == {Submission.State.FINISHED}
    assert {s.attempts for s in subs} == {1}
    assert EvaluationRun.objects.filter(submission__in=ids).count() == 20
    per_submission = {pk: Result.objects.filter(submission_id=pk).count() for pk in ids}
    assert len(set(per_submission.values())) == 1  # the same metrics for every job, none twice

    # Each task ran on exactly one worker, and both workers did some of the work.
    done = {w.name: re.findall(r"Task submissions\.evaluate\[([0-9a-f-]+)\] succeeded", w.log())
            for w in (worker_a, worker_b)}
    all_tasks = done["a"] + done["b"]
    assert len(all_tasks) == len(set(all_tasks)) == 20
    assert set(all_tasks) == {s.task_id for s in subs}
    assert done["a"] and done["b"], {k: len(v) for k, v in done.items()}


def test_a_track_with_its_own_queue_is_served_only_by_its_workers(celery_worker, digits_track, tmp_path,
                                                                  lenet5_safetensors):
    from benchmarks.models import EvaluationSet, Track

    light_queue, heavy_queue = celery_worker.queue, f"heavy-{uuid.uuid4().hex[:8]}"  # light: the default
    heavy = Track.objects.create(benchmark=digits_track.benchmark, slug="digits-heavy", name="Digits (heavy)",
                                 task_kind="classifier", input_channels=1, input_height=28, input_width=28,
                                 num_classes=10, queue=heavy_queue)
    clean = digits_track.clean_set()
    EvaluationSet.objects.create(track=heavy, name=clean.name, role="clean", relative_path=clean.relative_path,
                                 sha256=clean.sha256, num_examples=clean.num_examples)
    staff = get_user_model().objects.create_user("pool", password="x" * 16, is_staff=True)
    light_path, heavy_path = _variants(lenet5_safetensors, tmp_path, 2)
    with celery_worker("light", light_queue):
        light = _submit(staff, digits_track, light_path, "light job")
        on_heavy = _submit(staff, heavy, heavy_path, "heavy job")
        assert _wait_all([light.pk], timeout=300)[0].state == Submission.State.FINISHED
        time.sleep(3)
        on_heavy.refresh_from_db()
        assert on_heavy.state == Submission.State.QUEUED  # the light worker never takes it
    with celery_worker("heavy", heavy_queue):
        assert _wait_all([on_heavy.pk], timeout=300)[0].state == Submission.State.FINISHED
