"""What the web side checks of an uploaded attack before storing it: read as text and parsed, never run.

The attack's code runs only in the evaluator's sandbox. Here its source must be small, UTF-8, valid
Python, and define the documented entry point at top level, so that a typo is refused at upload with
a sentence instead of failing every run later.
"""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path

from django.conf import settings

from evaluator.data.archives import ArchiveError, ArchiveLimits, extract_bundle

#: What an attack package may hold: a few small files (its code, perhaps a table of constants).
PACKAGE_LIMITS = ArchiveLimits(max_files=200, max_total_bytes=4 * 2**20, max_member_bytes=2**20, max_depth=8)
#: The file an attack package must hold at its top: the entry point's module.
ENTRY_FILE = "attack.py"

#: The entry point's parameters, in order (docs/attacks.md).
ENTRY_PARAMETERS = ("model", "x", "y", "threat", "budget", "generator")


class AttackRefused(Exception):
    """An upload that cannot be an attack; the message says why."""


def check_source(raw: bytes) -> str:
    """The source as text, or :class:`AttackRefused` with the reason."""
    limit = settings.ARENA_ATTACK_MAX_SOURCE_BYTES
    if len(raw) > limit:
        raise AttackRefused(f"The attack's source is {len(raw):,} bytes; at most {limit:,} are accepted.")
    if not raw.strip():
        raise AttackRefused("The attack's source is empty.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AttackRefused("The attack's source is not UTF-8 text.") from None
    try:
        tree = ast.parse(text, filename="attack.py")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        raise AttackRefused(f"The attack's source is not valid Python{f' (line {line})' if line else ''}.") from None
    entry = next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "attack"), None)
    if entry is None:
        raise AttackRefused("The attack's source defines no top-level function attack(model, x, y, threat, budget, "
                            "generator).")
    positional = len(entry.args.posonlyargs) + len(entry.args.args)
    if positional < len(ENTRY_PARAMETERS) and entry.args.vararg is None:
        # It is called with six positional arguments; their names are the author's.
        raise AttackRefused("attack() must take six arguments: (model, x, y, threat, budget, generator).")
    return text


def is_package(raw: bytes) -> bool:
    """A zip archive (an attack package) rather than one source file."""
    return raw[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def check_upload(raw: bytes) -> None:
    """One source file, or a package: a zip with ``attack.py`` at its top (or in its one top folder) beside
    the modules it imports. A package is unpacked with the bundle importer's checks (no paths out of it, no
    links, no bombs) into a scratch folder that is removed at once; its ``attack.py`` is then checked as a
    single file is."""
    if not is_package(raw):
        check_source(raw)
        return
    if len(raw) > PACKAGE_LIMITS.max_total_bytes:
        raise AttackRefused(f"The attack package is {len(raw):,} bytes; at most {PACKAGE_LIMITS.max_total_bytes:,} "
                            "are accepted.")
    with tempfile.TemporaryDirectory(prefix="arena-attack-check-") as scratch:
        archive = Path(scratch) / "attack.zip"
        archive.write_bytes(raw)
        try:
            root = extract_bundle(archive, Path(scratch) / "unpacked", PACKAGE_LIMITS, marker=ENTRY_FILE)
        except ArchiveError as exc:
            raise AttackRefused(f"The attack package was refused: {exc}.") from None
        check_source((root / ENTRY_FILE).read_bytes())
