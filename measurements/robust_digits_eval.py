"""A PGD-trained digits model evaluated on the demo's digits track exactly as the platform runs it.

Issue 19, "A robust model finishes": the held-out PGD-trained model a new user uploads to the demo's
digits track must be fully evaluated on this 2-core machine in under 15 minutes. This script builds
the job a worker would run for that upload and times it stage by stage:

* the model: ``digits_cnn_pgd_linf.pt`` from ``measurements/train_robust_digits.py`` (trained on the
  public half of the MNIST test set; ``--robust-dir``), exported to a ``.pt2`` as a researcher
  uploads it (:func:`evaluator.models.convert.export_module`);
* the track: seed, suite, threat models, attack points, reliability points and sets read from
  ``platform/builders/bundles/demo-digits.yaml`` (:func:`gpu_check.read_track`); the sets built as the
  bundle says: the hidden MNIST half (the complement of the training half, ``split_indices(10000, 0.5,
  SPLIT_SEED)``: the platform seeds its split with the installation's secret, this script with the
  training script's seed so that no training image is attacked), USPS in MNIST's framing, and
  ImageNet-C's corruptions on the hidden half (``per_cell`` from the bundle; the platform seeds them
  from its secret, this script with ``--corruption-seed``); batch size and time budget are the
  platform's defaults for a track (256 images, 60 s);
* the run: :func:`evaluator.sandbox.run_sandboxed`, the path a worker takes (scorer child process,
  model in bubblewrap), with ``--threads`` torch threads per process (the platform's default,
  ``ARENA_EVAL_THREADS=0``, is every core: 2 here).

Printed from the result's provenance: start-up, the sets' pass, each threat model's cascade stages
(points attacked and broken, passes, seconds), its reliability checks (the threat model's seconds
less its stages'), its escalation stages, the model's round trips, and whether the whole job is under
the 15 minutes the issue asks for.

    .venv/bin/python measurements/robust_digits_eval.py [--json out.json] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "measurements"))

import torch  # noqa: E402
import yaml  # noqa: E402
from gpu_check import git_commit, mib, read_track, run, speed  # noqa: E402
from train_robust_digits import SPLIT_SEED, DigitsCNN  # noqa: E402

from evaluator.data.evalsets import split_indices, write_evaluation_set  # noqa: E402
from evaluator.data.fetch import fetch_dataset, load_dataset  # noqa: E402
from evaluator.data.framing import usps_to_mnist_framing  # noqa: E402
from evaluator.models.convert import export_module  # noqa: E402
from evaluator.sandbox import SandboxLimits, SandboxUnavailable  # noqa: E402
from evaluator.shifts.corruptions import build_corruption_set  # noqa: E402
from evaluator.spec import ArtifactSpec, EvaluationSetSpec, InputSpec, JobResult, JobSpec  # noqa: E402

BUNDLE = ROOT / "platform" / "builders" / "bundles" / "demo-digits.yaml"
TRACK = "mnist-digits"
#: The issue's target for the whole job on this 2-core machine.
TARGET_SECONDS = 15 * 60
#: A track's batch size and per-batch time budget when its bundle names none (benchmarks.models.Track).
TRACK_BATCH_SIZE = 256
TRACK_TIME_BUDGET_S = 60.0


def track_sets(path: Path = BUNDLE, slug: str = TRACK) -> dict[str, Any]:
    """The track's evaluation sets by name, as the bundle lists them (role, split, corruption settings)."""
    bundle = yaml.safe_load(path.read_text())
    track = next(t for t in bundle["tracks"] if t["slug"] == slug)
    return {s["name"]: s for s in track["evaluation_sets"]}


def build_sets(folder: Path, data_mirror: Path, corruption_seed: int, per_cell: int | None,
               hidden_limit: int | None) -> tuple[EvaluationSetSpec, ...]:
    """The track's three sets, written under ``folder`` as the platform stores them."""
    listed = track_sets()
    fetch_dataset("mnist-test", folder / "sources", mirror=data_mirror)
    fetch_dataset("usps", folder / "sources", mirror=data_mirror)
    images, labels = load_dataset("mnist-test", folder / "sources")
    _public, hidden = split_indices(len(labels), 0.5, SPLIT_SEED)
    if hidden_limit:
        hidden = hidden[:hidden_limit]
    specs = []
    clean_images, clean_labels = images[hidden], labels[hidden]
    for name, entry in listed.items():
        target = folder / f"{name}.safetensors"
        if entry["role"] == "clean":
            sha = write_evaluation_set(target, clean_images, clean_labels)
        elif "generate" in entry:
            generate = entry["generate"]
            cell = min(per_cell or generate["per_cell"], len(clean_labels))
            c_images, c_labels, groups, names = build_corruption_set(
                clean_images, clean_labels, base_seed=corruption_seed, per_cell=cell,
                definition=generate["definition"])
            sha = write_evaluation_set(target, c_images, c_labels, {}, groups=groups, group_names=names)
        else:
            u_images, u_labels = load_dataset("usps", folder / "sources")
            sha = write_evaluation_set(target, usps_to_mnist_framing(u_images), u_labels)
        specs.append(EvaluationSetSpec(name, str(target), sha, entry["role"]))
    # The platform orders a track's sets by role then id: clean first, then the shifts as listed.
    return tuple(sorted(specs, key=lambda s: s.role != "clean"))


