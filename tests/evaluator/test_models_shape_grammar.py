"""The strict grammars for shape expressions and guards: what torch writes passes unchanged in meaning, nothing else."""

from __future__ import annotations

import ast
import io
import json
import zipfile
from typing import Any

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch import nn

from evaluator.models.shape_grammar import (
    MAX_DEPTH,
    MAX_TEXT_CHARS,
    GrammarError,
    canonical_guard,
    canonical_sym_expr,
    parse_guard,
    parse_sym_expr,
)


class Sizes(nn.Module):
    """Size arithmetic that reaches the serialized program: views by batch, interpolation, floor division."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = F.interpolate(x, scale_factor=2).flatten(2).transpose(1, 2)
        z = torch.cat([y, y], 0).reshape(2 * n, -1)[:n]
        if n % 2 == 0:
            z = z.reshape(n // 2, -1).repeat(2, 1)
        return z[:, :10] + (x.view(x.size(0), -1)[:, :10] if n > 2 else 0)


def exported_strings() -> tuple[set[str], list[str]]:
    """Every ``expr_str`` and guard torch 2.13 writes for :class:`Sizes` (plain and Dim.AUTO batch)."""
    expressions: set[str] = set()
    guards: list[str] = []
    for dim in (torch.export.Dim("batch", min=1), torch.export.Dim.AUTO):
        try:
            program = torch.export.export(Sizes(), (torch.rand(4, 1, 4, 4),), dynamic_shapes=({0: dim},))
        except Exception:  # a named Dim refuses the size-dependent branches; AUTO accepts them as guards
            continue
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        with zipfile.ZipFile(buffer) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/models/model.json"))
            document = json.loads(archive.read(name))
        guards += document["guards_code"]
        stack: list[Any] = [document]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                expressions.update(v for k, v in item.items() if k == "expr_str")
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return expressions, guards


@pytest.fixture(scope="module")
def torch_strings() -> tuple[set[str], list[str]]:
    expressions, guards = exported_strings()
    assert len(expressions) >= 3 and guards  # the fixture must exercise more than a bare symbol
    return expressions, guards


def sympify_as_torch(text: str) -> sympy.Expr:
    """How torch's deserializer turns an expression into sympy (same local functions); trusted text only."""
    from torch.utils._sympy import functions

    names = ("FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilDiv", "Identity")
    return sympy.sympify(text, locals={name: getattr(functions, name) for name in names})


def test_torch_expressions_pass_and_reprint_identically(torch_strings: tuple[set[str], list[str]]) -> None:
    expressions, _ = torch_strings
    for text in expressions:
        assert canonical_sym_expr(text) == text
        assert sympify_as_torch(canonical_sym_expr(text)) == sympify_as_torch(text)


def test_torch_guards_pass_and_reprint_to_the_same_python(torch_strings: tuple[set[str], list[str]]) -> None:
    _, guards = torch_strings
    for guard in guards:
        canonical = canonical_guard(guard)
        # Parenthesisation aside, the reprint is the same Python expression (compared as syntax trees).
        assert ast.dump(ast.parse(canonical, mode="eval")) == ast.dump(ast.parse(guard, mode="eval"))
        assert canonical_guard(canonical) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "Symbol('s77', positive=True, integer=True)",
        "Mul(Integer(-4), Symbol('s0', integer=True))",
        "Max(Integer(1), FloorDiv(Symbol('s3', positive=True, integer=True), Integer(2)))",
        "Equality(Mod(Symbol('s1', integer=True), Integer(2)), Integer(0))",
        "And(StrictLessThan(Integer(2), Symbol('s1', integer=True)), Not(Equality(Symbol('s1', integer=True), "
        "Integer(5))))",
    ],
)
def test_canonical_expressions_mean_what_they_said(text: str) -> None:
    assert sympify_as_torch(canonical_sym_expr(text)) == sympify_as_torch(text)


def test_spacing_is_normalised() -> None:
    assert canonical_sym_expr(" Mul( Integer(2) ,Symbol( 's1' ,integer = True ) ) ") == (
        "Mul(Integer(2), Symbol('s1', integer=True))"
    )
    assert canonical_guard("L['x'].size()[0]>2") == "(L['x'].size()[0] > 2)"


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "exec(chr(49))",
        "Symbol('s1').__class__",
        "Symbol('x')",  # not a size symbol
        "Symbol('s1', commutative=eval)",
        "Symbol('s1', integer=True, integer=True)",
        "Symbol('s1' + 'x')",
        "Integer(1) + Integer(2)",  # operators: only srepr calls are accepted
        "Pow(Symbol('s1'), Integer(2))",  # not written for a dynamic batch; refused rather than trusted
        "Integer(10**10)",
        "Integer(99999999999999999999)",
        "Integer(١)",  # an Arabic-Indic digit
        "Float('1e9999')",
        "Rational(1, 2)",
        "Lambda(Symbol('s1'), Symbol('s1'))",
        "Add(Integer(1))",
        "Not(Integer(1), Integer(2))",
        "Integer(1) Integer(2)",
        "Integer(1",
        "",
        "Add(" + ", ".join(["Integer(1)"] * 40) + ")",
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(GrammarError):
        parse_sym_expr(text)


def test_limits() -> None:
    nested_guard = "L['x'].size()[0]"
    for _ in range(MAX_DEPTH - 1):
        nested_guard = f"({nested_guard} + 1)"
    assert parse_guard(f"{nested_guard} > 2")
    with pytest.raises(GrammarError, match="deeper"):
        parse_guard(f"(({nested_guard})) > 2")
    deep = "Integer(1)"
    for _ in range(MAX_DEPTH + 1):
        deep = f"Add({deep}, Integer(1))"
    with pytest.raises(GrammarError, match="deeper"):
        parse_sym_expr(deep)
    long = "Add(" + ", ".join(["Symbol('s1', integer=True)"] * 30) + ")"
    assert len(long) < MAX_TEXT_CHARS and parse_sym_expr(long)
    with pytest.raises(GrammarError, match="characters long"):
        parse_sym_expr(" " * (MAX_TEXT_CHARS + 1))
    with pytest.raises(GrammarError):
        parse_sym_expr(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "guard",
    [
        "__import__('os').system('true') == 0",
        "L['x'].size()[0] == 9**9**9**9",
        "L['x'].size()[0] == len('abc')",
        "L['x'].size()[0] == 1; import os",
        "L['x'].size()[0] == 1\nimport os",
        "L['x'].size()[0] if True else 0",
        "L['x'].shape[0] == 1",
        "L['x'].size()[0] == 1.5",
        "L['__class__'].size()[0] == 1",
        "L['x'].size()[0] == math.inf",
        "(lambda: 1)() == 1",
        "L['x'].size()[0] == 1 and",
        "L[x].size()[0] == 1",
        "",
    ],
)
def test_guards_outside_the_grammar_are_refused(guard: str) -> None:
    with pytest.raises(GrammarError):
        parse_guard(guard)
