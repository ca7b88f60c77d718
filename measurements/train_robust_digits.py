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

L2 option: ``--train-norm L2`` trains against L2 PGD instead (random start in the L2 ball,
steps along the L2-normalised gradient of length 2.5 eps / steps, projection onto the L2 ball
and the [0, 1] box, the same eps ramp); ``--train-eps`` and ``--eps`` then default to 2.0 and
the evaluation runs at L2 ``--eps``. ``--save DIR`` writes each state dict as soon as its model
is trained (to a temporary name, then renamed, so a reader never sees half a file):
``digits_cnn_pgd_linf.pt`` or ``digits_cnn_pgd_l2.pt`` (or ``--save-name``) and
``digits_cnn_clean.pt``; load them into :class:`DigitsCNN` with ``torch.load(path,
weights_only=True)``. ``--no-twin`` skips the clean twin, ``--no-eval`` the suite's evaluation
and the reliability checks (a quick clean and 20-step PGD accuracy on the evaluation points is
printed instead).

    .venv/bin/python measurements/train_robust_digits.py --save /work/robust-models --no-twin --no-eval
    .venv/bin/python measurements/train_robust_digits.py --train-norm L2 --train-eps 2.0 \
        --save /work/robust-models --no-twin --no-eval
"""

from __future__ import annotations

import argparse
import os
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
from evaluator.attacks.threat import ThreatModel, project, random_in_ball, steepest_direction  # noqa: E402
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
        generator: torch.Generator, norm: str = "Linf") -> torch.Tensor:
    """PGD with a random start and step 2.5 eps / steps (Madry et al.), Linf or L2.

    Linf: a uniform start in the box, sign-of-gradient steps, clipping to ball and box. L2: a
    uniform start in the L2 ball, steps along the L2-normalised gradient, projection onto the
    L2 ball (radial rescale) and then the box.
    """
    if eps <= 0:
        return x
    step = 2.5 * eps / steps
    if norm == "Linf":
        x_adv = (x + eps * (2 * torch.rand(x.shape, generator=generator) - 1)).clamp(0, 1)
    elif norm == "L2":
        x_adv = random_in_ball(x, "L2", eps, generator, on_sphere=False)
    else:
        raise ValueError(f"unknown norm {norm!r}")
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, [x_adv])
        with torch.no_grad():
            if norm == "Linf":
                x_adv = x_adv + step * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
            else:
                x_adv = project(x_adv + step * steepest_direction(grad, "L2"), x, "L2", eps)
    return x_adv.detach()


def save_state_dict(model: nn.Module, path: Path) -> None:
    """Writes to a temporary name in the same folder, then renames: a reader sees all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save(model.state_dict(), partial)
    os.replace(partial, path)
    print(f"  saved {path}", flush=True)


def quick_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, seed: int,
                batch_size: int = 250) -> tuple[float, float]:
    """Clean and 20-step PGD accuracy (a sanity check, not the suite's evaluation)."""
    generator = torch.Generator().manual_seed(seed)
    clean = robust = 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
        x_adv = pgd(model, xb, yb, eps, 20, generator, norm)
        with torch.no_grad():
            robust += int((model(x_adv).argmax(1) == yb).sum())
    return clean / x.shape[0], robust / x.shape[0]


