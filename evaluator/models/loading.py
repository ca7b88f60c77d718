"""Turns a submitted artifact into an ``nn.Module`` the evaluator can call, or a clear refusal.

Two formats are accepted. Safetensors holds only tensors, which load into a zoo architecture
strictly. A ``.pt2`` holds a whole program, and ``torch.export.load`` is not safe on hostile
input (it falls back to a legacy reader, unpickles some entries, ``sympify``-s shape expressions
and ``exec``-s guard code). So a ``.pt2`` is first screened as data by
:mod:`evaluator.models.screening` (layout, operators, expressions, sizes), and torch then reads
only a sanitized copy that the platform writes from the screened content, in memory; as defence
in depth every ``torch.load`` underneath is forced to ``weights_only``. Loading still happens
inside the sandbox only.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from evaluator.data.integrity import sha256_file
from evaluator.errors import EvaluationError
from evaluator.models.formats import detect_format
from evaluator.models.screening import (
    MAX_COMPRESSION_RATIO,
    MAX_GRAPH_NODES,
    MAX_PROGRAM_JSON_BYTES,
    MAX_UNPACKED_BYTES,
    MAX_ZIP_ENTRIES,
    ZIP_ERRORS,
    ScreenReport,
    guard_zip_archive,
    screen_artifact,
    screen_pt2,
    write_sanitized_pt2,
)
from evaluator.models.zoo import get_architecture
from evaluator.spec import ArtifactSpec, InputSpec

__all__ = [
    "MAX_COMPRESSION_RATIO",
    "MAX_GRAPH_NODES",
    "MAX_PROGRAM_JSON_BYTES",
    "MAX_UNPACKED_BYTES",
    "MAX_ZIP_ENTRIES",
    "ExportedModel",
    "ScreenReport",
    "guard_zip_archive",
    "load_generator",
    "load_model",
    "load_weights_strict",
    "screen_artifact",
]


def load_model(
    artifact: ArtifactSpec, input_spec: InputSpec, *, max_unpacked_bytes: int = MAX_UNPACKED_BYTES
) -> nn.Module:
    """Loads ``artifact`` for images shaped like ``input_spec``; eval mode, parameters frozen.

    Applies :func:`screen_artifact`'s checks first (format detection, then for a ``.pt2`` the
    screen of :mod:`evaluator.models.screening`), so a refused file never reaches torch. Raises
    :class:`EvaluationError` with a researcher-facing message for every refusal.
    """
    path = Path(artifact.path)
    if not path.is_file():
        # The platform lost the file: not the submitter's fault.
        raise EvaluationError("internal", "The stored model file is missing; please contact the organisers.")
    detected = detect_format(path)
    if detected != artifact.format:
        raise EvaluationError(
            "format_mismatch",
            f"The submission was declared as {artifact.format!r} but the file's content is {detected!r}. "
            "Choose the format that matches the file.",
        )
    if detected == "safetensors":
        model = _load_safetensors(path, artifact.architecture, input_spec)
    else:
        model = _load_pt2(path, input_spec, max_unpacked_bytes)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- safetensors


def _load_safetensors(path: Path, architecture: str, input_spec: InputSpec) -> nn.Module:
    if not architecture:
        raise EvaluationError(
            "unknown_architecture",
            "A safetensors file holds weights only: name the zoo architecture they belong to.",
        )
    entry = get_architecture(architecture)
    if entry.task == "generator":
        raise EvaluationError(
            "unknown_architecture", f"{architecture!r} is a generator, not a classifier or detector to evaluate."
        )
    if not entry.accepts(input_spec):
        raise EvaluationError(
            "wrong_input_shape",
            f"Architecture {architecture!r} takes images of shape {entry.input_shape} in [0, 1], but this track "
            f"feeds {input_spec.shape} in {list(input_spec.value_range)}.",
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state_dict = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EvaluationError("corrupt_artifact", f"The safetensors file could not be read: {_shorten(exc)}") from None
    declared = metadata.get("architecture")
    if declared and declared != architecture:
        raise EvaluationError(
            "weights_mismatch",
            f"The file's metadata says it holds weights for {declared!r}, but it was submitted as {architecture!r}.",
        )
    model = entry.build()
    load_weights_strict(model, state_dict, architecture)
    return model.eval()


def load_generator(path: str | os.PathLike[str], architecture: str, sha256: str = "") -> nn.Module:
    """A detector track's own generator (a platform file, not a submission), eval mode, frozen.

    Any problem here is the platform's fault, so it is reported as ``data_integrity`` (hash
    mismatch) or ``data_unavailable`` (missing or unreadable) and never counts against a user.
    """
    file = Path(path)
    if not file.is_file():
        raise EvaluationError("data_unavailable", "The track's generator file is missing.")
    if sha256 and sha256_file(file) != sha256:
        raise EvaluationError("data_integrity", "The track's generator file does not match its recorded sha256.")
    entry = get_architecture(architecture)
    if entry.task != "generator":
        raise EvaluationError("data_unavailable", f"{architecture!r} is not a generator architecture.")
    try:
        state_dict = load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EvaluationError("data_unavailable", f"The generator could not be read: {_shorten(exc)}") from None
    model = entry.build()
    try:
        load_weights_strict(model, state_dict, architecture)
    except EvaluationError as exc:
        raise EvaluationError("data_unavailable", exc.message) from None
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def load_weights_strict(model: nn.Module, state_dict: Mapping[str, Tensor], architecture: str) -> None:
    """``load_state_dict(strict=True)`` with a message that names the offending keys.

    ``num_batches_tracked`` may be absent (older PyTorch did not save it and it does not affect
    evaluation); everything else must match in name, shape and kind.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} (file {tuple(state_dict[k].shape)}, expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    wrong_kind = [
        f"{k} ({state_dict[k].dtype}, expected floating point)"
        for k, v in expected.items()
        if k in state_dict and v.is_floating_point() and not state_dict[k].is_floating_point()
    ]
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", wrong_shape),
        ("wrong dtype", wrong_kind),
    ):
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    if problems:
        raise EvaluationError(
            "weights_mismatch",
            f"The weights do not fit architecture {architecture!r}: " + "; ".join(problems) + ".",
        )
    full = dict(state_dict)
    for key, value in expected.items():
        full.setdefault(key, value)  # only num_batches_tracked can be missing here
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as exc:
        raise EvaluationError(
            "weights_mismatch", f"The weights do not fit architecture {architecture!r}: {_shorten(exc)}"
        ) from None


