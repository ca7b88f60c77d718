"""The project's attack suite side by side with the official AutoAttack, on the same model and points.

Every model is attacked under every threat model of its track
(:data:`evaluator.attacks.threat.TRACK_THREAT_MODELS`: digits Linf 0.3 and L2 2.0, CIFAR-10
Linf 8/255 and L2 0.5):

- ``digits_pgd_linf``, ``digits_pgd_l2``: the PGD-trained digits CNNs of
  ``measurements/train_robust_digits.py`` (``digits_cnn_pgd_linf.pt``, ``digits_cnn_pgd_l2.pt``
  under ``--robust-dir``), on the first n points of the hidden half of the MNIST test split,
  split exactly as that script splits it (``split_indices(10000, 0.5, 20261125)``);
- ``mnist_lenet5``: the shared clean-trained LeNet-5, on the first n MNIST test images;
- ``cifar_resnet20``: the shared ResNet-20, on n evenly spaced CIFAR-10 test images (the JPEG
  set loads class by class, so its first images are all airplanes).

The official AutoAttack (``version="standard"``: APGD-CE, APGD-T, FAB-T, Square) is imported
from a checkout given by ``--autoattack`` or the ``AUTOATTACK_PATH`` environment variable (a
clone of github.com/fra31/auto-attack; it is installed nowhere in this project). Ours is the
suite ``--suite`` (default: the platform's :data:`~evaluator.attacks.cascade.SUITE_VERSION`),
run through :func:`evaluator.attacks.cascade.attack_threat_model`, which keeps per-point
outcomes; ``--reliability-points K`` adds what a job adds (the reliability checks on K points
after the cascade, a fired check making a suite with escalation stages escalate). Both models
are wrapped in :class:`evaluator.attacks.counting.CountingModel`, so passes are counted the
same way (images through forward, images through backward; each side's clean pass included).
AutoAttack's output is scored here, not taken from its log: a point counts as broken when its
returned image lies in the ball (norm <= eps (1 + 1e-5)) and is misclassified (or was
misclassified to begin with).

Printed per (model, threat model) row: clean accuracy; robust accuracy of each suite; the
points ours breaks that AutoAttack does not, and the reverse; forward and backward passes,
CPU seconds (``time.process_time``) and wall seconds of each; ours minus AutoAttack in
percentage points and the passes ratio; robust accuracy after each stage of both (AutoAttack's
parsed from its verbose log, which goes to ``<json>.autoattack.log`` when ``--json`` is
given). Then a Markdown table of all rows and whether every row meets the target: ours at most
0.5 points above AutoAttack's robust accuracy. ``--json`` is rewritten after every row;
``--resume`` keeps the rows already in it (same model, threat model, n, suite and seed).

    AUTOATTACK_PATH=/tmp/autoattack_src .venv/bin/python measurements/attack_vs_autoattack.py \\
        --n 200 --json /tmp/aa.json [--models digits_pgd_l2 --threats L2 --suite attacks-2]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "measurements"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from train_robust_digits import SPLIT_SEED, DigitsCNN  # noqa: E402

from evaluator.attacks.cascade import SUITE_VERSION, attack_threat_model, get_suite  # noqa: E402
from evaluator.attacks.common import predict_logits  # noqa: E402
from evaluator.attacks.counting import CountingModel  # noqa: E402
from evaluator.attacks.reliability import run_reliability_checks  # noqa: E402
from evaluator.attacks.threat import TRACK_THREAT_MODELS, ThreatModel, lp_norm  # noqa: E402
from evaluator.data.evalsets import split_indices  # noqa: E402
from evaluator.data.fetch import fetch_dataset, load_dataset  # noqa: E402
from evaluator.models.convert import convert_checkpoint  # noqa: E402
from evaluator.models.zoo import build_model  # noqa: E402

#: Target: ours may be at most this many percentage points above AutoAttack's robust accuracy.
TOLERANCE_POINTS = 0.5


@dataclass(frozen=True)
class Setup:
    """One model of the comparison: where its weights and points come from, and its track."""

    track: str
    dataset: str
    #: "first" (the first n), "spread" (n evenly spaced) or "hidden" (the first n of the hidden half).
    points: str
    #: A zoo architecture and its checkpoint under the shared models folder ...
    arch: str = ""
    checkpoint: str = ""
    #: ... or a DigitsCNN state dict under --robust-dir.
    state_dict: str = ""


SETUPS: dict[str, Setup] = {
    "digits_pgd_linf": Setup("digits", "mnist-test", "hidden", state_dict="digits_cnn_pgd_linf.pt"),
    "digits_pgd_l2": Setup("digits", "mnist-test", "hidden", state_dict="digits_cnn_pgd_l2.pt"),
    "mnist_lenet5": Setup("digits", "mnist-test", "first", "mnist_lenet5", "mnist/mnist_lenet5_clntrained.pt"),
    "cifar_resnet20": Setup("cifar10", "cifar10-jpeg-test", "spread", "cifar_resnet20", "cifar10/resnet20-12fca82f.th"),
}


def import_autoattack(path: str | None) -> Any:
    """The official ``autoattack`` package from a checkout outside this repository."""
    path = path or os.environ.get("AUTOATTACK_PATH")
    if not path:
        raise SystemExit("give the AutoAttack checkout with --autoattack or AUTOATTACK_PATH")
    sys.path.insert(0, str(Path(path).resolve()))
    return importlib.import_module("autoattack").AutoAttack


def load_setup(name: str, work: Path, models_dir: Path, robust_dir: Path, mirror: Path, n: int,
               spread: bool) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, np.ndarray, str]:
    """The model (eval mode), its n points in [0, 1], their labels, their dataset indices and how they were chosen."""
    setup = SETUPS[name]
    if setup.state_dict:
        model: torch.nn.Module = DigitsCNN()
        model.load_state_dict(torch.load(robust_dir / setup.state_dict, map_location="cpu", weights_only=True))
    else:
        weights = work / f"{setup.arch}.safetensors"
        convert_checkpoint(setup.arch, models_dir / setup.checkpoint, weights)
        model = build_model(setup.arch)
        model.load_state_dict(load_file(str(weights)))
    model.eval()
    data_root = work / "data"
    fetch_dataset(setup.dataset, data_root, mirror=mirror)
    images, labels = load_dataset(setup.dataset, data_root)
    points = "spread" if spread and setup.points == "first" else setup.points
    if points == "hidden":
        index = split_indices(len(labels), 0.5, SPLIT_SEED)[1][:n].astype(np.int64)
        described = f"first {len(index)} of the hidden half"
    elif points == "spread":
        index = np.linspace(0, len(labels) - 1, n).round().astype(np.int64)
        described = f"{len(index)} evenly spaced"
    else:
        index = np.arange(min(n, len(labels)))
        described = f"first {len(index)}"
    x = torch.from_numpy(images[index].copy()).float().div(255.0)
    y = torch.from_numpy(labels[index].copy()).long()
    return model, x, y, index, described


def select_threats(track: str, wanted: list[str]) -> list[ThreatModel]:
    """The track's threat models, filtered by norm ("L2") or key ("L2:2"); all when ``wanted`` is empty."""
    threats = list(TRACK_THREAT_MODELS[track])
    if not wanted:
        return threats
    return [t for t in threats if t.norm in wanted or t.key in wanted]