def train(x: torch.Tensor, y: torch.Tensor, *, epochs: int, train_eps: float, ramp_epochs: int, pgd_steps: int,
          seed: int, batch_size: int = 50, norm: str = "Linf") -> nn.Module:
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
            xb = pgd(model, xb, yb, eps, pgd_steps, generator, norm)
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
    parser.add_argument("--train-norm", choices=("Linf", "L2"), default="Linf", help="norm of the training PGD")
    parser.add_argument("--train-eps", type=float, default=None, help="training radius (default 0.3 Linf, 2.0 L2)")
    parser.add_argument("--pgd-steps", type=int, default=7)
    parser.add_argument("--eps", type=float, default=None,
                        help="radius of the evaluation, in the training norm (default 0.3 Linf, 2.0 L2)")
    parser.add_argument("--n-eval", type=int, default=500, help="first points of the hidden half that are attacked")
    parser.add_argument("--square-queries", type=int, default=None,
                        help=f"override Square's budget (default: the {SUITE_VERSION} suite's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--save", default=None, help="folder to save the state dicts in")
    parser.add_argument("--save-name", default=None,
                        help="file name of the PGD model's state dict (default digits_cnn_pgd_<norm>.pt)")
    parser.add_argument("--no-twin", action="store_true", help="do not train the clean twin")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the suite's evaluation and the reliability checks (print a quick PGD check)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    norm = args.train_norm
    default_eps = 0.3 if norm == "Linf" else 2.0
    train_eps = default_eps if args.train_eps is None else args.train_eps
    eval_eps = default_eps if args.eps is None else args.eps
    save_dir = Path(args.save) if args.save else None
    robust_name = args.save_name or f"digits_cnn_pgd_{norm.lower()}.pt"

    with tempfile.TemporaryDirectory() as tmp:
        fetch_dataset("mnist-test", Path(tmp), mirror=Path(args.shared) / "data")
        images, labels = load_dataset("mnist-test", Path(tmp))
    public, hidden = split_indices(len(labels), 0.5, SPLIT_SEED)
    x = torch.from_numpy(images.copy()).float().div(255.0)
    y = torch.from_numpy(labels.copy()).long()
    x_train, y_train = x[torch.from_numpy(public)], y[torch.from_numpy(public)]
    evaluation = torch.from_numpy(hidden[: args.n_eval])
    x_eval, y_eval = x[evaluation], y[evaluation]
    print(f"training on {len(public)} public images; attacking {len(evaluation)} hidden ones at {norm} {eval_eps}")

    suite = get_suite(SUITE_VERSION)
    if args.square_queries is not None:
        suite = SuiteConfig(f"{SUITE_VERSION}+square{args.square_queries}", square_queries=args.square_queries)

    started = time.perf_counter()
    print(f"PGD adversarial training ({norm} eps {train_eps}, {args.pgd_steps} steps):")
    robust = train(x_train, y_train, epochs=args.epochs, train_eps=train_eps, ramp_epochs=args.ramp_epochs,
                   pgd_steps=args.pgd_steps, seed=args.seed, norm=norm)
    robust_train_s = time.perf_counter() - started
    print(f"  trained in {robust_train_s:.0f} s", flush=True)
    if save_dir:
        save_state_dict(robust, save_dir / robust_name)
    models = [("PGD-trained", robust, robust_train_s)]
    if not args.no_twin:
        started = time.perf_counter()
        print("clean training:")
        clean = train(x_train, y_train, epochs=args.epochs, train_eps=0.0, ramp_epochs=1, pgd_steps=0, seed=args.seed)
        clean_train_s = time.perf_counter() - started
        if save_dir:
            save_state_dict(clean, save_dir / "digits_cnn_clean.pt")
        models.append(("clean-trained", clean, clean_train_s))

    if args.no_eval:
        print(f"\nquick check on {len(evaluation)} hidden points (20-step {norm} PGD at eps {eval_eps}, "
              "not the suite):")
        for name, model, train_s in models:
            clean_acc, pgd_acc = quick_check(model, x_eval, y_eval, norm, eval_eps, args.seed)
            print(f"  {name:<15} trained {train_s:.0f} s, clean {clean_acc:.1%}, PGD-20 {pgd_acc:.1%}", flush=True)
        return

    threat = ThreatModel(norm, eval_eps)
    rows = []
    for name, model, train_s in models:
        report = run_cascade(model, x_eval, y_eval, [threat], suite=suite, seed=args.seed)
        tm = report.threat_models[0]
        rows.append((name, train_s, report, tm))
        stages = ", ".join(f"{s.attack} {s.robust_accuracy:.1%}" for s in tm.stages)
        print(f"{name}: clean {report.clean_accuracy:.1%}, robust {tm.robust_accuracy:.1%} "
              f"[{tm.ci_low:.1%}, {tm.ci_high:.1%}] after {stages}; {report.forward_passes:,} forward + "
              f"{report.backward_passes:,} backward passes, {report.seconds:.0f} s", flush=True)

    print(f"\nsuite {suite.version}, {norm} eps {eval_eps}, {len(evaluation)} hidden MNIST points, seed {args.seed}")
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
