"""Tells what a submitted model file is from its bytes, without ever unpickling anything.

File names and declared formats are whatever the uploader typed; only the content decides.
Pickle-based formats (``torch.save`` files, raw pickles) and TorchScript archives are refused
here with a sentence that tells the researcher how to convert, because loading them runs code
chosen by the file's author.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Literal

from evaluator.errors import EvaluationError

DetectedFormat = Literal["safetensors", "pt2"]

#: safetensors' own reader refuses headers above 100 MB; so do we, before reading one.
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
#: Bytes per element of each safetensors dtype (sub-byte float types count as 1).
_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "F4": 1,
    "F6_E2M3": 1,
    "F6_E3M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "C64": 8,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
#: Magic numbers of formats people upload by mistake, for a more helpful message.
_OTHER_MAGIC = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (for example Keras .h5)"),
    (b"GGUF", "a GGUF file"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
)

_CONVERT_HINT = (
    "Submit either a torch.export program (.pt2, written by torch.export.save) or the model's "
    "weights as safetensors for a zoo architecture; `python -m evaluator convert` turns a "
    "PyTorch checkpoint into either."
)


def detect_format(path: str | os.PathLike[str]) -> DetectedFormat:
    """Returns ``"safetensors"`` or ``"pt2"``, or raises :class:`EvaluationError` saying why not."""
    file_path = Path(path)
    try:
        size = file_path.stat().st_size
        with file_path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise EvaluationError("corrupt_artifact", f"The model file could not be read ({exc.strerror}).") from None
    if size == 0:
        raise EvaluationError("corrupt_artifact", "The model file is empty (0 bytes); the upload may have failed.")

    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _classify_zip(file_path)
    # Safetensors first: its header length is little-endian, so a valid file whose header is 0x80 bytes long
    # modulo 256 (640, 896, ...) starts with the byte that opens a pickle. Nothing is unpickled either way:
    # a file that looks like safetensors is parsed as JSON and checked, a pickle is refused unread.
    if _looks_like_safetensors(head, size):
        _validate_safetensors(file_path, size)
        return "safetensors"
    if head[:1] == b"\x80":
        raise EvaluationError(
            "unsafe_format",
            "The file is a Python pickle (for example from torch.save with the legacy format). Pickles "
            "execute code when loaded, so the platform never opens them. " + _CONVERT_HINT,
        )
    for magic, description in _OTHER_MAGIC:
        if head.startswith(magic):
            raise EvaluationError(
                "unsupported_format", f"The file is {description}, not a model format we accept. " + _CONVERT_HINT
            )
    raise EvaluationError(
        "unsupported_format",
        "The file is not in a format we recognise (neither safetensors nor a torch.export .pt2 archive). "
        + _CONVERT_HINT,
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A plausible header length followed by ``{``: enough to call it a (possibly broken) attempt."""
    if len(head) < 8:
        return False
    header_len = struct.unpack("<Q", head[:8])[0]
    if not 0 < header_len <= MAX_SAFETENSORS_HEADER_BYTES:
        return False
    return len(head) == 8 or head[8:9] == b"{"


def _validate_safetensors(path: Path, size: int) -> None:
    """Checks the JSON header and that the tensors exactly tile the data that follows it."""

    def corrupt(reason: str) -> EvaluationError:
        return EvaluationError("corrupt_artifact", f"The safetensors file is damaged: {reason}.")

    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if 8 + header_len > size:
            raise corrupt(f"its header claims {header_len} bytes but the file has only {size} (truncated upload?)")
        raw_header = handle.read(header_len)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise corrupt("its header is not a JSON object")

    data_len = size - 8 - header_len
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise corrupt("its __metadata__ is not a map of strings")
            continue
        if not isinstance(info, dict):
            raise corrupt(f"the entry for tensor {name!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _SAFETENSORS_DTYPE_BYTES:
            raise corrupt(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise corrupt(f"tensor {name!r} has an invalid shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise corrupt(f"tensor {name!r} has invalid data offsets")
        numel = 1
        for dim in shape:
            numel *= dim
        nbytes = offsets[1] - offsets[0]
        if dtype in ("F4", "F6_E2M3", "F6_E3M2"):
            expected = None  # packed sub-byte types: the safetensors reader checks these itself
        else:
            expected = numel * _SAFETENSORS_DTYPE_BYTES[dtype]
        if expected is not None and nbytes != expected:
            raise corrupt(f"tensor {name!r} needs {expected} bytes but its offsets span {nbytes}")
        spans.append((offsets[0], offsets[1]))

    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise corrupt("its tensors overlap or leave gaps in the data")
        position = end
    if position > data_len:
        raise corrupt(f"it needs {position} bytes of tensor data but holds only {data_len} (truncated upload?)")
    if position < data_len:
        raise corrupt(f"it has {data_len - position} unexplained bytes after the tensor data")


def _classify_zip(path: Path) -> DetectedFormat:
    """Tells a torch.export archive from TorchScript and torch.save zips by their entry names."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            prefixes = {name.split("/", 1)[0] for name in names if "/" in name}
            relative = {name.split("/", 1)[1] for name in names if "/" in name}
            if any(rel.startswith("code/") for rel in relative) or "constants.pkl" in relative:
                raise EvaluationError(
                    "unsafe_format",
                    "The file is a TorchScript archive (torch.jit.save). TorchScript runs code on load and is "
                    "not accepted outside the sandbox; export the model with torch.export instead "
                    "(`python -m evaluator convert` does it for you).",
                )
            if "data.pkl" in relative or any(name.endswith(".pkl") for name in names):
                raise EvaluationError(
                    "unsafe_format",
                    "The file was written by torch.save: it is a pickle, and pickles execute code when loaded, so "
                    "the platform never opens them. " + _CONVERT_HINT,
                )
            # A folder with a pt2 marker and a program makes this a .pt2 attempt, even beside stray entries:
            # the screen (evaluator.models.screening) then refuses those with a precise reason.
            marked = [prefix for prefix in sorted(prefixes) if f"{prefix}/archive_format" in names]
            if len(marked) == 1:
                prefix = marked[0]
                has_model = any(name.startswith(f"{prefix}/models/") and name.endswith(".json") for name in names)
                marker = archive.getinfo(f"{prefix}/archive_format")
                if has_model and marker.file_size <= 64 and archive.read(marker).strip() == b"pt2":
                    return "pt2"
    except zipfile.BadZipFile as exc:
        raise EvaluationError(
            "corrupt_artifact", f"The file starts like a zip archive but is damaged ({exc})."
        ) from None
    except (KeyError, OSError, RuntimeError, NotImplementedError) as exc:
        raise EvaluationError("corrupt_artifact", f"The zip archive could not be read ({exc}).") from None
    raise EvaluationError(
        "unsupported_format",
        "The file is a zip archive but not a torch.export program (.pt2 written by torch.export.save). "
        + _CONVERT_HINT,
    )