class _Clock:
    """CPU seconds (``time.process_time``) and wall seconds since it was made."""

    def __init__(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def read(self) -> tuple[float, float]:
        return time.process_time() - self.cpu, time.perf_counter() - self.wall


def run_ours(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, suite: str, seed: int,
             batch_size: int, reliability_points: int = 0) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Our suite under one threat model; the row's numbers, the clean-correct mask and the per-point robust mask.

    ``reliability_points`` > 0 does what a job does: the reliability checks run on that many
    points after the cascade, and a check that fires makes the suite escalate (their passes
    count as ours).
    """
    counted = CountingModel(model)
    flags: list[str] = []
    extra: dict[str, Any] = {}
    if reliability_points > 0:
        if "checks" not in inspect.signature(attack_threat_model).parameters:
            raise SystemExit("--reliability-points needs a cascade whose attack_threat_model takes checks=")

        def checks(threat: ThreatModel, outcome: Any) -> list[str]:
            # Before attacks-5 the callback got the report itself; since, the per-point outcome.
            report = getattr(outcome, "report", outcome)
            lent = ({"cascade_points": outcome} if getattr(get_suite(suite), "reliability_reuses_white_box", False)
                    else {})
            result = run_reliability_checks(counted, x, y, threat, subset=reliability_points, seed=seed,
                                            cascade_report=report, batch_size=batch_size, **lent)
            flags.extend(flag.check for flag in result.flags if flag.flagged)
            return [flag.check for flag in result.flags if flag.flagged]

        extra["checks"] = checks
    clock = _Clock()
    clean_correct = predict_logits(counted, x, batch_size).argmax(dim=1) == y
    outcome = attack_threat_model(counted, x, y, clean_correct, threat, suite=suite, seed=seed, batch_size=batch_size,
                                  **extra)
    cpu, wall = clock.read()
    report = outcome.report
    return {
        "suite": get_suite(suite).version,
        "clean_accuracy": float(clean_correct.float().mean()),
        "robust_accuracy": float(outcome.robust.float().mean()),
        "robust_points": int(outcome.robust.sum()),
        "forward": counted.forward_passes,
        "backward": counted.backward_passes,
        "cpu_seconds": cpu,
        "seconds": wall,
        "reliability_points": reliability_points,
        "reliability_flags": flags,
        "escalated_for": list(getattr(report, "escalated_for", [])),
        "stages": [
            {"attack": s.attack, "attacked": s.attacked, "broken": s.broken, "robust_accuracy": s.robust_accuracy,
             "forward": s.forward_passes, "backward": s.backward_passes, "seconds": s.seconds}
            for s in report.stages
        ],
    }, clean_correct, outcome.robust.clone()


class _Tee(io.TextIOBase):
    """Collects what is printed (to parse it) and copies it to a log file, if any."""

    def __init__(self, log: TextIO | None) -> None:
        self.buffer_ = io.StringIO()
        self.log = log

    def write(self, text: str) -> int:
        self.buffer_.write(text)
        if self.log is not None:
            self.log.write(text)
            self.log.flush()
        return len(text)


_AA_INITIAL = re.compile(r"^initial accuracy: ([\d.]+)%", re.MULTILINE)
_AA_STAGE = re.compile(r"^robust accuracy after ([A-Z0-9-]+): ([\d.]+)% \(total time ([\d.]+) s\)", re.MULTILINE)


def parse_autoattack_log(text: str, n: int) -> list[dict[str, Any]]:
    """AutoAttack's robust accuracy (and cumulative seconds) after each of its attacks, from its verbose log."""
    stages = []
    for match in _AA_STAGE.finditer(text):
        accuracy = float(match.group(2)) / 100
        stages.append({"attack": match.group(1).lower(), "robust_accuracy": accuracy,
                       "robust_points": round(accuracy * n), "cumulative_seconds": float(match.group(3))})
    return stages


def run_autoattack(auto_attack: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                   seed: int, batch_size: int, log: TextIO | None) -> tuple[dict[str, Any], torch.Tensor]:
    """AutoAttack standard under one threat model; the row's numbers and the per-point robust mask (scored here)."""
    counted = CountingModel(model)
    tee = _Tee(log)
    clock = _Clock()
    with contextlib.redirect_stdout(tee):
        adversary = auto_attack(counted, norm=threat.norm, eps=threat.eps, version="standard", seed=seed,
                                device="cpu", verbose=True)
        x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
    cpu, wall = clock.read()
    forward, backward = counted.forward_passes, counted.backward_passes
    # Scoring AutoAttack's output is not part of its cost.
    clean_correct = predict_logits(model, x, batch_size).argmax(dim=1) == y
    predicted = predict_logits(model, x_adv, batch_size).argmax(dim=1)
    inside = lp_norm(x_adv - x, threat.norm) <= threat.eps * (1 + 1e-5)
    broken = ~clean_correct | (inside & (predicted != y))
    robust = ~broken
    text = tee.buffer_.getvalue()
    initial = _AA_INITIAL.search(text)
    return {
        "clean_accuracy": float(clean_correct.float().mean()),
        "robust_accuracy": float(robust.float().mean()),
        "robust_points": int(robust.sum()),
        "forward": forward,
        "backward": backward,
        "cpu_seconds": cpu,
        "seconds": wall,
        "max_perturbation": float(lp_norm(x_adv - x, threat.norm).max()),
        "outside_ball": int((~inside).sum()),
        "logged_clean_accuracy": float(initial.group(1)) / 100 if initial else None,
        "stages": parse_autoattack_log(text, len(y)),
    }, robust


def threat_label(threat: ThreatModel) -> str:
    """``Linf 8/255`` for a radius of whole grey levels, else ``L2 0.5``."""
    levels = threat.eps * 255
    if threat.norm == "Linf" and threat.eps < 0.1 and abs(levels - round(levels)) < 1e-6:
        return f"Linf {round(levels)}/255"
    return f"{threat.norm} {threat.eps:g}"


def row_key(model: str, threat: ThreatModel) -> str:
    return f"{model}|{threat.key}"


def print_row(row: dict[str, Any]) -> None:
    ours, theirs = row["ours"], row["autoattack"]
    print(f"\n{row['model']}  ({row['threat']}, {row['points']}, {row['classes']} classes, "
          f"clean {ours['clean_accuracy']:.2%}; suite {ours['suite']})")
    print(f"  {'suite':<12}{'robust acc':>12}{'forward':>12}{'backward':>12}{'passes':>12}{'CPU s':>10}{'wall s':>10}")
    for label, r in (("ours", ours), ("AutoAttack", theirs)):
        print(f"  {label:<12}{r['robust_accuracy']:>12.2%}{r['forward']:>12,}{r['backward']:>12,}"
              f"{r['forward'] + r['backward']:>12,}{r['cpu_seconds']:>10.1f}{r['seconds']:>10.1f}")
    print(f"  ours - AutoAttack: {row['gap_points']:+.2f} points robust accuracy; "
          f"passes ratio {row['passes_ratio']:.3f}; ours breaks {row['ours_only']} points AutoAttack does not, "
          f"AutoAttack {row['autoattack_only']} ours does not")
    ours_stages = ", ".join(f"{s['attack']} {s['robust_accuracy']:.2%}" for s in ours["stages"])
    if ours.get("escalated_for"):
        ours_stages += f" (escalated for {', '.join(ours['escalated_for'])})"
    their_stages = ", ".join(f"{s['attack']} {s['robust_accuracy']:.2%}" for s in theirs["stages"]) or "(not parsed)"
    print(f"  stages, ours: {ours_stages}")
    print(f"  stages, AutoAttack: {their_stages}")
    if theirs["outside_ball"]:
        print(f"  !! {theirs['outside_ball']} AutoAttack images outside the ball "
              f"(max {theirs['max_perturbation']:.5f})")
    verdict = "meets" if row["meets_target"] else "MISSES"
    print(f"  {verdict} ours <= AutoAttack + {TOLERANCE_POINTS} points", flush=True)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | threat | n | clean | ours | AutoAttack | ours − AA (pts) | ours only | AA only | "
        "passes ours | passes AA | ratio | CPU s ours | CPU s AA | meets |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for row in rows:
        ours, theirs = row["ours"], row["autoattack"]
        passes_ours, passes_aa = ours["forward"] + ours["backward"], theirs["forward"] + theirs["backward"]
        lines.append(
            f"| {row['model']} | {row['threat']} | {row['n']} | {ours['clean_accuracy']:.1%} | "
            f"{ours['robust_accuracy']:.1%} | {theirs['robust_accuracy']:.1%} | {row['gap_points']:+.1f} | "
            f"{row['ours_only']} | {row['autoattack_only']} | {passes_ours:,} | {passes_aa:,} | "
            f"{row['passes_ratio']:.2f} | {ours['cpu_seconds']:.0f} | {theirs['cpu_seconds']:.0f} | "
            f"{'yes' if row['meets_target'] else 'no'} |"
        )
    return "\n".join(lines)


def markdown_stages(rows: list[dict[str, Any]]) -> str:
    """Robust accuracy after each stage of both suites, one row per (model, threat model)."""
    lines = ["| model | threat | ours, after each stage | AutoAttack, after each stage |", "|---|---|---|---|"]
    for row in rows:
        cells = []
        for side in (row["ours"], row["autoattack"]):
            cells.append(" → ".join(f"{s['attack']} {s['robust_accuracy']:.1%}" for s in side["stages"]) or "–")
        lines.append(f"| {row['model']} | {row['threat']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(results, indent=2))
    os.replace(partial, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(SETUPS), help="comma-separated: " + ",".join(SETUPS))
    parser.add_argument("--threats", default="",
                        help="comma-separated norms (Linf, L2) or keys (L2:2); default every threat model of the track")
    parser.add_argument("--n", type=int, default=1000, help="points per model")
    parser.add_argument("--n-cifar", type=int, default=None, help="points for cifar_resnet20 (default --n)")
    parser.add_argument("--n-model", action="append", default=[], metavar="MODEL=N", help="points for one model")
    parser.add_argument("--spread", action="store_true",
                        help="mnist_lenet5 on n evenly spaced test images too (CIFAR always is)")
    parser.add_argument("--suite", default=SUITE_VERSION, help="our suite version (evaluator.attacks.cascade.SUITES)")
    parser.add_argument("--autoattack", default=None, help="path to a fra31/auto-attack checkout (or AUTOATTACK_PATH)")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="folder with data/ and models/")
    parser.add_argument("--robust-dir", default="/work/robust-models", help="folder with the PGD-trained digits CNNs")
    parser.add_argument("--reliability-points", type=int, default=0,
                        help="run the reliability checks on this many points after our cascade, as a job does "
                             "(a fired check makes the suite escalate); 0: the suite alone")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--json", default=None, help="write the numbers to this file (rewritten after every row)")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --json and skip them")
    parser.add_argument("--autoattack-from", default=None,
                        help="a JSON of an earlier run: reuse its AutoAttack results (same model, threat, n, seed)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    try:
        suite = get_suite(args.suite).version  # an unknown suite fails here, not after the first model
    except ValueError as error:
        raise SystemExit(str(error)) from None
    auto_attack = import_autoattack(args.autoattack)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in SETUPS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; known: {list(SETUPS)}")
    wanted = [t.strip() for t in args.threats.split(",") if t.strip()]
    n_for = {m: args.n for m in SETUPS}
    if args.n_cifar is not None:
        n_for["cifar_resnet20"] = args.n_cifar
    for item in args.n_model:
        name, _, value = item.partition("=")
        n_for[name.strip()] = int(value)

    shared = Path(args.shared)
    json_path = Path(args.json) if args.json else None
    results: dict[str, Any] = {"suite": suite, "seed": args.seed, "threads": args.threads,
                               "reliability_points": args.reliability_points,
                               "tolerance_points": TOLERANCE_POINTS, "torch": torch.__version__, "rows": []}
    done: dict[str, dict[str, Any]] = {}
    if json_path and args.resume and json_path.exists():
        for row in json.loads(json_path.read_text()).get("rows", []):
            done[row["key"]] = row
    reusable: dict[str, Any] = {}
    if args.autoattack_from:
        reusable = {row["key"]: row for row in json.loads(Path(args.autoattack_from).read_text()).get("rows", [])}
    log = open(json_path.with_suffix(".autoattack.log"), "a") if json_path else None  # noqa: SIM115
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in models:
                threats = select_threats(SETUPS[name].track, wanted)
                n = n_for[name]
                kept = [done.get(row_key(name, t)) for t in threats]
                kept = [r for r in kept if r and r["n"] == n and r["ours"]["suite"] == suite and r["seed"] == args.seed
                        and r["ours"].get("reliability_points", 0) == args.reliability_points]
                if len(kept) == len(threats):
                    for row in kept:
                        print(f"\n(kept from {json_path})", end="")
                        print_row(row)
                        rows.append(row)
                    continue
                model, x, y, index, described = load_setup(name, Path(tmp), shared / "models", Path(args.robust_dir),
                                                           shared / "data", n, args.spread)
                for threat in threats:
                    key = row_key(name, threat)
                    previous = next((r for r in kept if r["key"] == key), None)
                    if previous:
                        print(f"\n(kept from {json_path})", end="")
                        print_row(previous)
                        rows.append(previous)
                        continue
                    print(f"\n== {name} {threat_label(threat)}, {described} points ...", flush=True)
                    if log:
                        log.write(f"\n== {name} {threat.key} n={n} suite={suite} seed={args.seed}\n")
                    ours, clean_correct, ours_robust = run_ours(model, x, y, threat, suite, args.seed, args.batch_size,
                                                                args.reliability_points)
                    reused = reusable.get(key)
                    if reused is not None and reused["n"] == n and reused["seed"] == args.seed \
                            and "robust_indices" in reused["autoattack"]:
                        # AutoAttack does not depend on our suite: its row from an earlier run on the same points.
                        theirs = reused["autoattack"]
                        aa_robust = torch.from_numpy(np.isin(index, theirs["robust_indices"]))
                        print(f"  (AutoAttack's result reused from {args.autoattack_from})")
                    else:
                        theirs, aa_robust = run_autoattack(auto_attack, model, x, y, threat, args.seed,
                                                           args.batch_size, log)
                        theirs["robust_indices"] = index[aa_robust.numpy()].tolist()
                    if not bool((aa_robust <= clean_correct).all()):
                        raise AssertionError("AutoAttack's robust points must be clean-correct")
                    if abs(theirs["clean_accuracy"] - ours["clean_accuracy"]) > 0:
                        print(f"  !! clean accuracy differs: ours {ours['clean_accuracy']:.2%}, "
                              f"AutoAttack's scoring {theirs['clean_accuracy']:.2%}")
                    ours_only = (~ours_robust & aa_robust).nonzero().squeeze(1)
                    aa_only = (ours_robust & ~aa_robust).nonzero().squeeze(1)
                    gap = (ours["robust_points"] - theirs["robust_points"]) / len(y) * 100
                    passes_aa = theirs["forward"] + theirs["backward"]
                    row = {
                        "key": key, "model": name, "threat": threat_label(threat), "norm": threat.norm,
                        "eps": threat.eps, "n": n, "seed": args.seed,
                        "points": described, "classes": len(set(y.tolist())),
                        "ours": ours, "autoattack": theirs,
                        "gap_points": gap,
                        "passes_ratio": (ours["forward"] + ours["backward"]) / max(passes_aa, 1),
                        "ours_only": int(ours_only.numel()), "autoattack_only": int(aa_only.numel()),
                        "ours_only_indices": index[ours_only.numpy()].tolist(),
                        "autoattack_only_indices": index[aa_only.numpy()].tolist(),
                        "meets_target": gap <= TOLERANCE_POINTS + 1e-9,
                    }
                    print_row(row)
                    rows.append(row)
                    done[key] = row
                    if json_path:
                        results["rows"] = list(done.values())
                        write_json(json_path, results)
    finally:
        if log:
            log.close()

    print(f"\n## Ours ({suite}) vs AutoAttack standard, seed {args.seed}, {args.threads} thread(s)\n")
    print(markdown_table(rows))
    print()
    print(markdown_stages(rows))
    missing = [f"{r['model']} {r['threat']} ({r['gap_points']:+.1f})" for r in rows if not r["meets_target"]]
    verdict = "yes" if not missing else "no: " + ", ".join(missing)
    print(f"\nEvery row meets ours <= AutoAttack + {TOLERANCE_POINTS} points: {verdict}")


if __name__ == "__main__":
    main()
