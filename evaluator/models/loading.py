"""Turns a submitted artifact into an ``nn.Module`` the evaluator can call, or a clear refusal.

Two formats are accepted. Safetensors holds only tensors, which load into a zoo architecture
strictly. A ``.pt2`` holds a whole program, and ``torch.export.load`` is not safe on hostile
input (it unpickles some entries, ``sympify``-s shape expressions and ``exec``-s guard code), so
it must only run inside the sandbox; as defence in depth this module still screens the archive
(size, compression ratio, pickled or native payloads, operator targets, expressions) and forces
every ``torch.load`` underneath to ``weights_only`` while loading.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from evaluator.errors import EvaluationError
from evaluator.models.formats import detect_format
from evaluator.models.zoo import get_architecture
from evaluator.spec import ArtifactSpec, InputSpec

#: Largest total uncompressed size of a .pt2 archive.
MAX_UNPACKED_BYTES = 4 * 1024**3
#: Larger uncompressed/compressed ratios (for entries above 1 MiB) look like a decompression bomb.
MAX_COMPRESSION_RATIO = 100.0
MAX_ZIP_ENTRIES = 100_000
#: Op namespaces a submitted graph may call; others need Python code that is not in the file.
ALLOWED_OP_NAMESPACES = frozenset({"aten", "prims", "higher_order", "quantized_decomposed"})
_ALLOWED_DUNDER_OPS = frozenset(
    ("__and__ __iand__ __ilshift__ __ior__ __irshift__ __ixor__ __lshift__ __or__ __rshift__ __xor__").split()
)
_ALLOWED_OPERATOR_FUNCTIONS = frozenset(
    (
        "abs add and_ eq floordiv ge getitem gt invert le lshift lt mod mul ne neg not_ or_ pos pow rshift "
        "sub truediv xor"
    ).split()
)
_ALLOWED_SYMPY_NAMES = frozenset(
    (
        "Abs Add And BitwiseFn_bitwise_and BitwiseFn_bitwise_or CeilDiv ceiling CeilToInt CleanDiv Eq "
        "Equality false False finite FloatPow FloatTrueDiv floor FloorDiv FloorToInt Ge GreaterThan Gt "
        "Identity Infinity integer Integer IntInfinity IntTrueDiv IsNonOverlappingAndDenseIndicator Le "
        "LessThan LShift Lt Max Min Mod ModularIndexing Mul Ne NegativeInfinity NegativeIntInfinity "
        "nonnegative Not oo OpaqueUnaryFn_sqrt Or Piecewise positive Pow PowByNatural PythonMod Rational real "
        "RoundDecimal RoundToInt RShift sqrt StrictGreaterThan StrictLessThan ToFloat true True TruncToFloat "
        "TruncToInt Unequality Where"
    ).split()
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}\d+")
_SYMPY_SYMBOL = re.compile(r"Symbol\('[a-z]{1,4}\d+'(?:,\s*[a-z_]+=(?:True|False))*\)")
_SYMPY_FLOAT = re.compile(r"Float\('[-+0-9.e]+'(?:,\s*precision=\d+)?\)")
_SAFE_EXPR_CHARS = re.compile(r"[A-Za-z0-9_+\-*/%(),.\s<>=!]*")
_GUARD_OPERAND = re.compile(r"L(?:\[(?:'[A-Za-z_][A-Za-z0-9_]*'|\d+)\])+\.(?:size|stride)\(\)\[\d+\]")
_GUARD_TOKENS = re.compile(r"\s*(?:v|\d+|==|!=|<=|>=|<|>|\+|-|\*|//|%|\(|\)|and\b|or\b|not\b)")


def load_model(
    artifact: ArtifactSpec, input_spec: InputSpec, *, max_unpacked_bytes: int = MAX_UNPACKED_BYTES
) -> nn.Module:
    """Loads ``artifact`` for images shaped like ``input_spec``; eval mode, parameters frozen.

    Raises :class:`EvaluationError` with a researcher-facing message for every refusal.
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
    from evaluator.data.integrity import sha256_file

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
    guard_zip_archive(path, max_unpacked_bytes=max_unpacked_bytes)
    inspect_pt2_archive(path)
    try:
        with _weights_only_torch_load():
            program = torch.export.load(str(path))
    except EvaluationError:
        raise
    except Exception as exc:  # any failure inside torch means a file we cannot use
        raise EvaluationError(
            "corrupt_artifact",
            f"The .pt2 file could not be loaded with torch.export.load (torch {torch.__version__}): {_shorten(exc)}",
        ) from None
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


