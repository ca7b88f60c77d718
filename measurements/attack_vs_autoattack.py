"""The project's attack suite side by side with the official AutoAttack, on the same model and points.

For the shared CIFAR ResNet-20 (Linf 8/255) and the shared MNIST LeNet-5 (Linf 0.3), both
suites attack the first ``--n`` test images (as :func:`evaluator.data.fetch.load_dataset`
loads them). The official AutoAttack (``version="standard"``: APGD-CE, APGD-T, FAB-T, Square)
is imported from a checkout given by ``--autoattack`` or the ``AUTOATTACK_PATH`` environment
variable (a clone of github.com/fra31/auto-attack; it is installed nowhere in this project).
Both models are wrapped in :class:`evaluator.attacks.counting.CountingModel`, so passes are
counted the same way (images through forward, images through backward). Printed per model:
final robust accuracy, forward and backward passes, and wall-clock seconds of each suite,
measured in this one run. Target: ours within 0.5 points of AutoAttack's robust accuracy or
lower, with no more passes.

    AUTOATTACK_PATH=/tmp/autoattack_src .venv/bin/python measurements/attack_vs_autoattack.py --n 1000
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from evaluator.attacks.cascade import run_cascade  # noqa: E402
from evaluator.attacks.counting import CountingModel  # noqa: E402
from evaluator.attacks.threat import ThreatModel, lp_norm  # noqa: E402
from evaluator.data.fetch import fetch_dataset, load_dataset  # noqa: E402
from evaluator.models.convert import convert_checkpoint  # noqa: E402
from evaluator.models.zoo import build_model  # noqa: E402

#: name -> (zoo architecture, checkpoint under the models dir, dataset id, threat model)
SETUPS: dict[str, tuple[str, str, str, ThreatModel]] = {
    "cifar_resnet20": (
        "cifar_resnet20", "cifar10/resnet20-12fca82f.th", "cifar10-jpeg-test", ThreatModel("Linf", 8 / 255)
    ),
    "mnist_lenet5": ("mnist_lenet5", "mnist/mnist_lenet5_clntrained.pt", "mnist-test", ThreatModel("Linf", 0.3)),
}


def import_autoattack(path: str | None) -> Any:
    """The official ``autoattack`` package from a checkout outside this repository."""
    path = path or os.environ.get("AUTOATTACK_PATH")
    if not path:
        raise SystemExit("give the AutoAttack checkout with --autoattack or AUTOATTACK_PATH")
    sys.path.insert(0, str(Path(path).resolve()))
    return importlib.import_module("autoattack").AutoAttack


def load_setup(name: str, work: Path, models_dir: Path, mirror: Path, n: int, spread: bool) -> tuple[
        torch.nn.Module, torch.Tensor, torch.Tensor, ThreatModel]:
    arch, checkpoint, dataset, threat = SETUPS[name]
    weights = work / f"{arch}.safetensors"
    convert_checkpoint(arch, models_dir / checkpoint, weights)
    model = build_model(arch)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    data_root = work / "data"
    fetch_dataset(dataset, data_root, mirror=mirror)
    images, labels = load_dataset(dataset, data_root)
    # The CIFAR JPEG set loads class by class, so its first 1,000 images are all airplanes;
    # --spread takes n evenly spaced images instead (every class for n >= 10).
    index = np.linspace(0, len(labels) - 1, n).round().astype(np.int64) if spread else np.arange(n)
    x = torch.from_numpy(images[index].copy()).float().div(255.0)
    y = torch.from_numpy(labels[index].copy()).long()
    return model, x, y, threat


def run_ours(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, seed: int,
             batch_size: int) -> dict[str, Any]:
    counted = CountingModel(model)
    started = time.perf_counter()
    report = run_cascade(counted, x, y, [threat], seed=seed, batch_size=batch_size)
    seconds = time.perf_counter() - started
    tm = report.threat_models[0]
    return {
        "clean_accuracy": report.clean_accuracy,
        "robust_accuracy": tm.robust_accuracy,
        "forward": counted.forward_passes,
        "backward": counted.backward_passes,
        "seconds": seconds,
        "stages": {s.attack: s.robust_accuracy for s in tm.stages},
    }


def run_autoattack(auto_attack: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                   seed: int, batch_size: int) -> dict[str, Any]:
    counted = CountingModel(model)
    adversary = auto_attack(counted, norm=threat.norm, eps=threat.eps, version="standard", seed=seed,
                            device="cpu", verbose=False)
    started = time.perf_counter()
    x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
    seconds = time.perf_counter() - started
    forward, backward = counted.forward_passes, counted.backward_passes
    with torch.no_grad():  # scoring AutoAttack's output is not part of its cost
        delta = lp_norm(x_adv - x, threat.norm)
        predicted = torch.cat([model(x_adv[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
        clean = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return {
        "clean_accuracy": float((clean == y).float().mean()),
        "robust_accuracy": float((predicted == y).float().mean()),
        "forward": forward,
        "backward": backward,
        "seconds": seconds,
        "max_perturbation": float(delta.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="first n test images of each dataset")
    parser.add_argument("--spread", action="store_true", help="n evenly spaced test images instead of the first n")
    parser.add_argument("--models", default="cifar_resnet20,mnist_lenet5", help="comma-separated: " + ",".join(SETUPS))
    parser.add_argument("--autoattack", default=None, help="path to a fra31/auto-attack checkout (or AUTOATTACK_PATH)")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="folder with data/ and models/")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    auto_attack = import_autoattack(args.autoattack)
    shared = Path(args.shared)
    results: dict[str, Any] = {"n": args.n, "spread": args.spread, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            model, x, y, threat = load_setup(name, Path(tmp), shared / "models", shared / "data", args.n, args.spread)
            ours = run_ours(model, x, y, threat, args.seed, args.batch_size)
            theirs = run_autoattack(auto_attack, model, x, y, threat, args.seed, args.batch_size)
            results[name] = {"threat": threat.key, "ours": ours, "autoattack": theirs}
            points = "evenly spaced" if args.spread else "first"
            print(f"\n{name}  ({threat.norm} eps={threat.eps:.4f}, {points} n={args.n}, "
                  f"{len(set(y.tolist()))} classes, clean {ours['clean_accuracy']:.2%})")
            print(f"  {'suite':<12}{'robust acc':>12}{'forward':>12}{'backward':>12}{'passes':>12}{'seconds':>10}")
            for label, r in (("ours", ours), ("AutoAttack", theirs)):
                print(f"  {label:<12}{r['robust_accuracy']:>12.2%}{r['forward']:>12,}{r['backward']:>12,}"
                      f"{r['forward'] + r['backward']:>12,}{r['seconds']:>10.1f}")
            gap = (ours["robust_accuracy"] - theirs["robust_accuracy"]) * 100
            ratio = (ours["forward"] + ours["backward"]) / max(theirs["forward"] + theirs["backward"], 1)
            print(f"  ours - AutoAttack: {gap:+.2f} points robust accuracy; passes ratio {ratio:.3f}; "
                  f"our stages {ours['stages']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
