"""The attack-submission interface against the built-in stage: the suite's APGD-CE run both ways, side by side.

Runs ``evaluator/adversary/examples/apgd_ce.py`` as a submitted attack (its own sandboxed process, every pass
crossing a pipe to the scorer) and the built-in APGD-CE stage in process, alternately, on the same MNIST points,
seed and threat model, against the shared LeNet-5, and prints each one's wall time, robust accuracy and passes.
The submission's time includes starting its sandbox and importing torch there (about a second).

    .venv/bin/python measurements/attack_interface_overhead.py [--points 100] [--eps 0.1] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluator.adversary.runner import run_attack  # noqa: E402
from evaluator.attacks.cascade import attack_threat_model  # noqa: E402
from evaluator.attacks.common import predict_logits  # noqa: E402
from evaluator.attacks.suites import SuiteConfig  # noqa: E402
from evaluator.models.convert import convert_checkpoint  # noqa: E402
from evaluator.models.zoo import build_model  # noqa: E402
from evaluator.spec import ThreatModel  # noqa: E402

SHARED = ROOT.parent / "shared"
EXAMPLE = ROOT / "evaluator" / "adversary" / "examples" / "apgd_ce.py"


def _mnist(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    raw = gzip.decompress((SHARED / "data/mnist/t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n].copy()
    labels = np.frombuffer(gzip.decompress((SHARED / "data/mnist/t10k-labels-idx1-ubyte.gz").read_bytes()),
                           np.uint8, offset=8)[:n].astype(np.int64)
    return torch.from_numpy(images).float() / 255, torch.from_numpy(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = _mnist(args.points)
    with tempfile.TemporaryDirectory() as tmp:
        weights = convert_checkpoint("mnist_lenet5", SHARED / "models/mnist/mnist_lenet5_clntrained.pt",
                                     Path(tmp) / "lenet.safetensors")
        model = build_model("mnist_lenet5")
        model.load_state_dict(load_file(weights))
    model.eval()
    threat = ThreatModel("Linf", args.eps)
    only_apgd = SuiteConfig("attacks-2", stages=("apgd-ce",), escalation=())
    print(f"LeNet-5, {args.points} MNIST points, Linf {args.eps:g}, seed {args.seed}, {args.threads} thread(s)")
    for round_index in range(args.rounds):
        started = time.perf_counter()
        clean = predict_logits(model, x, 256).argmax(1) == y
        built_in = attack_threat_model(model, x, y, clean, threat, suite=only_apgd, seed=args.seed, batch_size=256)
        middle = time.perf_counter()
        submitted = run_attack(str(EXAMPLE), model, x, y, threat, 200, args.seed)
        ended = time.perf_counter()
        stage = built_in.report.stages[0]
        print(f"round {round_index + 1}: built-in {middle - started:.2f} s, robust {stage.robust_accuracy:.3f}, "
              f"passes {stage.forward_passes}/{stage.backward_passes}; submission {ended - middle:.2f} s, robust "
              f"{submitted.robust_accuracy:.3f}, passes {submitted.forward_passes}/{submitted.backward_passes}; "
              f"ratio {(ended - middle) / (middle - started):.2f}")


if __name__ == "__main__":
    main()
