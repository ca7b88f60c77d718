"""Screens a submitted model file by reading it as data: no unpickling, no ``sympify``, no ``exec``.

``torch.export.load`` is not safe on hostile input. Among what an attacker showed: an archive
without ``archive_version`` makes it fall back to a legacy reader that ``sympify``-s strings from
an unscreened top-level JSON (running Python); and "standard" ATen operators such as
``aten.from_file`` read files such as the hidden evaluation set. So a ``.pt2`` is accepted only if
it is exactly what ``torch.export.save`` (torch 2.13) writes, entry by entry and field by field:

* the zip layout is an allow-list of entry names (one program, ``models/model.json``; its weights,
  constants and sample inputs; the format and version markers); anything else, including the
  legacy top-level files, compiled code, pickles, extra files or a second program, is refused;
* every JSON entry is parsed and checked field by field; every symbolic-shape expression and
  guard must parse under :mod:`evaluator.models.shape_grammar`; every operator must be on the
  allow-list of :mod:`evaluator.models.operators`, with its argument rules and the rule that
  in-place operators only write into tensors the graph created itself;
* sizes are bounded before anything is inflated: the archive (decompression bombs), the JSON
  (64 MiB) and the graph (100,000 nodes), so a screen takes milliseconds to a second.

:func:`screen_artifact` is the public entry point, safe to call in the web process at upload time
and in ``python -m evaluator check``. The loader goes one step further with
:func:`write_sanitized_pt2`: torch only ever reads a copy of the archive that the platform wrote
from the screened data, where each expression and guard is the platform's own re-print, node
metadata is dropped, and the pickled sample inputs are left empty (so nothing is unpickled and no
guard function is generated at all). Whatever the upload's bytes hide (duplicate zip entries,
directory/local-header mismatches, odd encodings), torch never sees them.
"""

from __future__ import annotations

import json
import keyword
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from evaluator.errors import EvaluationError
from evaluator.models import operators
from evaluator.models.formats import detect_format
from evaluator.models.shape_grammar import SYMBOL_NAME, GrammarError, canonical_guard, canonical_sym_expr

#: Largest total uncompressed size of a .pt2 archive.
MAX_UNPACKED_BYTES = 4 * 1024**3
#: Larger uncompressed/compressed ratios (for entries above 1 MiB) look like a decompression bomb.
MAX_COMPRESSION_RATIO = 100.0
MAX_ZIP_ENTRIES = 100_000
#: Largest total size of the archive's JSON (program, weights and constants tables).
MAX_PROGRAM_JSON_BYTES = 64 * 1024**2
#: Most graph nodes, counting those in subgraphs (a ResNet-50 exports to about 180).
MAX_GRAPH_NODES = 100_000
#: Deepest JSON nesting (real programs stay below 30).
MAX_JSON_DEPTH = 200
MAX_GUARDS = 1_000

#: What torch 2.13's torch.export.save writes as ``archive_format`` and ``archive_version``
#: (``torch.export.pt2_archive.constants``; a test keeps these in step with the installed torch).
PT2_ARCHIVE_FORMAT = "pt2"
PT2_ARCHIVE_VERSION = "0"
#: Major version of torch.export's serialization schema (``torch._export.serde.schema.SCHEMA_VERSION``).
PT2_SCHEMA_MAJOR = 8
#: What Python's zipfile raises on damaged archives (bad CRC, truncation, broken deflate streams).
ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    zlib.error,
)
#: Top-level folder of the sanitized copy that torch reads.
SANITIZED_ROOT = "model"