def export_model(state_dict: Path, target: Path) -> Path:
    """The PGD-trained CNN as a researcher uploads it: a ``.pt2`` with a dynamic batch dimension."""
    model = DigitsCNN()
    model.load_state_dict(torch.load(state_dict, map_location="cpu", weights_only=True))
    export_module(model, InputSpec(1, 28, 28), target)
    return target


def stage_table(result: JobResult) -> list[dict[str, Any]]:
    """Per threat model: its stages, reliability checks and escalation, as rows."""
    rows = []
    attacks = result.provenance.get("attacks", {})
    # In the track's order (the provenance's keys come back sorted).
    order = [t.label for t in read_track(BUNDLE, TRACK).threat_models]
    for label in sorted(attacks, key=lambda k: order.index(k) if k in order else len(order)):
        record = attacks[label]
        stage_seconds = 0.0
        for stage in record["stages"]:
            stage_seconds += stage["seconds"]
            rows.append({"threat": label, "part": "escalation" if stage["attack"].startswith("esc-") else "cascade",
                         **stage})
        # The threat model's seconds run from its first stage to its last; what its stages do not cover is
        # the reliability checks (run between the cascade and the escalation).
        rows.append({"threat": label, "part": "reliability", "attack": "reliability checks",
                     "seconds": round(record["seconds"] - stage_seconds, 3),
                     "flags": [f["check"] for f in record.get("flags", []) if f.get("flagged")],
                     "escalated_for": record.get("escalated_for", [])})
    return rows