def guard_zip_archive(
    path: str | os.PathLike[str],
    *,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_ratio: float = MAX_COMPRESSION_RATIO,
    max_entries: int = MAX_ZIP_ENTRIES,
) -> None:
    """Refuses decompression bombs by reading the zip directory only (nothing is inflated)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise EvaluationError("corrupt_artifact", f"The .pt2 archive is damaged: {_shorten(exc)}") from None
    if len(infos) > max_entries:
        raise EvaluationError("corrupt_artifact", f"The .pt2 archive has {len(infos)} entries (limit {max_entries}).")
    total = sum(info.file_size for info in infos)
    if total > max_unpacked_bytes:
        raise EvaluationError(
            "corrupt_artifact",
            f"The .pt2 archive would unpack to {total / 2**30:.1f} GiB, above the {max_unpacked_bytes / 2**30:.1f} "
            "GiB limit.",
        )
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > 2**20 and ratio > max_ratio:
            raise EvaluationError(
                "corrupt_artifact",
                f"The .pt2 archive entry {info.filename!r} is compressed {ratio:.0f}-fold, which looks like a "
                "decompression bomb; save it with torch.export.save unchanged.",
            )


def inspect_pt2_archive(path: str | os.PathLike[str]) -> None:
    """Refuses .pt2 content that would run code chosen by the file's author while loading.

    Call :func:`guard_zip_archive` first: this reads the archive's JSON entries into memory.
    """

    def refuse(reason: str) -> EvaluationError:
        return EvaluationError(
            "unsafe_format",
            f"The .pt2 archive {reason}; export the model again with plain torch.export.export and torch.export.save.",
        )

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        for name in names:
            relative = name.split("/", 1)[1] if "/" in name else name
            if relative.startswith("data/aotinductor/") or relative.endswith((".so", ".dll", ".dylib", ".o")):
                raise refuse("contains compiled native code (AOTInductor), which the platform does not run")
            if relative.startswith(("data/weights/", "data/constants/")) and relative.endswith(".pt"):
                raise refuse("stores its weights in the legacy pickled layout")
        for name in names:
            if name.endswith("/data/weights/model_weights_config.json") or name.endswith("_weights_config.json"):
                _check_payload_config(_read_json(archive, name), constants=False, refuse=refuse)
            elif name.endswith("_constants_config.json"):
                _check_payload_config(_read_json(archive, name), constants=True, refuse=refuse)
            elif "/models/" in name and name.endswith(".json"):
                _check_program_json(_read_json(archive, name), refuse=refuse)


def _read_json(archive: zipfile.ZipFile, name: str) -> Any:
    try:
        return json.loads(archive.read(name))
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as exc:
        raise EvaluationError(
            "corrupt_artifact", f"The .pt2 entry {name!r} is not valid JSON: {_shorten(exc)}"
        ) from None


def _check_payload_config(config: Any, *, constants: bool, refuse: Any) -> None:
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise EvaluationError("corrupt_artifact", "The .pt2 archive has a malformed weights or constants table.")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise EvaluationError("corrupt_artifact", "The .pt2 archive has a malformed weights or constants table.")
        if meta.get("use_pickle"):
            raise refuse(f"stores {fqn!r} as a pickle")
        if constants and not str(meta.get("path_name", "")).startswith("tensor_"):
            raise refuse(f"holds a non-tensor constant {fqn!r} (a custom or opaque Python object)")


def _check_program_json(program: Any, *, refuse: Any) -> None:
    """Walks the serialized graph: operator targets, shape expressions and guard code."""
    if isinstance(program, dict):
        for guard in program.get("guards_code") or []:
            if not _is_safe_guard(guard):
                raise refuse(f"contains guard code we do not recognise: {str(guard)[:80]!r}")
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "target" and isinstance(value, str) and not _is_safe_target(value):
                    raise refuse(f"calls {value[:80]!r}, which is not a standard PyTorch operator")
                if key == "expr_str" and isinstance(value, str) and not _is_safe_sym_expr(value):
                    raise refuse(f"contains a shape expression we do not recognise: {value[:80]!r}")
                if isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))


def _is_safe_target(target: str) -> bool:
    parts = target.split(".")
    if not all(_IDENTIFIER.fullmatch(part) for part in parts):
        return False
    if parts[0] == "torch" and len(parts) >= 2 and parts[1] == "ops":
        if len(parts) not in (4, 5) or parts[2] not in ALLOWED_OP_NAMESPACES:
            return False
        return all(not (p.startswith("__") and p.endswith("__")) or p in _ALLOWED_DUNDER_OPS for p in parts[3:])
    if parts[0] == "torch":
        return len(parts) == 2 and re.fullmatch(r"_?sym_[a-z_]+", parts[1]) is not None
    if parts[0] == "_operator":
        return len(parts) == 2 and parts[1] in _ALLOWED_OPERATOR_FUNCTIONS
    if parts[0] == "math":
        return len(parts) == 2 and not parts[1].startswith("_")
    return False


def _is_safe_sym_expr(expr: str) -> bool:
    """sympify() evaluates its string, so only allow sympy's own printing of integer expressions."""
    text = _SYMPY_FLOAT.sub("1", _SYMPY_SYMBOL.sub("s0", expr))
    if "__" in text or not _SAFE_EXPR_CHARS.fullmatch(text):
        return False
    if re.search(r"(?<![0-9])\.|\.(?![0-9])", text):
        return False
    return all(name in _ALLOWED_SYMPY_NAMES or _SYMBOL_NAME.fullmatch(name) for name in _IDENTIFIER.findall(text))


def _is_safe_guard(guard: Any) -> bool:
    """Guards are exec()-ed; accept only comparisons of input sizes and strides with integers."""
    if not isinstance(guard, str):
        return False
    text = _GUARD_OPERAND.sub("v", guard)
    position = 0
    while position < len(text):
        match = _GUARD_TOKENS.match(text, position)
        if not match or match.end() == position:
            return text[position:].strip() == ""
        position = match.end()
    return True


def _shorten(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
