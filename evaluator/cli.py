"""``python -m evaluator``: the evaluator's own command line, usable without Django.

``run`` is what the sandboxed child executes: it reads a JobSpec (a file or ``-`` for stdin),
prints progress events as JSON lines and ends with one ``{"event": "result", ...}`` line.
The other commands serve operators (``fetch``) and researchers (``convert``, ``check``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_run(args: argparse.Namespace) -> int:
    """The scorer: runs ``{"spec": ..., "host": ..., "resume": ...}`` (or a bare JobSpec), the model in a process of
    its own; prints every finished stage as a ``checkpoint`` line before the ``result`` line. With
    ``{"attack_job": ..., "host": ...}`` it runs a submitted attack against a model instead
    (:mod:`evaluator.adversary.job`)."""
    # Per command: each loads only what it uses (torch alone takes about a second).
    from evaluator.checkpoints import Checkpoint
    from evaluator.progress import JsonLineProgress
    from evaluator.remote.client import HostOptions
    from evaluator.sandbox import SandboxLimits
    from evaluator.scoring import run_job
    from evaluator.spec import JobSpec

    text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text()
    payload = json.loads(text)
    host = HostOptions.default()
    resume = None
    attack_job = None
    if isinstance(payload, dict) and ("spec" in payload or "attack_job" in payload):
        resume = payload.get("resume")
        attack_job = payload.get("attack_job")
        raw_host = payload.get("host") or {}
        limits = SandboxLimits(**raw_host["limits"]) if raw_host.get("limits") else None
        host = HostOptions(sandbox=raw_host.get("sandbox", host.sandbox), limits=limits, uid=raw_host.get("uid"))
        payload = payload.get("spec")
    # The protocol stream is a private duplicate of stdout, and anything else printed goes to
    # stderr, so no stray print can be mistaken for a progress or result line.
    protocol = open(sys.stdout.fileno(), "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stdout = sys.stderr
    if attack_job is not None:
        # Per command: only an attack job needs these.
        from evaluator.adversary.job import run_attack_job
        from evaluator.adversary.spec import AttackJob

        result = run_attack_job(AttackJob.from_dict(attack_job), JsonLineProgress(protocol), host=host)
    else:
        def checkpoint(done: Checkpoint) -> None:
            protocol.write(json.dumps({"event": "checkpoint", "checkpoint": done.to_dict()}) + "\n")
            protocol.flush()

        result = run_job(JobSpec.from_dict(payload), JsonLineProgress(protocol), host=host, resume=resume,
                         on_checkpoint=checkpoint)
    protocol.write(json.dumps({"event": "result", "result": json.loads(result.to_json())}) + "\n")
    protocol.flush()
    return 0 if result.ok else 3


def _cmd_fetch(args: argparse.Namespace) -> int:
    # Per command: each loads only what it uses (torch alone takes about a second).
    from evaluator.data.fetch import fetch_dataset
    from evaluator.data.registry import list_datasets

    ids = args.datasets or [d.id for d in list_datasets()]
    for dataset_id in ids:
        path = fetch_dataset(dataset_id, Path(args.dest), mirror=Path(args.mirror) if args.mirror else None)
        print(f"{dataset_id}: {path}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    # Per command: each loads only what it uses (torch alone takes about a second).
    from evaluator.models.convert import convert_checkpoint

    convert_checkpoint(args.architecture, Path(args.source), Path(args.dest))
    print(f"wrote {args.dest} (safetensors, architecture {args.architecture})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Build the researcher's module from ``package.module:factory`` and export it to ``.pt2``."""
    import importlib

    # Per command: each loads only what it uses (torch alone takes about a second).
    from evaluator.errors import EvaluationError
    from evaluator.models.convert import export_module
    from evaluator.spec import InputSpec

    module_name, _, attribute = args.factory.partition(":")
    if not attribute:
        print("FAILED: give the factory as package.module:callable", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path.cwd()))
    factory = getattr(importlib.import_module(module_name), attribute)
    model = factory()
    if args.weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.weights))
    input_spec = InputSpec(args.channels, args.height, args.width)
    try:
        export_module(model, input_spec, Path(args.dest), task=args.task, num_classes=args.num_classes)
    except EvaluationError as exc:
        print(f"FAILED ({exc.code}): {exc.message}", file=sys.stderr)
        return 2
    print(f"OK: wrote {args.dest}, a .pt2 {args.task} for input {input_spec.shape} with a dynamic batch dimension")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """Screen the file as data first (no unpickling, no torch.export.load), then load and run it.

    A researcher may be checking a file someone else sent them: a refused file must never reach
    torch's loader on their machine either.
    """
    # Per command: each loads only what it uses (torch alone takes about a second).
    from evaluator.errors import EvaluationError
    from evaluator.models.contract import check_contract
    from evaluator.models.formats import detect_format
    from evaluator.models.loading import load_model, screen_artifact
    from evaluator.spec import ArtifactSpec, InputSpec

    input_spec = InputSpec(args.channels, args.height, args.width)
    try:
        fmt = detect_format(Path(args.artifact))
        report = screen_artifact(Path(args.artifact), fmt)
        model = load_model(ArtifactSpec(str(args.artifact), fmt, architecture=args.architecture or ""), input_spec)
        check_contract(model, input_spec, args.task, args.num_classes, args.batch_size, args.time_budget)
    except EvaluationError as exc:
        print(f"FAILED ({exc.code}): {exc.message}", file=sys.stderr)
        return 2
    detail = f" ({report.graph_nodes} graph nodes, {len(report.operators)} distinct operators)" if fmt == "pt2" else ""
    print(f"OK: {args.artifact} is a valid {fmt} {args.task} for input {input_spec.shape}{detail}")
    return 0