def report(result: JobResult, threads: int, load: tuple[float, float, float]) -> dict[str, Any]:
    """Prints the job's stages and totals; returns them."""
    prov = result.provenance
    numbers = speed(result)
    rows = stage_table(result)
    job_seconds = float(prov["seconds"])
    print(f"\njob: {prov.get('images', 0):,} images in the sets, model process {prov.get('model_process')}, "
          f"batch {prov['batch_size']['batch_size']}, {threads} thread(s) per process")
    print(f"  start-up (model process, contract)  {prov.get('startup_seconds', 0):8.1f} s")
    print(f"  sets (clean + shifts, batch checks) {prov.get('sets_seconds', 0):8.1f} s  "
          f"({numbers['images_per_second'] or 0:,.0f} images/s)")
    header = f"    {'stage':<20}{'attacked':>9}{'broken':>8}{'robust':>8}{'forward':>12}{'backward':>12}{'s':>9}"
    current = None
    for row in rows:
        if row["threat"] != current:
            current = row["threat"]
            record = prov["attacks"][current]
            print(f"  {current}: {record['seconds']:.1f} s, {record['forward_passes']:,} forward + "
                  f"{record['backward_passes']:,} backward passes")
            print(header)
        if row["part"] == "reliability":
            flags = ", ".join(row["flags"]) or "none fired"
            escalated = f"; escalated for {', '.join(row['escalated_for'])}" if row["escalated_for"] else ""
            print(f"    {'reliability checks':<20}{'':>49}{row['seconds']:>9.1f}  (flags: {flags}{escalated})")
        else:
            name = row["attack"] + (" (esc.)" if row["part"] == "escalation" else "")
            print(f"    {name:<20}{row['attacked']:>9}{row['broken']:>8}{row['robust_accuracy']:>8.1%}"
                  f"{row['forward_passes']:>12,}{row['backward_passes']:>12,}{row['seconds']:>9.1f}")
    robust = {m.metric: m.value for m in result.metrics if m.metric.startswith("robust_accuracy@")
              and ">" not in m.metric}
    passes = numbers["attack_forward_passes"] + numbers["attack_backward_passes"]
    spot = prov.get("spot_checks", {})
    print(f"  attacks: {passes:,} model passes ({numbers['attack_forward_passes']:,} forward), "
          f"{spot.get('calls', 0):,} forward round trips to the model process ({spot.get('checked', 0):,} spot checks)")
    print("  robust accuracy: " + ", ".join(f"{k.split('@', 1)[1]} {v:.1%}" for k, v in robust.items()))
    verdict = "UNDER" if job_seconds < TARGET_SECONDS else "OVER"
    print(f"whole job {job_seconds:.1f} s ({job_seconds / 60:.1f} min), wall with the scorer's start "
          f"{prov.get('wall_seconds') or job_seconds:.1f} s: {verdict} the {TARGET_SECONDS // 60} min target "
          f"({threads} thread(s), load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}); "
          f"peak host memory {mib(numbers['peak_host_memory_bytes'])}")
    return {"speed": numbers, "stages": rows, "robust_accuracy": robust, "job_seconds": job_seconds,
            "under_target": job_seconds < TARGET_SECONDS}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robust-dir", type=Path, default=Path("/work/robust-models"),
                        help="folder with digits_cnn_pgd_linf.pt (measurements/train_robust_digits.py --save)")
    parser.add_argument("--model-file", default="digits_cnn_pgd_linf.pt")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the job's processes (the platform's default: every core)")
    parser.add_argument("--attack-points", type=int, help="attacked points (default: the track's)")
    parser.add_argument("--reliability-points", type=int, help="reliability points (default: the track's)")
    parser.add_argument("--per-cell", type=int, help="corrupted images per cell (default: the track's)")
    parser.add_argument("--hidden-limit", type=int, help="use only this many hidden images (smoke runs)")
    parser.add_argument("--suite", help="attack suite (default: the track's)")
    parser.add_argument("--corruption-seed", type=int, default=0)
    parser.add_argument("--wall-seconds", type=float, default=3600.0, help="the job's wall-clock limit")
    parser.add_argument("--allow-unsandboxed", action="store_true",
                        help="run the model in a plain child process where bubblewrap is missing (recorded)")
    parser.add_argument("--data-mirror", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, help="write everything measured to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    track = read_track(BUNDLE, TRACK)
    weights = args.robust_dir / args.model_file
    if not weights.exists():
        print(f"robust_digits_eval: {weights} is missing; train it with measurements/train_robust_digits.py "
              f"--save {args.robust_dir} --no-twin --no-eval", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    load = os.getloadavg()
    record: dict[str, Any] = {
        "script": "measurements/robust_digits_eval.py", "date": started.isoformat(timespec="seconds"),
        "commit": git_commit(), "argv": sys.argv[1:] if argv is None else argv,
        "host": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads,
                 "torch": torch.__version__, "load_average": load},
        "track": {"bundle": str(BUNDLE.relative_to(ROOT)), "slug": TRACK, "seed": track.seed,
                  "suite": args.suite or track.attack_suite,
                  "threat_models": [t.label for t in track.threat_models]},
    }
    limits = SandboxLimits(wall_seconds=args.wall_seconds, cpu_seconds=int(args.wall_seconds * args.threads),
                           threads=args.threads)
    bundle_track = next(t for t in yaml.safe_load(BUNDLE.read_text())["tracks"] if t["slug"] == TRACK)
    points = args.attack_points or int(bundle_track["attack_points"])
    reliability = args.reliability_points if args.reliability_points is not None else track.reliability_points
    with tempfile.TemporaryDirectory(prefix="robust-digits-") as tmp:
        preparing = time.perf_counter()
        sets = build_sets(Path(tmp), args.data_mirror, args.corruption_seed, args.per_cell, args.hidden_limit)
        artifact = export_model(weights, Path(tmp) / "digits_cnn_pgd.pt2")
        record["prepare_seconds"] = round(time.perf_counter() - preparing, 1)
        spec = JobSpec("robust-digits", "classifier", InputSpec(1, 28, 28), ArtifactSpec(str(artifact), "pt2"),
                       sets, num_classes=10, suite_version=track.suite_version, seed=track.seed,
                       batch_size=TRACK_BATCH_SIZE, time_budget_s=TRACK_TIME_BUDGET_S, device="cpu",
                       threat_models=track.threat_models, attack_points=points,
                       attack_suite=args.suite or track.attack_suite, reliability_points=min(reliability, points))
        print(f"track {TRACK} ({BUNDLE.name}): suite {spec.attack_suite}, "
              f"{', '.join(t.label for t in spec.threat_models)}, {points} attack points, {spec.reliability_points} "
              f"reliability points, seed {spec.seed}; sets {', '.join(s.name for s in sets)} "
              f"(prepared in {record['prepare_seconds']:.0f} s); model {weights.name} as .pt2; torch "
              f"{torch.__version__}, {args.threads} thread(s); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            result = run(spec, "robust-digits", limits, args.allow_unsandboxed)
        except SandboxUnavailable as exc:
            print(f"robust_digits_eval: the sandbox is unavailable ({exc}); pass --allow-unsandboxed", file=sys.stderr)
            return 2
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the processes this one reaped: the scorer (and what it reaped). The model process is
    # killed inside bubblewrap at the end and is not reaped into this count, so this is the scorer's side.
    record["scorer_cpu_seconds"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    record["ok"] = result.ok
    record["metrics"] = [m.__dict__ for m in result.metrics]
    record["provenance"] = result.provenance
    status = 0
    if not result.ok:
        print(f"robust_digits_eval: the job failed: {result.error_code}: {result.error}", file=sys.stderr)
        status = 1
    else:
        record.update(report(result, args.threads, load))
        cpu = record["scorer_cpu_seconds"]
        print(f"CPU seconds of the scorer's side (the model process inside bubblewrap not counted): {cpu:.0f}, "
              f"{cpu / max(record['job_seconds'], 1e-9):.0%} of the job's wall time")
    record["load_average_after"] = os.getloadavg()
    print(f"load average at the end {record['load_average_after'][0]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
        print(f"wrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
