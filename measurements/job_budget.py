"""The time budget a job would get (evaluator/scoring/budget.py) for a model on the demo digits track.

Hosts the model as a job does (bubblewrap where installed), runs the contract probe, times one batch of the
track's size the way ``run_job`` does, and prints the per-image and per-call prices and the budget both from the
probe alone and with the timed batch. The work is the track's: its sets' images (``--set-images``), 500 attacked
points, its threat models and suite, read from platform/builders/bundles/demo-digits.yaml.

    .venv/bin/python measurements/job_budget.py --model /work/robust-models/digits_cnn_pgd_linf.pt [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "measurements")]

from gpu_check import read_track  # noqa: E402
from robust_digits_eval import BUNDLE, TRACK, TRACK_BATCH_SIZE, TRACK_TIME_BUDGET_S, export_model  # noqa: E402

from evaluator.models.contract import check_contract  # noqa: E402
from evaluator.remote.client import HostOptions, host_model  # noqa: E402
from evaluator.scoring.budget import derive_budget, work_for  # noqa: E402
from evaluator.scoring.job import _timed_full_batch  # noqa: E402
from evaluator.spec import ArtifactSpec, InputSpec, JobSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the PGD-trained digits CNN's state dict")
    parser.add_argument("--set-images", type=int, default=14507, help="images of the track's sets (demo: 14,507)")
    parser.add_argument("--attack-points", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    track = read_track(BUNDLE, TRACK)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_model(args.model, Path(tmp) / "model.pt2")
        spec = JobSpec("budget", "classifier", InputSpec(1, 28, 28), ArtifactSpec(str(artifact), "pt2"), (),
                       threat_models=track.threat_models, attack_points=args.attack_points,
                       attack_suite=track.attack_suite, reliability_points=track.reliability_points,
                       batch_size=TRACK_BATCH_SIZE, time_budget_s=TRACK_TIME_BUDGET_S)
        with host_model(spec.artifact, spec.input, task="classifier", num_classes=10, device="cpu",
                        time_budget_s=spec.time_budget_s, batch_size=spec.batch_size,
                        options=HostOptions.default()) as hosted:
            contract = check_contract(hosted.model, spec.input, "classifier", 10, spec.batch_size,
                                      spec.time_budget_s, "cpu")
            timed = _timed_full_batch(hosted.model, spec, contract)
    work = work_for(spec, args.set_images)
    print(f"work: {work.to_dict()}")
    for label, report in (("probe only", contract), ("timed batch", timed)):
        budget = derive_budget(work, report.probe_seconds, report.probe_batch_size, report.seconds_per_batch,
                               spec.batch_size)
        print(f"{label}: probe {report.probe_seconds * 1e3:.2f} ms per {report.probe_batch_size}, batch "
              f"{report.seconds_per_batch * 1e3:.1f} ms per {spec.batch_size} -> {budget.seconds_per_image * 1e6:.1f} "
              f"us per image, {budget.seconds_per_call * 1e3:.2f} ms per call; model {budget.model_seconds:.0f} s, "
              f"platform {budget.platform_seconds:.0f} s, budget {budget.seconds:.0f} s")


if __name__ == "__main__":
    main()
