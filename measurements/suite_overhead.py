"""Where an attack stage's time goes on a robust model: the model, the boundary, or the scorer's own work.

Issue 19: a PGD-trained digits model keeps most of its points alive through the suite, so each
stage runs its full budget on many survivors. This script runs one stage of a suite (default
``attacks-2``; budgets may be cut with ``--queries``/``--iterations`` to keep a run short) on the
first ``--points`` clean-correct points of the hidden MNIST half with the PGD-trained CNN
(``measurements/train_robust_digits.py``), twice:

* ``remote``: through the model process exactly as a job runs it (:func:`evaluator.remote.client.host_model`,
  bubblewrap where installed, spot checks on); the time spent waiting on each round trip to the
  model process is summed, by request kind;
* ``local``: the same attack on the same ``.pt2`` loaded in this process, with the time inside the
  model's forward (and, for gradient stages, backward) summed.

Splits printed: model compute (local, inside the model), the scorer's own work (local total less
the model), the boundary (remote total less local total: serialising, pipes, the model process's
request handling, spot checks). Both runs must give the same images (sha256 printed) and passes.

``--compare DIR`` also runs this same script from another checkout (``DIR``, e.g. ``git archive`` of an
earlier commit) alternately with this one, ``--repeats`` times each, and prints the ratio of the
remote wall times and whether the outputs are byte-identical: a before/after measured side by side.

    .venv/bin/python measurements/suite_overhead.py --stage square --threat Linf --points 200 --queries 300
    .venv/bin/python measurements/suite_overhead.py --stage square --compare /tmp/before --repeats 3
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "measurements"))

import torch  # noqa: E402
from train_robust_digits import SPLIT_SEED, DigitsCNN  # noqa: E402

from evaluator.attacks.common import make_generator, predict_logits  # noqa: E402
from evaluator.attacks.counting import CountingModel  # noqa: E402
from evaluator.attacks.stage_attacks import ATTACKS  # noqa: E402
from evaluator.attacks.suites import get_suite  # noqa: E402
from evaluator.attacks.threat import ThreatModel  # noqa: E402
from evaluator.data.evalsets import split_indices  # noqa: E402
from evaluator.data.fetch import fetch_dataset, load_dataset  # noqa: E402
from evaluator.models.convert import export_module  # noqa: E402
from evaluator.models.loading import load_model  # noqa: E402
from evaluator.remote.client import HostOptions, host_model  # noqa: E402
from evaluator.sandbox import SandboxLimits  # noqa: E402
from evaluator.spec import ArtifactSpec, InputSpec  # noqa: E402

THREATS = {"Linf": ThreatModel("Linf", 0.3, "Linf-0.3"), "L2": ThreatModel("L2", 2.0, "L2-2.0")}
INPUT = InputSpec(1, 28, 28)


class Timed(torch.nn.Module):
    """Sums the seconds spent inside the wrapped model's forward (local runs; a backward is not timed)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seconds = model, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - started
        return out


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def points(mirror: Path, n: int, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    fetch_dataset("mnist-test", folder, mirror=mirror)
    images, labels = load_dataset("mnist-test", folder)
    _public, hidden = split_indices(len(labels), 0.5, SPLIT_SEED)
    x = torch.from_numpy(images[hidden[: 2 * n]].copy()).float().div(255.0)
    y = torch.from_numpy(labels[hidden[: 2 * n]].copy()).long()
    return x, y


def run_stage(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    suite = get_suite(args.suite)
    changes: dict[str, Any] = {}
    if args.queries:
        changes["square_queries"] = args.queries
    if args.iterations:
        changes.update(apgd_iterations=args.iterations, min_norm_iterations=args.iterations, fmn_steps=args.iterations)
    if changes:
        suite = replace(suite, version=suite.version, **changes)
    counter = CountingModel(model)
    generator = make_generator(1234)
    started = time.perf_counter()
    result = ATTACKS[args.stage](counter, x, y, THREATS[args.threat], generator, suite, args.batch_size,
                                 lambda fraction: None)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "forward": counter.count.forward, "backward": counter.count.backward,
            "fooled": int(result.fooled.sum()), "digest": digest(result.x_adv, result.fooled.float())}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="suite-overhead-") as tmp:
        folder = Path(tmp)
        net = DigitsCNN()
        net.load_state_dict(torch.load(args.robust_dir / "digits_cnn_pgd_linf.pt", map_location="cpu",
                                       weights_only=True))
        artifact = folder / "model.pt2"
        export_module(net, INPUT, artifact)
        x, y = points(args.data_mirror, args.points, folder / "data")
        local = load_model(ArtifactSpec(str(artifact), "pt2"), INPUT)
        local.eval()
        correct = predict_logits(local, x, 256).argmax(1) == y
        x, y = x[correct][: args.points], y[correct][: args.points]
        out: dict[str, Any] = {"points": int(y.shape[0]), "stage": args.stage, "threat": args.threat,
                               "threads": args.threads, "load": os.getloadavg()[0]}
        if not args.skip_local:
            timed = Timed(local)
            out["local"] = run_stage(timed, x, y, args)
            out["local"]["model_forward_seconds"] = timed.seconds
        options = HostOptions.default()
        options = replace(options, limits=SandboxLimits(threads=args.threads))
        with host_model(ArtifactSpec(str(artifact), "pt2"), INPUT, task="classifier", num_classes=10, device="cpu",
                        time_budget_s=60.0, batch_size=args.batch_size, options=options,
                        threads=args.threads) as hosted:
            remote = hosted.model
            remote.strict, remote.hidden = True, True
            waits: dict[str, list[float]] = {}
            request = remote.process.request

            def timed_request(header: dict[str, Any], payload: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return request(header, payload, **kwargs)
                finally:
                    waits.setdefault(str(header.get("op")), []).append(time.perf_counter() - started)

            remote.process.request = timed_request  # type: ignore[method-assign]
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            out["remote"] = run_stage(remote, x, y, args)
            if profiler:
                profiler.disable()
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.profile)
                out["profile"] = text.getvalue()
            out["remote"]["round_trips"] = {op: len(v) for op, v in waits.items()}
            out["remote"]["round_trip_seconds"] = {op: round(sum(v), 3) for op, v in waits.items()}
            out["remote"]["spot_checks"] = remote.spot_checks
    return out


