"""How much the evaluator costs over a bare ``model(x)`` loop, measured side by side in one run.

A full clean + shifts evaluation of the shared CIFAR ResNet-20 (the JPEG test set and, when the
corruption shifts are available, a CIFAR-10-C style set) goes through ``evaluator.scoring.run_job``
in this process; the bare loop runs the same model over the same images, already decoded to float
tensors, with nothing else. Runs alternate (bare, evaluator, bare, evaluator, ...) so that machine
noise hits both; the ratio of the medians is printed. Target: at most 1.15.

    .venv/bin/python measurements/evaluator_speed.py [--repeats 3] [--limit 10000] [--corruption-per-cell 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evaluator.data.evalsets import read_evaluation_set, write_evaluation_set  # noqa: E402
from evaluator.data.fetch import fetch_dataset, load_dataset  # noqa: E402
from evaluator.models.convert import convert_checkpoint  # noqa: E402
from evaluator.models.loading import load_model  # noqa: E402
from evaluator.scoring import run_job  # noqa: E402
from evaluator.scoring.feeding import predict  # noqa: E402
from evaluator.spec import ArtifactSpec, EvaluationSetSpec, InputSpec, JobSpec  # noqa: E402


def build_sets(folder: Path, mirror: Path, limit: int, per_cell: int) -> list[EvaluationSetSpec]:
    fetch_dataset("cifar10-jpeg-test", folder / "sources", mirror=mirror)
    images, labels = load_dataset("cifar10-jpeg-test", folder / "sources")
    images, labels = images[:limit], labels[:limit]
    sets = [EvaluationSetSpec("cifar10-jpeg-test", str(folder / "clean.safetensors"),
                              write_evaluation_set(folder / "clean.safetensors", images, labels), "clean")]
    try:
        from evaluator.shifts.corruptions import build_corruption_set
    except ImportError:
        print("corruption shifts not available: timing the clean set only")
        return sets
    if per_cell > 0:
        # CIFAR-10-C as published (the authors' 32 px constants), as the demo's cifar10-c set is built.
        c_images, c_labels, groups, names = build_corruption_set(images, labels, base_seed=0, per_cell=per_cell,
                                                                 definition="cifar10-c")
        digest = write_evaluation_set(folder / "corruptions.safetensors", c_images, c_labels, {}, groups=groups,
                                      group_names=names)
        sets.append(EvaluationSetSpec("cifar10-c", str(folder / "corruptions.safetensors"), digest, "shift"))
    return sets


def bare_loop(model: torch.nn.Module, tensors: list[torch.Tensor], batch_size: int) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for x in tensors:
            for start in range(0, x.shape[0], batch_size):
                model(x[start : start + batch_size])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-mirror", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--model-mirror", default=str(ROOT.parent / "shared" / "models"))
    parser.add_argument("--limit", type=int, default=10000, help="clean images (default: the whole test set)")
    parser.add_argument("--corruption-per-cell", type=int, default=20, help="images per corruption x severity")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sets = build_sets(folder, Path(args.data_mirror), args.limit, args.corruption_per_cell)
        weights = convert_checkpoint("cifar_resnet20", Path(args.model_mirror) / "cifar10/resnet20-12fca82f.th",
                                     folder / "resnet20.safetensors")
        input_spec = InputSpec(3, 32, 32)
        artifact = ArtifactSpec(str(weights), "safetensors", architecture="cifar_resnet20")
        spec = JobSpec("bench", "classifier", input_spec, artifact, tuple(sets), batch_size=args.batch_size)
        model = load_model(artifact, input_spec)
        tensors = [read_evaluation_set(s.path).images.float().div(255) for s in sets]
        total = sum(int(x.shape[0]) for x in tensors)

        stored = [read_evaluation_set(s.path).images for s in sets]
        bare_loop(model, [t[: args.batch_size] for t in tensors], args.batch_size)  # warm-up
        bare_times, in_process_times, evaluator_times = [], [], []
        for _ in range(args.repeats):
            bare_times.append(bare_loop(model, tensors, args.batch_size))
            started = time.perf_counter()
            for images in stored:  # the scoring loop with the model in this process (no boundary, no checks)
                predict(model, images, input_spec, args.batch_size, torch.device("cpu"),
                        order=torch.randperm(int(images.shape[0])))
            in_process_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = run_job(spec)
            evaluator_times.append(time.perf_counter() - started)
            assert result.ok, result.error
        bare, full = statistics.median(bare_times), statistics.median(evaluator_times)
        in_process = statistics.median(in_process_times)
        accuracy = next(m.value for m in result.metrics if m.metric == "accuracy")
        print(f"images per evaluation: {total} ({', '.join(s.name for s in sets)}), torch threads "
              f"{torch.get_num_threads()}, batch {args.batch_size}, {args.repeats} alternating repeats")
        print(f"bare model(x) loop : median {bare:7.2f} s  ({total / bare:8.1f} images/s)  runs "
              f"{np.round(bare_times, 2)}")
        print(f"predict in process : median {in_process:7.2f} s  ({total / in_process:8.1f} images/s)  runs "
              f"{np.round(in_process_times, 2)}")
        print(f"evaluator run_job  : median {full:7.2f} s  ({total / full:8.1f} images/s)  runs "
              f"{np.round(evaluator_times, 2)}")
        timing = result.provenance
        print(f"run_job's own parts (last run): model process start and load + contract "
              f"{timing.get('startup_seconds', float('nan')):.2f} s, batch checks "
              f"{timing.get('batch_check_seconds', float('nan')):.2f} s")
        print(f"ratio predict in process / bare loop: {in_process / bare:.3f}")
        print(f"ratio evaluator / bare loop: {full / bare:.3f}  (target <= 1.15); clean accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
