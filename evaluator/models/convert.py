"""Helpers that turn a researcher's trusted, local model into a file the platform accepts.

They run on the researcher's machine (through ``python -m evaluator convert``), where loading
their own checkpoint is their call; still, checkpoints are opened with ``weights_only=True``.
Each helper re-checks its output the way the platform will, so a file that converts cleanly
is not refused after upload.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from evaluator.errors import EvaluationError
from evaluator.models.contract import ContractReport, check_contract, probe_images, set_eval_mode
from evaluator.models.formats import detect_format
from evaluator.models.loading import load_model, load_weights_strict
from evaluator.models.zoo import get_architecture, remap_checkpoint
from evaluator.spec import ArtifactSpec, InputSpec

#: Reloaded .pt2 outputs must match the original module's to this fraction of their scale.
EXPORT_RTOL = 1e-4


def export_module(
    module: nn.Module,
    input_spec: InputSpec,
    path: str | os.PathLike[str],
    *,
    task: str = "classifier",
    num_classes: int = 10,
    batch_size: int = 256,
    time_budget_s: float = 600.0,
) -> ContractReport:
    """Writes ``module`` (switched to eval mode) as a ``.pt2`` with a dynamic batch dimension.

    The file is then loaded back exactly as the platform loads it and checked against the
    contract and against the original module's outputs.
    """
    set_eval_mode(module)
    # Batch 2 as the example: torch.export specialises sizes 0 and 1.
    example = probe_images(input_spec, 2)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    except Exception as exc:  # export failures come in many types; all mean "fix the model"
        raise EvaluationError(
            "export_failed", f"torch.export could not export the model with a dynamic batch size: {exc}"
        ) from exc

    reloaded = load_model(ArtifactSpec(path=str(path), format="pt2"), input_spec)
    report = check_contract(reloaded, input_spec, task, num_classes, batch_size, time_budget_s)
    probe = probe_images(input_spec, 7, seed=1)
    with torch.inference_mode():
        original, restored = module(probe).double(), reloaded(probe).double()
    scale = max(float(original.abs().max()), 1e-12)
    if original.shape != restored.shape or float((original - restored).abs().max()) > EXPORT_RTOL * scale:
        raise EvaluationError(
            "export_failed", "The exported program's outputs differ from the original module's on the same images."
        )
    return report


def convert_checkpoint(
    architecture: str, source_path: str | os.PathLike[str], dest_path: str | os.PathLike[str]
) -> Path:
    """Converts a trusted local checkpoint of a zoo architecture into a strict safetensors file.

    The source may be a ``torch.save`` file (state dict or training checkpoint) or safetensors;
    the entry's remap hook renames keys of the original training code.
    """
    get_architecture(architecture)  # fail early, listing valid names
    checkpoint = _read_checkpoint(Path(source_path))
    state_dict = remap_checkpoint(architecture, checkpoint)
    model = get_architecture(architecture).build()
    load_weights_strict(model, state_dict, architecture)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    destination = Path(dest_path)
    save_file(tensors, str(destination), metadata={"architecture": architecture})
    return destination


def _read_checkpoint(path: Path) -> Mapping[str, object]:
    try:
        if detect_format(path) == "safetensors":
            return load_file(str(path), device="cpu")
    except EvaluationError:
        pass  # not safetensors: try it as a torch.save file below
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EvaluationError(
            "unsafe_format",
            "The checkpoint holds Python objects besides tensors, which torch.load(weights_only=True) refuses. "
            f"Save model.state_dict() instead of the whole model. Detail: {exc}",
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise EvaluationError("corrupt_artifact", f"The checkpoint could not be read: {exc}") from None
    if not isinstance(checkpoint, Mapping) or not any(_holds_tensors(v) for v in (checkpoint, *checkpoint.values())):
        raise EvaluationError(
            "weights_mismatch", f"The checkpoint holds a {type(checkpoint).__name__}, not a state dict of tensors."
        )
    return checkpoint


def _holds_tensors(value: object) -> bool:
    return isinstance(value, Mapping) and any(isinstance(v, Tensor) for v in value.values())