_MODEL_JSON = "models/model.json"
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_MARKERS = ("archive_format", "archive_version", "byteorder", ".data/version")
_REQUIRED_ENTRIES = frozenset((*_MARKERS, _MODEL_JSON, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, _SAMPLE_INPUTS))
_OPTIONAL_ENTRIES = frozenset({".data/serialization_id"})
_WEIGHT_FILE = re.compile(r"weight_(?:0|[1-9][0-9]{0,8})")
_CONSTANT_FILE = re.compile(r"tensor_(?:0|[1-9][0-9]{0,8})")
_PAYLOAD_DIRS = {"weights": "data/weights/", "constants": "data/constants/"}
_LEGACY_NAMES = frozenset(
    {
        "version",
        "serialized_exported_program.json",
        "serialized_state_dict.json",
        "serialized_state_dict.pt",
        "serialized_constants.json",
        "serialized_constants.pt",
        "serialized_example_inputs.pt",
    }
)
_ROOT_NAME = re.compile(r"[^\x00-\x1f\x7f/\\]{1,255}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_FQN = re.compile(r"[A-Za-z0-9_]{1,255}(?:\.[A-Za-z0-9_]{1,255}){0,63}")
_CALL_FQN = re.compile(r"[A-Za-z0-9_.@]{0,1000}")

#: Bytes per element of the serialized dtype codes (``torch._export.serde.schema.ScalarType``).
_DTYPE_BYTES = {
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1, 13: 2,
    28: 2, 29: 1, 30: 1, 31: 1, 32: 1, 33: 1, 34: 4, 35: 8,
}  # fmt: skip
_STRIDED_LAYOUT = 7
_DEVICES = frozenset({"cpu", "cuda"})

_PROGRAM_KEYS = frozenset(
    "graph_module opset_version range_constraints schema_version verifiers torch_version guards_code".split()
)
_GRAPH_MODULE_KEYS = frozenset({"graph", "signature", "module_call_graph", "metadata", "treespec_namedtuple_fields"})
_GRAPH_KEYS = frozenset(
    {
        "inputs",
        "outputs",
        "nodes",
        "tensor_values",
        "sym_int_values",
        "sym_bool_values",
        "sym_float_values",
        "is_single_tensor_return",
        "custom_obj_values",
    }
)
_NODE_KEYS = frozenset({"target", "inputs", "outputs", "metadata", "is_hop_single_tensor_return", "name"})
_VERIFIERS = frozenset({"ATEN", "TRAINING"})
_INPUT_KINDS = {"user_input": None, "parameter": "parameter_name", "buffer": "buffer_name"}
_INPUT_KINDS |= {"tensor_constant": "tensor_constant_name", "constant_input": None}
_OUTPUT_REFUSALS = {
    "buffer_mutation": "updates its own buffers while running (a model must not keep state between calls; "
    "export it in eval mode)",
    "parameter_mutation": "updates its own weights while running (a model must not keep state between calls)",
    "user_input_mutation": "writes into the image batch it is given",
    "gradient_to_parameter": "is a training (backward) program",
    "gradient_to_user_input": "is a training (backward) program",
    "loss_output": "is a training (loss) program",
    "token": "calls operators with side effects",
}
_RANDOM_WORDS = ("rand", "bernoulli", "normal", "uniform", "multinomial", "poisson", "exponential", "cauchy")
_RANDOM_WORDS += ("geometric", "dropout", "rrelu", "fractional_max_pool")
_IO_WORDS = ("file", "storage", "save", "load", "print", "mmap", "pickle")
_LOOP_OPS = ("while_loop", "scan", "associative_scan", "map", "map_impl", "invoke_subgraph")


@dataclass(frozen=True)
class ScreenReport:
    """What a passed screen saw: for logs and for ``python -m evaluator check``."""

    format: str
    graph_nodes: int = 0
    operators: tuple[str, ...] = ()
    program_bytes: int = 0


@dataclass(frozen=True)
class ScreenedPt2:
    """A screened archive: the sanitized JSON documents and the zip entries to copy beside them."""

    program: dict[str, Any]
    weights_config: dict[str, Any]
    constants_config: dict[str, Any]
    weight_entries: dict[str, zipfile.ZipInfo]
    constant_entries: dict[str, zipfile.ZipInfo]
    data_version: bytes
    graph_nodes: int
    operators: frozenset[str]
    program_bytes: int


def _unsafe(reason: str) -> EvaluationError:
    return EvaluationError(
        "unsafe_format",
        f"The .pt2 archive {reason}. The platform accepts exactly what torch.export.save writes: export the "
        "model again with torch.export.export and torch.export.save (or `python -m evaluator export`).",
    )


def _corrupt(reason: str) -> EvaluationError:
    return EvaluationError("corrupt_artifact", f"The .pt2 archive {reason}.")


def _too_large(reason: str) -> EvaluationError:
    return EvaluationError("model_too_large", f"The .pt2 archive {reason}.")


def _shorten(text: object, limit: int = 80) -> str:
    shown = str(text)
    return repr(shown if len(shown) <= limit else shown[: limit - 3] + "...")


# --------------------------------------------------------------------------- public entry points


def screen_artifact(
    path: str | os.PathLike[str], format: str, *, max_unpacked_bytes: int = MAX_UNPACKED_BYTES
) -> ScreenReport:
    """Checks a submitted file by inspection only; raises :class:`EvaluationError` on any refusal.

    ``format`` is the declared format (``"safetensors"`` or ``"pt2"``); the content decides, so a
    mismatch is refused. Codes: ``unsafe_format`` (the file could run code or is not what the
    official writer produces), ``corrupt_artifact``, ``model_too_large``, ``format_mismatch``,
    plus :func:`~evaluator.models.formats.detect_format`'s own. Never unpickles, never imports
    the model, never calls ``torch.export.load``.
    """
    detected = detect_format(path)
    if detected != format:
        raise EvaluationError(
            "format_mismatch",
            f"The submission was declared as {format!r} but the file's content is {detected!r}. "
            "Choose the format that matches the file.",
        )
    if detected == "safetensors":
        return ScreenReport("safetensors")
    try:
        with zipfile.ZipFile(path) as archive:
            screened = screen_pt2(archive, max_unpacked_bytes=max_unpacked_bytes)
    except ZIP_ERRORS as exc:
        raise _corrupt(f"is damaged ({_shorten(exc, 200)})") from None
    return ScreenReport("pt2", screened.graph_nodes, tuple(sorted(screened.operators)), screened.program_bytes)


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
    except ZIP_ERRORS as exc:
        raise _corrupt(f"is damaged ({_shorten(exc, 200)})") from None
    _guard_sizes(infos, max_unpacked_bytes, max_ratio, max_entries)


def _guard_sizes(infos: list[zipfile.ZipInfo], max_unpacked_bytes: int, max_ratio: float, max_entries: int) -> None:
    if len(infos) > max_entries:
        raise _corrupt(f"has {len(infos)} entries (limit {max_entries})")
    total = sum(info.file_size for info in infos)
    if total > max_unpacked_bytes:
        raise _corrupt(f"would unpack to {total / 2**30:.1f} GiB, above the {max_unpacked_bytes / 2**30:.1f} GiB limit")
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > 2**20 and ratio > max_ratio:
            raise _corrupt(
                f"entry {_shorten(info.filename)} is compressed {ratio:.0f}-fold, which looks like a decompression "
                "bomb; save the model with torch.export.save unchanged"
            )


def screen_pt2(archive: zipfile.ZipFile, *, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> ScreenedPt2:
    """Screens an open ``.pt2`` zip and returns the sanitized documents the loader writes back out."""
    infos = archive.infolist()
    _guard_sizes(infos, max_unpacked_bytes, MAX_COMPRESSION_RATIO, MAX_ZIP_ENTRIES)
    entries = _screen_layout(infos)
    _check_markers(archive, entries)
    data_version = _read_small(archive, entries[".data/version"], 16)

    json_names = (_MODEL_JSON, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG)
    program_bytes = sum(entries[name].file_size for name in json_names)
    if program_bytes > MAX_PROGRAM_JSON_BYTES:
        raise _too_large(
            f"holds {program_bytes / 2**20:.0f} MiB of program description (limit "
            f"{MAX_PROGRAM_JSON_BYTES // 2**20} MiB); the platform accepts image classifiers of up to "
            f"{MAX_GRAPH_NODES} graph nodes"
        )
    weights = _screen_payload_config(_read_json(archive, entries[_WEIGHTS_CONFIG]), "weights", entries)
    constants = _screen_payload_config(_read_json(archive, entries[_CONSTANTS_CONFIG]), "constants", entries)
    referenced = set(weights.entries) | set(constants.entries)
    for name in entries:
        if name.startswith(("data/weights/weight_", "data/constants/tensor_")) and name not in referenced:
            raise _unsafe(f"contains {_shorten(name)}, which its weights and constants tables do not mention")
    program_text = _read_text(archive, entries[_MODEL_JSON])
    # A lower bound on the node count before parsing: every node has one "target" key, and a JSON
    # string cannot contain that key's unescaped quote-colon, so over-counting is impossible.
    if program_text.count('"target":') > MAX_GRAPH_NODES:
        raise _too_large(f"has more than {MAX_GRAPH_NODES} graph nodes")
    program, nodes, used = _ProgramScreen().screen(_parse_json(program_text, entries[_MODEL_JSON]))
    return ScreenedPt2(
        program=program,
        weights_config=weights.config,
        constants_config=constants.config,
        weight_entries={name: entries[name] for name in weights.entries},
        constant_entries={name: entries[name] for name in constants.entries},
        data_version=data_version,
        graph_nodes=nodes,
        operators=used,
        program_bytes=program_bytes,
    )


def write_sanitized_pt2(archive: zipfile.ZipFile, screened: ScreenedPt2, out: BinaryIO) -> None:
    """Writes the archive torch will read: screened JSON re-serialized, tensors copied, nothing else.

    The sample inputs (a pickle in torch's format) are written empty: torch then unpickles
    nothing, and without example inputs it generates no guard function to ``exec``; shapes are
    still checked against the program's range constraints when the model is called.
    """

    def put(name: str, data: bytes) -> None:
        new.writestr(f"{SANITIZED_ROOT}/{name}", data)

    def dump(document: dict[str, Any]) -> bytes:
        return json.dumps(document, ensure_ascii=True, allow_nan=True).encode("ascii")

    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as new:
        for entries, config_name, config in (
            (screened.weight_entries, _WEIGHTS_CONFIG, screened.weights_config),
            (screened.constant_entries, _CONSTANTS_CONFIG, screened.constants_config),
        ):
            for name, info in sorted(entries.items()):
                target = zipfile.ZipInfo(f"{SANITIZED_ROOT}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(info) as source, new.open(target, "w", force_zip64=info.file_size >= 2**31) as dest:
                    shutil.copyfileobj(source, dest, 2**20)
            put(config_name, dump(config))
        put(_MODEL_JSON, dump(screened.program))
        put(_SAMPLE_INPUTS, b"")
        put("archive_format", PT2_ARCHIVE_FORMAT.encode())
        put("archive_version", PT2_ARCHIVE_VERSION.encode())
        put("byteorder", b"little")
        put(".data/version", screened.data_version)


# --------------------------------------------------------------------------- archive layout


def _screen_layout(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """Maps each entry's name inside the archive folder to its info; refuses any unexpected entry."""
    entries: dict[str, zipfile.ZipInfo] = {}
    seen: set[str] = set()
    root: str | None = None
    for info in infos:
        name = info.filename
        if name in seen:
            raise _unsafe(f"holds two entries named {_shorten(name)} (readers disagree on which one counts)")
        seen.add(name)
        head, slash, relative = name.partition("/")
        if not slash:
            if name in _LEGACY_NAMES or name.endswith(".json"):
                raise _unsafe(
                    f"contains the top-level entry {_shorten(name)} of the older torch.export format, which torch "
                    "reads with a legacy loader that evaluates the file's shape expressions as Python"
                )
            raise _unsafe(f"contains the top-level entry {_shorten(name)}, outside the archive's folder")
        if root is None:
            if not _ROOT_NAME.fullmatch(head) or head in (".", ".."):
                raise _unsafe(f"has a folder name torch.export.save does not write: {_shorten(head)}")
            root = head
        elif head != root:
            raise _unsafe(f"has entries in two top-level folders ({_shorten(root)} and {_shorten(head)})")
        if info.flag_bits & 0x1:
            raise _unsafe(f"has an encrypted entry {_shorten(name)}")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _corrupt(f"entry {_shorten(name)} uses a compression method torch does not read")
        if not _expected_entry(relative):
            raise _unsafe(f"contains {_shorten(relative)}, {_describe_unexpected(relative)}")
        entries[relative] = info
    missing = sorted(_REQUIRED_ENTRIES - entries.keys())
    if "archive_version" in missing:
        raise _unsafe(
            "has no archive_version entry: it is in the older torch.export format, which torch reads with a legacy "
            "loader that evaluates the file's shape expressions as Python"
        )
    if missing:
        raise _corrupt(f"lacks {', '.join(missing)}, which torch.export.save always writes")
    return entries


def _expected_entry(relative: str) -> bool:
    if relative in _REQUIRED_ENTRIES or relative in _OPTIONAL_ENTRIES:
        return True
    folder, _, file = relative.rpartition("/")
    if folder == "data/weights":
        return _WEIGHT_FILE.fullmatch(file) is not None
    if folder == "data/constants":
        return _CONSTANT_FILE.fullmatch(file) is not None
    return False


def _describe_unexpected(relative: str) -> str:
    if relative.startswith("data/aotinductor/") or relative.endswith((".so", ".dll", ".dylib", ".o", ".cpp")):
        return "compiled native code (AOTInductor), which the platform does not run"
    if relative.endswith((".pkl", ".pt", ".pth", ".bin")):
        return "a pickle or a legacy pickled payload, which runs code when loaded"
    if relative.startswith("models/"):
        return "a second program; the archive must hold exactly one, models/model.json"
    if relative.startswith("extra/"):
        return "an extra file; save the model without extra_files"
    if relative.startswith("data/constants/"):
        return "a non-tensor constant (a custom or opaque Python object, which is unpickled)"
    return "which torch.export.save does not write"


def _read_small(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise _corrupt(f"entry {_shorten(info.filename)} is {info.file_size} bytes, more than torch writes")
    with archive.open(info) as handle:
        return handle.read(limit + 1)


def _check_markers(archive: zipfile.ZipFile, entries: dict[str, zipfile.ZipInfo]) -> None:
    if _read_small(archive, entries["archive_format"], 16) != PT2_ARCHIVE_FORMAT.encode():
        raise _unsafe("is not marked as a pt2 archive (archive_format)")
    version = _read_small(archive, entries["archive_version"], 16)
    if version != PT2_ARCHIVE_VERSION.encode():
        raise _unsafe(
            f"has archive_version {_shorten(version.decode('ascii', 'replace'))}, but the platform's torch reads "
            f"version {PT2_ARCHIVE_VERSION} only"
        )
    if _read_small(archive, entries["byteorder"], 16) != b"little":
        raise _unsafe("stores big-endian tensors (byteorder), which the platform does not read")
    if not re.fullmatch(rb"[0-9]{1,4}\n?", _read_small(archive, entries[".data/version"], 16)):
        raise _corrupt("has a malformed .data/version entry")
    if ".data/serialization_id" in entries:
        if not re.fullmatch(rb"[0-9]{0,64}", _read_small(archive, entries[".data/serialization_id"], 64)):
            raise _corrupt("has a malformed .data/serialization_id entry")


def _read_text(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """An entry as UTF-8 text, decoded the way torch decodes it."""
    with archive.open(info) as handle:
        raw = handle.read(MAX_PROGRAM_JSON_BYTES + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt(f"entry {_shorten(info.filename)} is not UTF-8 text") from None


def _parse_json(text: str, info: zipfile.ZipInfo) -> Any:
    """Strict JSON: no duplicate keys (parsers disagree on which one wins); nesting bounded by the recursion limit."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise _corrupt(f"entry {_shorten(info.filename)} is not valid JSON ({_shorten(exc, 200)})") from None


def _read_json(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    return _parse_json(_read_text(archive, info), info)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        duplicated = sorted({key for key, _ in pairs if sum(1 for other, _ in pairs if other == key) > 1})
        raise ValueError(f"duplicate key {duplicated[0]!r}")
    return result


# --------------------------------------------------------------------------- weights and constants


@dataclass(frozen=True)
class _Payload:
    config: dict[str, Any]
    entries: tuple[str, ...]


def _screen_payload_config(document: Any, kind: str, entries: dict[str, zipfile.ZipInfo]) -> _Payload:
    """Weights and constants tables: raw tensors only (no pickles), each inside its own entry's bytes."""
    malformed = _corrupt(f"has a malformed {kind} table")
    if not isinstance(document, dict) or set(document) - {"config"} or not isinstance(document.get("config"), dict):
        raise malformed
    directory = _PAYLOAD_DIRS[kind]
    pattern = _WEIGHT_FILE if kind == "weights" else _CONSTANT_FILE
    config: dict[str, Any] = {}
    used: set[str] = set()
    for fqn, meta in document["config"].items():
        if not _is_fqn(fqn):
            raise _unsafe(f"names a {kind[:-1]} {_shorten(fqn)}, which is not a module attribute path")
        if not isinstance(meta, dict) or set(meta) - {"path_name", "is_param", "use_pickle", "tensor_meta"}:
            raise malformed
        if meta.get("use_pickle") is not False:
            raise _unsafe(f"stores {_shorten(fqn)} as a pickle")
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not pattern.fullmatch(path_name):
            if kind == "constants":
                raise _unsafe(f"holds a non-tensor constant {_shorten(fqn)} (a custom or opaque Python object)")
            raise malformed
        name = directory + path_name
        if name not in entries:
            raise _corrupt(f"lacks the entry {_shorten(name)} that holds {_shorten(fqn)}")
        if not isinstance(meta.get("is_param"), bool):
            raise malformed
        tensor_meta = _screen_tensor_meta(meta.get("tensor_meta"), fqn, entries[name].file_size)
        config[fqn] = {
            "path_name": path_name,
            "is_param": meta["is_param"],
            "use_pickle": False,
            "tensor_meta": tensor_meta,
        }
        used.add(name)
    return _Payload({"config": config}, tuple(sorted(used)))


def _as_int(value: Any, low: int = 0) -> int:
    if not isinstance(value, dict) or set(value) != {"as_int"}:
        raise ValueError("not a concrete integer")
    number = value["as_int"]
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number < 2**63:
        raise ValueError("integer out of range")
    return number


def _screen_tensor_meta(meta: Any, fqn: str, stored_bytes: int) -> dict[str, Any]:
    """A stored tensor's dtype, shape and strides; its elements must lie inside the stored bytes."""
    problem = _corrupt(f"describes the stored tensor {_shorten(fqn)} inconsistently")
    keys = {"dtype", "sizes", "requires_grad", "device", "strides", "storage_offset", "layout"}
    if not isinstance(meta, dict) or set(meta) != keys:
        raise problem
    dtype, device = meta["dtype"], meta["device"]
    if isinstance(dtype, bool) or dtype not in _DTYPE_BYTES or meta["layout"] != _STRIDED_LAYOUT:
        raise problem
    if not isinstance(meta["requires_grad"], bool) or not isinstance(device, dict) or set(device) != {"type", "index"}:
        raise problem
    index = device["index"]
    if device["type"] not in _DEVICES or not (index is None or (type(index) is int and 0 <= index < 64)):
        raise problem
    if not isinstance(meta["sizes"], list) or not isinstance(meta["strides"], list):
        raise problem
    if len(meta["sizes"]) != len(meta["strides"]) or len(meta["sizes"]) > 16:
        raise problem
    try:
        sizes = [_as_int(size) for size in meta["sizes"]]
        strides = [_as_int(stride) for stride in meta["strides"]]
        offset = _as_int(meta["storage_offset"])
    except ValueError:
        raise problem from None
    numel = 1
    for size in sizes:
        numel *= size
    if numel:
        last = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides, strict=True))
        if (last + 1) * _DTYPE_BYTES[dtype] > stored_bytes:
            raise _corrupt(f"stores fewer bytes for {_shorten(fqn)} than its shape needs")
    return {key: meta[key] for key in sorted(keys)}


# --------------------------------------------------------------------------- the program


def _is_name(value: Any) -> bool:
    """Graph value names become FX node names: plain identifiers, no keywords, no dunders."""
    return (
        isinstance(value, str)
        and _IDENTIFIER.fullmatch(value) is not None
        and not keyword.iskeyword(value)
        and not value.startswith("__")
    )


def _is_fqn(value: Any) -> bool:
    """A module attribute path (``layer1.0.conv1.weight``) that names no dunder attribute."""
    return (
        isinstance(value, str)
        and _FQN.fullmatch(value) is not None
        and not any(part.startswith("__") for part in value.split("."))
    )


def _tensor_names(argument: Any) -> Iterator[str]:
    """Names of the tensors an argument or output refers to (subgraphs excluded)."""
    stack = [argument]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "as_graph":
                    continue
                if key == "as_tensor" and isinstance(value, dict) and isinstance(value.get("name"), str):
                    yield value["name"]
                elif key == "as_tensors" and isinstance(value, list):
                    yield from (v["name"] for v in value if isinstance(v, dict) and isinstance(v.get("name"), str))
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _literal(argument: Any) -> tuple[bool, object]:
    """``(True, value)`` for a serialized bool/int/float/None argument, ``(False, None)`` otherwise."""
    if isinstance(argument, dict) and len(argument) == 1:
        ((kind, value),) = argument.items()
        if kind == "as_none":
            return True, None
        if kind in ("as_bool", "as_int", "as_float"):
            return True, value
    return False, None


def describe_refused_operator(target: str) -> str:
    """Why an operator is refused, in the researcher's terms."""
    short = target.removeprefix("torch.ops.")
    lowered = short.lower()
    if any(word in lowered for word in _IO_WORDS):
        return f"calls {short}, which reads, writes or prints outside the model"
    if any(word in lowered for word in _RANDOM_WORDS):
        return (
            f"calls {short}, which draws random numbers; the evaluation needs a deterministic model, so randomised "
            "defences are not accepted"
        )
    if short.startswith("higher_order.") and short.split(".")[1] in _LOOP_OPS:
        return f"calls {short}, a loop whose length the platform cannot bound"
    if short.endswith(".out"):
        return f"calls {short}, an out= overload that writes into a tensor it is given"
    return (
        f"calls {_shorten(short)}, which is not on the platform's list of allowed operators "
        "(evaluator/models/operators.py); rewrite that part of the model with standard layers"
    )


class _ProgramScreen:
    """Checks ``models/model.json`` and builds its sanitized copy in one pass."""

    def __init__(self) -> None:
        self.nodes = 0
        self.used: set[str] = set()

    def screen(self, program: Any) -> tuple[dict[str, Any], int, frozenset[str]]:
        malformed = _corrupt("has a malformed program (models/model.json)")
        if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
            raise malformed
        self._known_keys(program, _PROGRAM_KEYS, "program")
        version = program.get("schema_version")
        if not isinstance(version, dict) or version.get("major") != PT2_SCHEMA_MAJOR:
            raise _unsafe(
                f"was written with serialization schema {_shorten(version)}; the platform's torch reads major "
                f"version {PT2_SCHEMA_MAJOR} only"
            )
        verifiers = program.get("verifiers", [])
        if not isinstance(verifiers, list) or not set(verifiers) <= _VERIFIERS:
            raise _unsafe(f"asks for verifiers {_shorten(verifiers)}; only ATEN and TRAINING programs are accepted")
        if not isinstance(program.get("torch_version", ""), str) or len(program.get("torch_version", "")) > 100:
            raise malformed
        opset = program.get("opset_version", {})
        if not isinstance(opset, dict) or not all(type(v) is int for v in opset.values()):
            raise malformed
        self._range_constraints(program.get("range_constraints", {}))
        guards = self._guards(program.get("guards_code", []))

        module = program["graph_module"]
        self._known_keys(module, _GRAPH_MODULE_KEYS, "graph module")
        if not isinstance(module.get("graph"), dict):
            raise malformed
        self._signature(module.get("signature"))
        self._module_call_graph(module.get("module_call_graph", []))
        self._graph(module["graph"])
        sanitized = self._sanitize(program, 0)
        sanitized["guards_code"] = guards
        sanitized["graph_module"]["metadata"] = {}
        return sanitized, self.nodes, frozenset(self.used)

    @staticmethod
    def _known_keys(document: dict[str, Any], known: frozenset[str], what: str) -> None:
        unknown = sorted(set(document) - known)
        if unknown:
            raise _unsafe(f"has a {what} field {_shorten(unknown[0])} that torch 2.13's export does not write")

    @staticmethod
    def _range_constraints(constraints: Any) -> None:
        if not isinstance(constraints, dict):
            raise _corrupt("has malformed range constraints")
        for symbol, bounds in constraints.items():
            if not SYMBOL_NAME.fullmatch(symbol):
                raise _unsafe(
                    f"constrains a symbol {_shorten(symbol)} other than a plain size; export with a dynamic batch "
                    'dimension only: dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}'
                )
            if not isinstance(bounds, dict) or set(bounds) - {"min_val", "max_val"}:
                raise _corrupt("has malformed range constraints")
            for bound in bounds.values():
                if bound is not None and (type(bound) is not int or abs(bound) >= 2**63):
                    raise _corrupt("has malformed range constraints")

    @staticmethod
    def _guards(guards: Any) -> list[str]:
        if not isinstance(guards, list) or len(guards) > MAX_GUARDS:
            raise _corrupt("has malformed guards")
        canonical = []
        for guard in guards:
            try:
                canonical.append(canonical_guard(guard))
            except GrammarError as exc:
                raise _unsafe(
                    f"contains guard code the platform does not accept: {_shorten(guard)} ({exc}); guards may only "
                    "compare input sizes with integers"
                ) from None
        return canonical

    @staticmethod
    def _signature(signature: Any) -> None:
        if not isinstance(signature, dict) or set(signature) - {"input_specs", "output_specs"}:
            raise _corrupt("has a malformed graph signature")
        for spec in signature.get("input_specs", []):
            if not isinstance(spec, dict) or len(spec) != 1:
                raise _corrupt("has a malformed graph signature")
            ((kind, body),) = spec.items()
            if kind not in _INPUT_KINDS:
                raise _unsafe(f"takes an input of kind {_shorten(kind)} (custom objects or side-effect tokens)")
            name_field = _INPUT_KINDS[kind]
            if name_field is not None:
                fqn = body.get(name_field) if isinstance(body, dict) else None
                if not _is_fqn(fqn):
                    raise _unsafe(f"names a {kind} {_shorten(fqn)}, which is not a module attribute path")
        for spec in signature.get("output_specs", []):
            if not isinstance(spec, dict) or len(spec) != 1:
                raise _corrupt("has a malformed graph signature")
            kind = next(iter(spec))
            if kind != "user_output":
                raise _unsafe(_OUTPUT_REFUSALS.get(kind, f"has an output of kind {_shorten(kind)}"))

    @staticmethod
    def _module_call_graph(entries: Any) -> None:
        if not isinstance(entries, list):
            raise _corrupt("has a malformed module call graph")
        for entry in entries:
            if not isinstance(entry, dict) or not _CALL_FQN.fullmatch(str(entry.get("fqn", ""))):
                raise _corrupt("has a malformed module call graph")
            signature = entry.get("signature")
            if signature is None:
                continue
            if not isinstance(signature, dict):
                raise _corrupt("has a malformed module call graph")
            for key in ("in_spec", "out_spec"):
                try:
                    json.loads(signature.get(key, "null"))
                except (TypeError, ValueError, RecursionError):
                    raise _corrupt("has a malformed module call graph") from None

    def _graph(self, graph: dict[str, Any]) -> None:
        """One graph (or subgraph): names, operators, argument rules and what in-place operators write into."""
        self._known_keys(graph, _GRAPH_KEYS, "graph")
        if graph.get("custom_obj_values"):
            raise _unsafe("holds custom (TorchBind) objects, which run native code chosen by the file")
        for table in ("tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values"):
            values = graph.get(table, {})
            if not isinstance(values, dict):
                raise _corrupt("has a malformed graph")
            for name in values:
                if not _is_name(name):
                    raise _unsafe(f"names a graph value {_shorten(name)}; names must be plain identifiers")
        nodes = graph.get("nodes", [])
        if not isinstance(nodes, list):
            raise _corrupt("has a malformed graph")
        owned: set[str] = set()  # tensors this graph allocated itself (never its inputs or views of them)
        defined = set(_tensor_names(graph.get("inputs", [])))  # each value is defined once (FX requires it)
        for node in nodes:
            self.nodes += 1
            if self.nodes > MAX_GRAPH_NODES:
                raise _too_large(f"has more than {MAX_GRAPH_NODES} graph nodes")
            if not isinstance(node, dict) or not isinstance(node.get("target"), str):
                raise _corrupt("has a malformed graph node")
            self._known_keys(node, _NODE_KEYS, "graph node")
            if node.get("name", "") != "" and not _is_name(node["name"]):
                raise _unsafe(f"names a graph node {_shorten(node['name'])}; names must be plain identifiers")
            self._node(node, owned)
            outputs = list(_tensor_names(node.get("outputs", [])))
            if len(set(outputs)) != len(outputs) or defined & set(outputs):
                raise _unsafe(f"defines the graph value {_shorten(sorted(defined & set(outputs)) or outputs)} twice")
            defined.update(outputs)

    def _node(self, node: dict[str, Any], owned: set[str]) -> None:
        target = node["target"]
        inputs = node.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(i, dict) and "arg" in i for i in inputs):
            raise _corrupt("has a malformed graph node")
        arguments = {i.get("name"): i["arg"] for i in inputs}
        if len(arguments) != len(inputs) and target.startswith("torch.ops.aten."):
            raise _unsafe(f"passes the same argument twice to {_shorten(target)}")
        tensor_inputs = {name for i in inputs for name in _tensor_names(i["arg"])}
        outputs = set(_tensor_names(node.get("outputs", [])))
        if target.startswith("torch.ops.aten."):
            op = target[len("torch.ops.") :]
            if op not in operators.ALLOWED_ATEN_OPS:
                raise _unsafe(describe_refused_operator(target))
            self._argument_rules(op, arguments)
            if op in operators.IN_PLACE_OPS:
                mutated = set(_tensor_names(arguments.get("self")))
                if not mutated or not mutated <= owned:
                    raise _unsafe(
                        f"calls the in-place operator {op} on {_shorten(', '.join(sorted(mutated)) or '?')}, which is "
                        "its input batch, a weight, a buffer or a view of one; a model may only overwrite tensors it "
                        "computed itself"
                    )
            # An in-place operator returns the (owned) tensor it wrote into; a view or a composite that may
            # return an argument is owned only if everything it could alias is.
            if op in operators.IN_PLACE_OPS or op not in operators.MAY_ALIAS_OPS or tensor_inputs <= owned:
                owned |= outputs
            self.used.add(op)
        elif target.startswith("torch.ops.higher_order."):
            name = target[len("torch.ops.higher_order.") :]
            if name not in operators.HIGHER_ORDER_OPS:
                raise _unsafe(describe_refused_operator(target))
            subgraphs = [i["arg"]["as_graph"] for i in inputs if isinstance(i["arg"], dict) and "as_graph" in i["arg"]]
            for subgraph in subgraphs:
                if not isinstance(subgraph, dict) or not isinstance(subgraph.get("graph"), dict):
                    raise _corrupt("has a malformed subgraph")
                if not _is_name(subgraph.get("name")):
                    raise _unsafe(f"names a subgraph {_shorten(subgraph.get('name'))}; names must be plain identifiers")
                self._graph(subgraph["graph"])
            self.used.add(f"higher_order.{name}")
        elif target in operators.SYMBOLIC_TARGETS:
            if tensor_inputs or outputs:
                raise _unsafe(f"applies {target} to tensors; it is only allowed on sizes")
            self.used.add(target)
        else:
            raise _unsafe(describe_refused_operator(target))

    @staticmethod
    def _argument_rules(op: str, arguments: dict[Any, Any]) -> None:
        alternatives = operators.ARGUMENT_RULES.get(op)
        if alternatives is None:
            return

        def holds(rule: operators.ArgumentRule) -> bool:
            if rule.name not in arguments:
                return rule.accepts(False, None)
            is_literal, value = _literal(arguments[rule.name])
            return is_literal and rule.accepts(True, value)

        if any(all(holds(rule) for rule in rules) for rules in alternatives):
            return
        shown = ", ".join(f"{rule.name}={rule.value}" for rule in alternatives[0])
        if "dropout" in op or op.startswith("aten.scaled_dot_product_attention"):
            why = "random dropout would make the model's outputs change from call to call"
        else:
            why = "in training mode it normalises with whole-batch statistics and updates its running statistics"
        raise _unsafe(f"calls {op} without {shown}: {why}; call model.eval() before exporting")

    def _sanitize(self, value: Any, depth: int) -> Any:
        """A copy of the program in which every expression is re-printed and node metadata is empty."""
        if depth > MAX_JSON_DEPTH:
            raise _unsafe(f"nests its program deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, list):
            return [self._sanitize(item, depth + 1) for item in value]
        if not isinstance(value, dict):
            return value
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if key in ("as_operator", "as_custom_obj", "as_opaque_obj"):
                raise _unsafe(f"passes {key[3:].replace('_', ' ')}s as arguments, which the platform does not accept")
            if key == "expr_str":
                try:
                    copy[key] = canonical_sym_expr(item)
                except GrammarError as exc:
                    raise _unsafe(
                        f"contains a shape expression the platform does not accept: {_shorten(item)} ({exc}); export "
                        'with a plain dynamic batch dimension: dynamic_shapes={"x": {0: torch.export.Dim("batch", '
                        "min=1)}}"
                    ) from None
            elif key == "metadata" and "target" in value:
                copy[key] = {}
            else:
                copy[key] = self._sanitize(item, depth + 1)
        return copy
