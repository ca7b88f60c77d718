"""One real evaluation after another, for as long as it runs: the "one evaluation beside the server" load.

Converts the shared clean-trained LeNet-5 (``../shared/models/mnist``) to zoo safetensors, writes
``--images`` MNIST test images as the clean set, and runs the evaluator's own ``run_job`` on it in a
loop (the model in its own process, under bubblewrap where installed, as a worker runs it): clean
accuracy, then the attack suite (``attacks-2``) at Linf 0.3 on ``--attack-points`` points, with the
reliability checks. ``--threads`` CPU threads (torch and OpenMP, like ``ARENA_EVAL_THREADS``) and
``--nice`` the CPU priority it gives up, like ``ARENA_EVAL_NICE`` (default: that setting's default, 10,
as a worker runs every job; the model process inherits it). Each finished evaluation prints one line;
SIGTERM (or ``--seconds``) ends it.

    .venv/bin/python measurements/busy_evaluation.py [--seconds 0] [--threads 1] [--nice 10] [--images 2000]
"""

from __future__ import annotations

import argparse
import gzip
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def describe(images: int, attack_points: int, threads: int, nice: int) -> str:
    """What runs, in words (load_test.py prints it beside the busy rows)."""
    return (f"evaluator.run_job on the shared LeNet-5 (mnist_lenet5 safetensors): clean accuracy on {images} MNIST "
            f"test images + attacks-2 at Linf 0.3 on {attack_points} points, {threads} thread(s), nice {nice}, "
            f"in a loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until SIGTERM)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nice", type=int, default=10, help="CPU priority given up, as ARENA_EVAL_NICE (default 10)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--attack-points", type=int, default=100)
    parser.add_argument("--shared", type=Path, default=SHARED)
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    nice = os.nice(max(0, args.nice))  # as SandboxLimits.nice sets it for a job (0: unchanged; returns the new value)
    sys.path[:0] = [str(ROOT)]

    import numpy as np
    import torch

    from evaluator.data.evalsets import write_evaluation_set
    from evaluator.models.convert import convert_checkpoint
    from evaluator.scoring import run_job
    from evaluator.spec import ArtifactSpec, EvaluationSetSpec, InputSpec, JobSpec, ThreatModel

    torch.set_num_threads(args.threads)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    folder = Path(tempfile.mkdtemp(prefix="arena-busy-"))
    weights = convert_checkpoint("mnist_lenet5", args.shared / "models/mnist/mnist_lenet5_clntrained.pt",
                                 folder / "lenet.safetensors")
    raw = gzip.decompress((args.shared / "data/mnist/t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:args.images]
    labels = np.frombuffer(gzip.decompress((args.shared / "data/mnist/t10k-labels-idx1-ubyte.gz").read_bytes()),
                           np.uint8, offset=8)[:args.images].astype(np.int64)
    digest = write_evaluation_set(folder / "clean.safetensors", images, labels)
    spec = JobSpec("busy", "classifier", InputSpec(1, 28, 28),
                   ArtifactSpec(str(weights), "safetensors", architecture="mnist_lenet5"),
                   (EvaluationSetSpec("mnist", str(folder / "clean.safetensors"), digest, "clean"),),
                   threat_models=(ThreatModel("Linf", 0.3, "Linf-0.3"),), attack_points=args.attack_points,
                   reliability_points=min(50, args.attack_points))
    print(describe(args.images, args.attack_points, args.threads, nice), flush=True)
    started = time.monotonic()
    count = 0
    while not stop["now"] and (args.seconds <= 0 or time.monotonic() - started < args.seconds):
        t0 = time.monotonic()
        result = run_job(spec)
        count += 1
        accuracy = {m.metric: m.value for m in result.metrics}.get("accuracy")
        print(f"evaluation {count}: ok={result.ok} in {time.monotonic() - t0:.1f} s, accuracy {accuracy}", flush=True)


if __name__ == "__main__":
    main()
