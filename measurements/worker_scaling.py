"""Evaluation throughput with one and with two worker processes on the same queue, in one run.

Builds a throw-away platform (SQLite and kombu's filesystem broker under a temporary
ARENA_VAR_DIR, or DATABASE_URL / CELERY_BROKER_URL when set) with a digits track scored on 2,000
real MNIST images, queues ``--jobs`` distinct LeNet-5 uploads, and times how long one worker
process takes to finish them all; then the same number of fresh uploads with two workers. Each
worker is a real `celery -A arena worker` process evaluating in the bubblewrap sandbox, each
evaluation on ``--threads`` CPU threads (``ARENA_EVAL_THREADS``; 1 by default, so that two workers
on a 2-core machine do not compete for the same cores and the figure says something about the
engine). It prints the thread setting, the cores, jobs per minute for both and their ratio (ideal:
2.0 while workers x threads <= cores).

    .venv/bin/python measurements/worker_scaling.py [--jobs 8] [--threads 1] [--mirror ../shared]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
os.environ.setdefault("ARENA_VAR_DIR", tempfile.mkdtemp(prefix="arena-scale-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arena.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from arena.database import database_url  # noqa: E402


def build_track(mirror: Path):
    """A digits track on the last 2,000 MNIST test images, read from the data mirror."""
    from benchmarks.models import Benchmark, EvaluationSet, Track
    from evaluator.data.evalsets import write_evaluation_set
    from evaluator.data.loaders import load_idx_pair

    images, labels = load_idx_pair(mirror / "data/mnist/t10k-images-idx3-ubyte.gz",
                                   mirror / "data/mnist/t10k-labels-idx1-ubyte.gz")
    track = Track.objects.create(benchmark=Benchmark.objects.create(slug=f"scale-{uuid.uuid4().hex[:6]}",
                                                                    name="Scaling"),
                                 slug=f"digits-{uuid.uuid4().hex[:6]}", name="Digits", task_kind="classifier",
                                 input_channels=1, input_height=28, input_width=28, num_classes=10)
    relative = f"evalsets/{track.slug}/mnist.safetensors"
    digest = write_evaluation_set(Path(settings.ARENA_DATA_DIR) / relative, images[-2000:], labels[-2000:], {})
    EvaluationSet.objects.create(track=track, name="mnist-hidden", role="clean", relative_path=relative,
                                 sha256=digest, num_examples=2000)
    return track


def variants(mirror: Path, folder: Path, count: int, offset: int) -> list[bytes]:
    """Distinct LeNet-5 files (identical files are refused as duplicates): one bias nudged each."""
    from safetensors.torch import load_file, save

    from evaluator.models.convert import convert_checkpoint

    base = convert_checkpoint("mnist_lenet5", mirror / "models/mnist/mnist_lenet5_clntrained.pt",
                              folder / "lenet.safetensors")
    weights = load_file(base)
    out = []
    for index in range(offset, offset + count):
        changed = dict(weights)
        changed["linear2.bias"] = weights["linear2.bias"] + 1e-6 * (index + 1)
        out.append(save(changed))
    return out


def run(workers: int, track, owner, files: list[bytes], folder: Path, threads: int) -> float:
    """Seconds for ``workers`` worker processes to finish every job in ``files``."""
    from submissions import services
    from submissions.models import Submission

    queue = f"scale-{uuid.uuid4().hex[:8]}"
    # The track's own queue: the workers (another process, other settings) claim by it, as production does.
    type(track).objects.filter(pk=track.pk).update(queue=queue)
    track.refresh_from_db()
    ids = [services.create_submission(owner, track, SimpleUploadedFile("m.safetensors", data), name=f"job {i}",
                                      zoo_architecture="mnist_lenet5").pk for i, data in enumerate(files)]
    env = {**os.environ, "DATABASE_URL": database_url(connection.settings_dict),
           "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
           "ARENA_DATA_DIR": str(settings.ARENA_DATA_DIR), "MEDIA_ROOT": str(settings.MEDIA_ROOT),
           "ARENA_EVAL_THREADS": str(threads),
           "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}"}
    procs = []
    started = time.perf_counter()
    for index in range(workers):
        log = (folder / f"{queue}-{index}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "arena", "worker", "--pool=solo", "-Q", queue, "-n",
             f"w{index}-{queue}@%h", "--without-heartbeat", "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        while Submission.objects.filter(pk__in=ids).exclude(state__in=Submission.TERMINAL).exists():
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
    states = set(Submission.objects.filter(pk__in=ids).values_list("state", flat=True))
    if states != {Submission.State.FINISHED}:
        raise SystemExit(f"some jobs did not finish: {states}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per evaluation (0: every core)")
    parser.add_argument("--mirror", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    folder = Path(tempfile.mkdtemp(prefix="arena-scale-files-"))
    track = build_track(args.mirror)
    owner = get_user_model().objects.create_user(f"scale-{uuid.uuid4().hex[:6]}", password="x" * 16, is_staff=True)
    one = run(1, track, owner, variants(args.mirror, folder, args.jobs, 0), folder, args.threads)
    two = run(2, track, owner, variants(args.mirror, folder, args.jobs, args.jobs), folder, args.threads)
    print(f"{'workers':>8} {'jobs':>5} {'seconds':>8} {'jobs/min':>9}")
    for count, seconds in ((1, one), (2, two)):
        print(f"{count:>8} {args.jobs:>5} {seconds:>8.1f} {60 * args.jobs / seconds:>9.1f}")
    threads = args.threads or os.cpu_count()
    print(f"throughput ratio, 2 workers / 1 worker: {one / two:.2f} ({threads} thread(s) per evaluation, "
          f"{os.cpu_count()} CPUs here)")


if __name__ == "__main__":
    main()
