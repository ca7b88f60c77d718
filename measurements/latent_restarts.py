"""The universal latent attack as the detector suite runs it, against its single-run form, in one run.

Reals are MNIST test images from the shared mirror, fakes come from the shared MNIST GAN with a
hidden seed, and the detectors are the GAN's own discriminator (shared) and, with ``--cnn``, the
small CNN detector trained here on the first half of the MNIST test set against public GAN
samples (the demo's recipe). For each seed the latent attack runs twice on the same points: once
as suites up to ``demo-1`` ran it (the mean score, one run) and once as now (the mean score and
the smoothed share above the threshold, two restarts each, the offset kept by the public fakes'
AUC against the reals). Printed per detector and seed: the AUC of the hidden fakes against the
reals with no offset, after each form of the attack, and each form's seconds.

    .venv/bin/python measurements/latent_restarts.py --seeds 0 1 61125 --cnn
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from evaluator.attacks.common import derive_seed  # noqa: E402
from evaluator.data.loaders import load_idx_pair  # noqa: E402
from evaluator.detector_attacks.common import fake_scores  # noqa: E402
from evaluator.detector_attacks.latent import draw_latents, generate, latent_attack  # noqa: E402
from evaluator.metrics.detection import roc_auc, threshold_at_fpr  # noqa: E402
from evaluator.models.contract import pixels_to_unit  # noqa: E402
from evaluator.models.convert import convert_checkpoint  # noqa: E402
from evaluator.models.zoo import build_model  # noqa: E402

SHARED = ROOT.parent / "shared"
LATENT_DIM = 64


def _auc(model: torch.nn.Module, reals: np.ndarray, fakes_uint8: torch.Tensor) -> float:
    scores = fake_scores(model, pixels_to_unit(fakes_uint8)).double().numpy()
    return roc_auc(np.concatenate([reals, scores]), np.concatenate([np.zeros(reals.size), np.ones(scores.size)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 61125])
    parser.add_argument("--points", type=int, default=500, help="hidden fakes attacked")
    parser.add_argument("--cnn", action="store_true", help="also train and attack the small CNN detector")
    parser.add_argument("--work", type=Path, default=Path("/tmp/arena-latent-restarts"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)

    mnist = SHARED / "data/mnist"
    images, _ = load_idx_pair(mnist / "t10k-images-idx3-ubyte.gz", mnist / "t10k-labels-idx1-ubyte.gz")
    generator = build_model("mnist_gan_generator")
    generator.load_state_dict(load_file(convert_checkpoint(
        "mnist_gan_generator", SHARED / "models/mnist_gan/G--300.ckpt", args.work / "g.safetensors")))
    generator.eval()
    detectors = {"GAN discriminator": build_model("mnist_gan_discriminator")}
    detectors["GAN discriminator"].load_state_dict(load_file(convert_checkpoint(
        "mnist_gan_discriminator", SHARED / "models/mnist_gan/D--300.ckpt", args.work / "d.safetensors")))
    if args.cnn:
        from evaluator.testbed.detectors import train_detector

        public_fakes = generate(generator, draw_latents(5000, LATENT_DIM, 1)).numpy()
        detectors["small CNN"] = train_detector("mnist_small_cnn_detector", images[:5000], public_fakes)
    hidden_reals = torch.from_numpy(images[5000:].copy())

    print(f"{'detector':18s} {'seed':>6s} {'no offset':>9s} {'single run':>10s} {'restarts':>9s}  seconds")
    for name, model in detectors.items():
        model.eval()
        reals = fake_scores(model, pixels_to_unit(hidden_reals)).double().numpy()
        threshold = threshold_at_fpr(reals, 0.05)
        for seed in args.seeds:
            common = {"latent_radius": 0.5, "steps": 300, "n_eval": args.points, "public_seed": 1,
                      "hidden_seed": derive_seed(seed, "latent-restarts", "hidden"), "n_train": 2000,
                      "seed": derive_seed(seed, "latent-restarts", "train"), "threshold": threshold}
            began = time.perf_counter()
            single = latent_attack(model, generator, LATENT_DIM, objectives=("mean-score",), restarts=1, **common)
            middle = time.perf_counter()
            best = latent_attack(model, generator, LATENT_DIM, real_scores=reals, **common)
            ended = time.perf_counter()
            print(f"{name:18s} {seed:6d} {_auc(model, reals, single.reference):9.3f} "
                  f"{_auc(model, reals, single.attacked):10.3f} {_auc(model, reals, best.attacked):9.3f}  "
                  f"{middle - began:.0f} / {ended - middle:.0f}  (kept: {best.objective})")


if __name__ == "__main__":
    main()