def report(out: dict[str, Any]) -> None:
    r = out["remote"]
    trips = sum(r["round_trips"].values())
    waiting = sum(r["round_trip_seconds"].values())
    print(f"{out['stage']} {out['threat']} on {out['points']} surviving points, {out['threads']} thread(s), "
          f"load {out['load']:.2f}")
    print(f"  remote: {r['seconds']:.2f} s, {r['forward']:,} forward + {r['backward']:,} backward passes, "
          f"{trips:,} round trips ({r['round_trips']}, {r['spot_checks']} spot checks) waiting {waiting:.2f} s; "
          f"scorer outside the round trips {r['seconds'] - waiting:.2f} s; digest {r['digest']}")
    if "local" in out:
        loc = out["local"]
        print(f"  local : {loc['seconds']:.2f} s, model forward {loc['model_forward_seconds']:.2f} s, "
              f"the rest (scorer work, backward) {loc['seconds'] - loc['model_forward_seconds']:.2f} s; "
              f"digest {loc['digest']}")
        print(f"  boundary (remote - local): {r['seconds'] - loc['seconds']:.2f} s = "
              f"{(r['seconds'] - loc['seconds']) / max(trips, 1) * 1000:.2f} ms per round trip")
    if "profile" in out:
        print(out["profile"])


def compare(args: argparse.Namespace, argv: list[str]) -> int:
    """This script from two checkouts, alternately; the ratio of remote wall times and byte identity."""
    own = [a for a in argv if a not in ("--compare", str(args.compare))]
    rows: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        for name, tree in (("before", args.compare), ("after", ROOT)):
            with tempfile.NamedTemporaryFile(suffix=".json") as handle:
                command = [sys.executable, str(Path(tree) / "measurements" / "suite_overhead.py"), *own,
                           "--data-mirror", str(args.data_mirror), "--json", handle.name, "--quiet"]
                subprocess.run(command, check=True)
                rows[name].append(json.loads(Path(handle.name).read_text()))
    same = len({row["remote"]["digest"] for rows_ in rows.values() for row in rows_}) == 1
    same_passes = len({(row["remote"]["forward"], row["remote"]["backward"]) for v in rows.values() for row in v}) == 1
    before = statistics.median(row["remote"]["seconds"] for row in rows["before"])
    after = statistics.median(row["remote"]["seconds"] for row in rows["after"])
    first = rows["after"][0]
    print(f"{first['stage']} {first['threat']} on {first['points']} points, {first['threads']} thread(s), "
          f"{args.repeats} alternating runs each, load {[round(r['load'], 2) for v in rows.values() for r in v]}")
    for name, values in rows.items():
        trips = [sum(r["remote"]["round_trips"].values()) for r in values]
        each = ", ".join(f"{r['remote']['seconds']:.2f}" for r in values)
        print(f"  {name:<7}: remote median {statistics.median(r['remote']['seconds'] for r in values):.2f} s "
              f"({each}), round trips {trips[0]:,}, "
              f"passes {values[0]['remote']['forward']:,} + {values[0]['remote']['backward']:,}")
    print(f"  after / before: {after / before:.2f}; outputs byte-identical: {same}; passes identical: {same_passes}")
    return 0 if same and same_passes else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="square", choices=sorted(ATTACKS))
    parser.add_argument("--threat", default="Linf", choices=sorted(THREATS))
    parser.add_argument("--suite", default="attacks-2")
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--queries", type=int, default=300, help="Square's queries (0: the suite's)")
    parser.add_argument("--iterations", type=int, default=0, help="iterations of APGD/FAB/FMN (0: the suite's)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--profile", type=int, default=0, help="print the scorer's top N functions (cProfile)")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--robust-dir", type=Path, default=Path("/work/robust-models"))
    parser.add_argument("--data-mirror", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--compare", type=Path, help="another checkout to run alternately with this one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args, argv)
    out = measure(args)
    if not args.quiet:
        report(out)
    if args.json:
        args.json.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