# --------------------------------------------------------------------------- .pt2


class ExportedModel(nn.Module):
    """Wraps ``ExportedProgram.module()`` so callers can use ``.eval()``/``.train()`` freely.

    Modules unlifted from an exported program refuse ``eval()``/``train()`` in current torch
    versions; their mode was fixed at export time, so switching it here only sets a flag.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.program(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode
        return self


def _load_pt2(path: Path, input_spec: InputSpec, max_unpacked_bytes: int) -> nn.Module:
    """Screen, write the sanitized copy in memory, and let torch read only that copy."""
    sanitized = io.BytesIO()
    try:
        with zipfile.ZipFile(path) as archive:
            screened = screen_pt2(archive, max_unpacked_bytes=max_unpacked_bytes)
            write_sanitized_pt2(archive, screened, sanitized)
    except ZIP_ERRORS as exc:
        raise EvaluationError("corrupt_artifact", f"The .pt2 archive is damaged: {_shorten(exc)}") from None
    sanitized.seek(0)
    try:
        with _weights_only_torch_load():
            program = torch.export.load(sanitized)
    except EvaluationError:
        raise
    except Exception as exc:  # any failure inside torch means a file we cannot use
        raise EvaluationError(
            "corrupt_artifact",
            f"The .pt2 file could not be loaded with torch.export.load (torch {torch.__version__}): {_shorten(exc)}",
        ) from None
    del sanitized
    _check_program_input(program, input_spec)
    try:
        module = program.module()
    except Exception as exc:
        raise EvaluationError(
            "corrupt_artifact", f"The exported program could not be rebuilt: {_shorten(exc)}"
        ) from None
    return ExportedModel(module).eval()


def _check_program_input(program: torch.export.ExportedProgram, input_spec: InputSpec) -> None:
    """Fails early, with a precise message, on programs that take something other than one image batch."""
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise EvaluationError(
            "wrong_input_shape",
            f"The exported program takes {len(user_inputs)} inputs; it must take exactly one image batch.",
        )
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    node = placeholders.get(user_inputs[0])
    value = node.meta.get("val") if node is not None else None
    if not isinstance(value, Tensor):
        return
    shape = tuple(value.shape)
    expected = (None, *input_spec.shape)
    if len(shape) != 4:
        raise EvaluationError(
            "wrong_input_shape",
            f"The exported program takes a tensor of rank {len(shape)}; it must take (N, C, H, W) = "
            f"(N, {input_spec.channels}, {input_spec.height}, {input_spec.width}).",
        )
    if isinstance(shape[0], int):
        raise EvaluationError(
            "wrong_input_shape",
            f"The program was exported for a fixed batch size of {shape[0]}. Re-export it with a dynamic batch "
            'dimension: dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}.',
        )
    for axis, (got, want) in enumerate(zip(shape[1:], expected[1:], strict=True), start=1):
        if isinstance(got, int) and got != want:
            raise EvaluationError(
                "wrong_input_shape",
                f"The program was exported for inputs of shape (N, {', '.join(str(s) for s in shape[1:])}) but this "
                f"track feeds (N, {', '.join(str(s) for s in input_spec.shape)}) (axis {axis} differs).",
            )


@contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """Makes every ``torch.load`` inside ``torch.export.load`` refuse arbitrary pickles.

    torch reads this variable on each call, overriding call sites inside torch that ask for a
    full (unsafe) unpickling. Process-wide, so evaluations run one job per process.
    """
    saved = {
        name: os.environ.get(name) for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _shorten(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
