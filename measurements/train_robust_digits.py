"""Does the attack suite separate a robust digits model from a clean-trained twin?

Trains two copies of a small CNN on the public half of the MNIST test set (``mnist-test``
split with ``split_indices(10000, 0.5, 20261125)``; 5,000 images): one with PGD adversarial
training (Madry et al. 2018: every batch is replaced by PGD adversarial images, here with a
random start, ``--pgd-steps`` steps and an eps ramped up over the first epochs, which keeps
early training from collapsing), one with plain cross-entropy. Then the suite
(:func:`evaluator.attacks.cascade.run_cascade`) attacks both on the first ``--n-eval`` points
of the hidden half at Linf ``--eps`` and prints clean and robust accuracy, passes and seconds;
the reliability checks run on the robust model, whose robustness must not come from masked
gradients. The suite must separate them: the robust model keeps substantial robust accuracy,
the clean one falls to near zero.

Five thousand images and a few CPU minutes give a weaker model than the literature's (which
trains on 60,000 images for many epochs), so eps 0.3 may be out of reach; ``--eps`` and
``--train-eps`` lower it.

    .venv/bin/python measurements/train_robust_digits.py [--epochs 12] [--eps 0.3] [--n-eval 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from evaluator.attacks.cascade import SUITE_VERSION, SuiteConfig, get_suite, run_cascade  # noqa: E402
from evaluator.attacks.reliability import run_reliability_checks  # noqa: E402
from evaluator.attacks.threat import ThreatModel  # noqa: E402
from evaluator.data.evalsets import split_indices  # noqa: E402
from evaluator.data.fetch import fetch_dataset, load_dataset  # noqa: E402

SPLIT_SEED = 20261125


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers (16, 32 channels) with max-pooling and a 100-unit hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 2)
        return self.fc2(F.relu(self.fc1(out.flatten(1))))


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
        generator: torch.Generator) -> torch.Tensor:
    """Linf PGD with a uniform random start and step 2.5 eps / steps (Madry et al.)."""
    if eps <= 0:
        return x
    step = 2.5 * eps / steps
    x_adv = (x + eps * (2 * torch.rand(x.shape, generator=generator) - 1)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, [x_adv])
        with torch.no_grad():
            x_adv = x_adv + step * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def train(x: torch.Tensor, y: torch.Tensor, *, epochs: int, train_eps: float, ramp_epochs: int, pgd_steps: int,
          seed: int, batch_size: int = 50) -> nn.Module:
    """Adam, learning rate 1e-3 then 1e-4 for the last quarter; ``train_eps`` 0 is clean training."""
    torch.manual_seed(seed)  # the model's initial weights
    model = DigitsCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        if epoch == (3 * epochs) // 4:
            for group in optimiser.param_groups:
                group["lr"] = 1e-4
        eps = train_eps * min(1.0, (epoch + 1) / max(ramp_epochs, 1))
        order = torch.randperm(x.shape[0], generator=generator)
        started, total_loss, correct = time.perf_counter(), 0.0, 0
        for start in range(0, x.shape[0], batch_size):
            index = order[start : start + batch_size]
            xb, yb = x[index], y[index]
            model.eval()
            xb = pgd(model, xb, yb, eps, pgd_steps, generator)
            model.train()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total_loss += float(loss.detach()) * len(index)
            correct += int((logits.argmax(1) == yb).sum())
        print(f"  epoch {epoch + 1:2d}/{epochs}  train eps {eps:.3f}  loss {total_loss / x.shape[0]:.3f}  "
              f"{'adversarial' if eps else 'clean'} train acc {correct / x.shape[0]:.1%}  "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--ramp-epochs", type=int, default=4, help="epochs over which the training eps grows")
    parser.add_argument("--train-eps", type=float, default=0.3)
    parser.add_argument("--pgd-steps", type=int, default=7)
    parser.add_argument("--eps", type=float, default=0.3, help="Linf radius of the evaluation")
    parser.add_argument("--n-eval", type=int, default=500, help="first points of the hidden half that are attacked")
    parser.add_argument("--square-queries", type=int, default=None,
                        help=f"override Square's budget (default: the {SUITE_VERSION} suite's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--save", default=None, help="folder to save both state dicts in")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        fetch_dataset("mnist-test", Path(tmp), mirror=Path(args.shared) / "data")
        images, labels = load_dataset("mnist-test", Path(tmp))
    public, hidden = split_indices(len(labels), 0.5, SPLIT_SEED)
    x = torch.from_numpy(images.copy()).float().div(255.0)
    y = torch.from_numpy(labels.copy()).long()
    x_train, y_train = x[torch.from_numpy(public)], y[torch.from_numpy(public)]
    evaluation = torch.from_numpy(hidden[: args.n_eval])
    x_eval, y_eval = x[evaluation], y[evaluation]
    print(f"training on {len(public)} public images; attacking {len(evaluation)} hidden ones at Linf {args.eps}")

    suite = get_suite(SUITE_VERSION)
    if args.square_queries is not None:
        suite = SuiteConfig(f"{SUITE_VERSION}+square{args.square_queries}", square_queries=args.square_queries)

    started = time.perf_counter()
    print(f"PGD adversarial training (eps {args.train_eps}, {args.pgd_steps} steps):")
    robust = train(x_train, y_train, epochs=args.epochs, train_eps=args.train_eps, ramp_epochs=args.ramp_epochs,
                   pgd_steps=args.pgd_steps, seed=args.seed)
    robust_train_s = time.perf_counter() - started
    started = time.perf_counter()
    print("clean training:")
    clean = train(x_train, y_train, epochs=args.epochs, train_eps=0.0, ramp_epochs=1, pgd_steps=0, seed=args.seed)
    clean_train_s = time.perf_counter() - started
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        torch.save(robust.state_dict(), Path(args.save) / "digits_cnn_pgd.pt")
        torch.save(clean.state_dict(), Path(args.save) / "digits_cnn_clean.pt")

    threat = ThreatModel("Linf", args.eps)
    rows = []
    for name, model, train_s in (("PGD-trained", robust, robust_train_s), ("clean-trained", clean, clean_train_s)):
        report = run_cascade(model, x_eval, y_eval, [threat], suite=suite, seed=args.seed)
        tm = report.threat_models[0]
        rows.append((name, train_s, report, tm))
        stages = ", ".join(f"{s.attack} {s.robust_accuracy:.1%}" for s in tm.stages)
        print(f"{name}: clean {report.clean_accuracy:.1%}, robust {tm.robust_accuracy:.1%} "
              f"[{tm.ci_low:.1%}, {tm.ci_high:.1%}] after {stages}; {report.forward_passes:,} forward + "
              f"{report.backward_passes:,} backward passes, {report.seconds:.0f} s", flush=True)

    print(f"\nsuite {suite.version}, Linf eps {args.eps}, {len(evaluation)} hidden MNIST points, seed {args.seed}")
    header = f"{'model':<15}{'train s':>9}{'clean acc':>11}{'robust acc':>12}{'95% CI':>18}{'passes':>13}"
    print(f"  {header}{'attack s':>10}")
    for name, train_s, report, tm in rows:
        interval = f"[{tm.ci_low:.1%}, {tm.ci_high:.1%}]"
        passes = report.forward_passes + report.backward_passes
        print(f"  {name:<15}{train_s:>9.0f}{report.clean_accuracy:>11.1%}{tm.robust_accuracy:>12.1%}{interval:>18}"
              f"{passes:>13,}{report.seconds:>10.0f}")

    reliability = run_reliability_checks(robust, x_eval, y_eval, threat, subset=100, seed=args.seed,
                                         cascade_report=rows[0][3])
    print(f"\nreliability of the PGD-trained model's evaluation: {'UNRELIABLE' if reliability.unreliable else 'ok'}")
    for flag in reliability.flags:
        print(f"  [{'FLAG' if flag.flagged else ' ok '}] {flag.check}: {flag.explanation}")


if __name__ == "__main__":
    main()
