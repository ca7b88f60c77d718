"""Square's per-query overhead: the Python and indexing work around each forward pass (issue 19).

A robust model keeps most of its points alive through Square's 5,000 queries, so the attack's
wall time is queries x (one forward pass on the survivors + the proposal's own work). This script
measures that split on the shared LeNet-5 with survivors only (an L2 radius too small to break
anything), one thread:

* ``model``: the forward passes alone, on the same batch, as many as the attack makes;
* ``square``: the whole attack with the current code;
* ``square (no pattern cache)``: the same with ``square.CACHE_PATTERNS`` off (the L2 update pattern
  rebuilt on every query, as before the cache).

Runs alternate, and the two attack variants must give byte-identical images. Prints per-query
milliseconds, the overhead above the model (attack - model), and the ratio of the variants.

    .venv/bin/python measurements/square_overhead.py [--points 16] [--queries 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]

import torch  # noqa: E402

import evaluator.attacks.square as square  # noqa: E402
from evaluator.attacks.common import predict_logits  # noqa: E402
from evaluator.attacks.threat import ThreatModel  # noqa: E402
from evaluator.models.zoo import build_model, remap_checkpoint  # noqa: E402

CHECKPOINT = ROOT.parent / "shared" / "models" / "mnist" / "mnist_lenet5_clntrained.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--norm", choices=("L2", "Linf"), default="L2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model("mnist_lenet5")
    model.load_state_dict(remap_checkpoint("mnist_lenet5", torch.load(CHECKPOINT, map_location="cpu",
                                                                      weights_only=True)))
    model.eval()
    x = torch.rand(args.points, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = predict_logits(model, x, 256).argmax(1)
    threat = ThreatModel(norm=args.norm, eps=0.01 if args.norm == "L2" else 0.001, label=args.norm)

    def attack(cache: bool) -> tuple[float, torch.Tensor]:
        square.CACHE_PATTERNS = cache
        square._PATTERNS.clear()
        started = time.perf_counter()
        result = square.square_attack(model, x, y, threat, torch.Generator().manual_seed(0), n_queries=args.queries)
        return time.perf_counter() - started, result.x_adv

    def forward_only() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for _ in range(args.queries):
                predict_logits(model, x, 256)
        return time.perf_counter() - started

    times: dict[str, list[float]] = {"model": [], "square": [], "square (no pattern cache)": []}
    for _ in range(args.repeats):
        times["model"].append(forward_only())
        seconds, cached = attack(True)
        times["square"].append(seconds)
        seconds, uncached = attack(False)
        times["square (no pattern cache)"].append(seconds)
        assert torch.equal(cached, uncached), "the pattern cache changed the attack's output"
        assert bool((predict_logits(model, cached, 256).argmax(1) == y).all()), "a point broke: not survivors only"
    square.CACHE_PATTERNS = True
    print(f"Square {args.norm}, shared LeNet-5, {args.points} surviving points, {args.queries} queries, 1 thread, "
          f"median of {args.repeats} alternating runs")
    model_ms = statistics.median(times["model"]) / args.queries * 1000
    for name, values in times.items():
        per_query = statistics.median(values) / args.queries * 1000
        extra = "" if name == "model" else f"   overhead above the model {per_query - model_ms:.3f} ms"
        print(f"  {name:28s} {per_query:.3f} ms per query{extra}")
    ratio = statistics.median(times["square"]) / statistics.median(times["square (no pattern cache)"])
    print(f"  ratio square / square (no pattern cache): {ratio:.2f} (outputs identical)")


if __name__ == "__main__":
    main()
