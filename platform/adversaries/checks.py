"""What the web side checks of an uploaded attack before storing it: read as text and parsed, never run.

The attack's code runs only in the evaluator's sandbox. Here its source must be small, UTF-8, valid
Python, and define the documented entry point at top level, so that a typo is refused at upload with
a sentence instead of failing every run later.
"""

from __future__ import annotations

import ast

from django.conf import settings

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