def _cmd_architectures(args: argparse.Namespace) -> int:
    # Per command: each loads only what it uses (torch alone takes about a second).
    from evaluator.models.zoo import list_architectures

    for entry in list_architectures():
        print(f"{entry.name:28s} {entry.task:10s} {entry.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="evaluate one JobSpec (JSON) and print progress and the result as JSON lines")
    run.add_argument("spec", help="path of the JobSpec JSON, or - for stdin")
    run.set_defaults(func=_cmd_run)

    fetch = sub.add_parser("fetch", help="download public datasets with sha256 checks (or copy from a mirror)")
    fetch.add_argument("datasets", nargs="*", help="dataset ids (default: all registered)")
    fetch.add_argument("--dest", required=True, help="directory to store them in")
    fetch.add_argument("--mirror", help="local mirror directory laid out like the shared data folder")
    fetch.set_defaults(func=_cmd_fetch)

    convert = sub.add_parser("convert", help="turn a trusted local PyTorch checkpoint into zoo safetensors")
    convert.add_argument("architecture", help="zoo architecture name (see `architectures`)")
    convert.add_argument("source", help="checkpoint written by torch.save (loaded with weights_only=True)")
    convert.add_argument("dest", help="output .safetensors path")
    convert.set_defaults(func=_cmd_convert)

    export = sub.add_parser("export", help="export your PyTorch module to a checked .pt2 submission file")
    export.add_argument("factory", help="package.module:callable that returns the nn.Module (in eval mode or not)")
    export.add_argument("dest", help="output .pt2 path")
    export.add_argument("--weights", help="optional safetensors state dict to load into the module first")
    export.add_argument("--task", choices=["classifier", "detector"], default="classifier")
    export.add_argument("--channels", type=int, default=1)
    export.add_argument("--height", type=int, default=28)
    export.add_argument("--width", type=int, default=28)
    export.add_argument("--num-classes", type=int, default=10)
    export.set_defaults(func=_cmd_export)

    check = sub.add_parser("check", help="check a submission file against a track's input spec before uploading")
    check.add_argument("artifact")
    check.add_argument("--task", choices=["classifier", "detector"], default="classifier")
    check.add_argument("--architecture", help="zoo architecture, for safetensors files")
    check.add_argument("--channels", type=int, default=1)
    check.add_argument("--height", type=int, default=28)
    check.add_argument("--width", type=int, default=28)
    check.add_argument("--num-classes", type=int, default=10)
    check.add_argument("--batch-size", type=int, default=256)
    check.add_argument("--time-budget", type=float, default=600.0, help="seconds allowed per batch")
    check.set_defaults(func=_cmd_check)

    arch = sub.add_parser("architectures", help="list the model zoo")
    arch.set_defaults(func=_cmd_architectures)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
