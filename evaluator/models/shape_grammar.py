"""Strict grammars for the two code-like strings a ``.pt2`` program carries, and their canonical re-prints.

``torch.export.load`` hands every symbolic-shape expression (``expr_str``) to ``sympy.sympify``,
which evaluates its string as Python, and turns ``guards_code`` into Python source that it
``exec``-s. A string from an upload must therefore never reach either. This module parses both
kinds with small recursive-descent parsers of our own that accept only what ``torch.export``
writes for image classifiers with a dynamic batch dimension, and prints the parse tree back in one
canonical form. The loader writes those re-prints into the copy of the archive that torch reads,
so the text torch evaluates is produced by the platform, character by character.

Symbolic expressions are sympy ``srepr`` text, e.g.
``Mul(Integer(4), Symbol('s77', positive=True, integer=True))``. Accepted: ``Symbol`` with a size
symbol name (``s`` and digits) and boolean assumptions, ``Integer`` literals, and a few integer
functions (sums, products, floor division, modulo, min/max, comparisons and their boolean
combinations). Guards are Python comparisons over input sizes, e.g.
``(L['x'].size()[0] % 2) == 0``.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass

#: Longest expression or guard accepted (a dynamic-batch export writes fewer than 200 characters).
MAX_TEXT_CHARS = 2_000
#: Deepest nesting accepted; sympy and Python's parser recurse on depth.
MAX_DEPTH = 32
#: Most arguments to one function call.
MAX_ARGS = 32
#: Integer literals must fit in a signed 64-bit size, like every size and stride torch handles.
MAX_INT = 2**63 - 1

#: A backed size symbol, the only kind a dynamic batch dimension creates.
SYMBOL_NAME = re.compile(r"s(?:0|[1-9][0-9]{0,8})")

_ASSUMPTIONS = frozenset({"integer", "positive", "nonnegative", "real", "finite"})
#: Function heads and how many arguments each takes (``None``: two or more).
_FUNCTIONS: dict[str, int | None] = {
    "Add": None,
    "Mul": None,
    "Max": None,
    "Min": None,
    "And": None,
    "Or": None,
    "Not": 1,
    "FloorDiv": 2,
    "CeilDiv": 2,
    "CleanDiv": 2,
    "Mod": 2,
    "PythonMod": 2,
    "Equality": 2,
    "Unequality": 2,
    "StrictLessThan": 2,
    "LessThan": 2,
    "StrictGreaterThan": 2,
    "GreaterThan": 2,
}


class GrammarError(ValueError):
    """The text is outside the accepted grammar; the message says where."""


# --------------------------------------------------------------------------- symbolic expressions


@dataclass(frozen=True)
class SymbolNode:
    name: str
    assumptions: tuple[tuple[str, bool], ...]


@dataclass(frozen=True)
class IntegerNode:
    value: int


@dataclass(frozen=True)
class CallNode:
    head: str
    args: tuple[SymExpr, ...]


SymExpr = SymbolNode | IntegerNode | CallNode

_SREPR_TOKEN = re.compile(
    r"\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<int>-?[0-9]+)|(?P<str>'[^'\\]*')|(?P<punct>[(),=]))"
)


def _tokenize(text: str, pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = pattern.match(text, position)
        if match is None or match.end() == position:
            rest = text[position:]
            if rest.isspace():
                break
            at = position + len(rest) - len(rest.lstrip())
            raise GrammarError(f"unexpected character {text[at]!r} at position {at}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Cursor:
    """A token stream with one-token lookahead."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, kind: str | None = None, text: str | None = None) -> str:
        token = self.peek()
        if token is None:
            raise GrammarError("the text ends too early")
        if (kind is not None and token[0] != kind) or (text is not None and token[1] != text):
            wanted = repr(text) if text is not None else kind
            raise GrammarError(f"expected {wanted} but found {token[1]!r}")
        self.index += 1
        return token[1]

    def accept(self, kind: str, text: str) -> bool:
        token = self.peek()
        if token == (kind, text):
            self.index += 1
            return True
        return False


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise GrammarError(f"integer {text[:24]}... is too long")
    value = int(text)
    if abs(value) > MAX_INT:
        raise GrammarError(f"integer {value} does not fit in 64 bits")
    return value


def parse_sym_expr(text: str) -> SymExpr:
    """Parses sympy ``srepr`` text of an integer size expression, or raises :class:`GrammarError`."""
    if not isinstance(text, str):
        raise GrammarError("the expression is not a string")
    if len(text) > MAX_TEXT_CHARS:
        raise GrammarError(f"the expression is {len(text)} characters long (limit {MAX_TEXT_CHARS})")
    cursor = _Cursor(_tokenize(text, _SREPR_TOKEN))
    tree = _parse_sym(cursor, 0)
    if cursor.peek() is not None:
        raise GrammarError(f"unexpected {cursor.peek()[1]!r} after the expression")  # type: ignore[index]
    return tree


def _parse_sym(cursor: _Cursor, depth: int) -> SymExpr:
    if depth > MAX_DEPTH:
        raise GrammarError(f"the expression nests deeper than {MAX_DEPTH} levels")
    head = cursor.take("ident")
    cursor.take("punct", "(")
    if head == "Symbol":
        name = cursor.take("str")[1:-1]
        if not SYMBOL_NAME.fullmatch(name):
            raise GrammarError(f"symbol name {name[:40]!r} is not a size symbol like s0 or s77")
        assumptions: list[tuple[str, bool]] = []
        while cursor.accept("punct", ","):
            key = cursor.take("ident")
            cursor.take("punct", "=")
            value = cursor.take("ident")
            if key not in _ASSUMPTIONS or value not in ("True", "False"):
                raise GrammarError(f"symbol assumption {key}={value} is not accepted")
            if any(key == seen for seen, _ in assumptions):
                raise GrammarError(f"symbol assumption {key} is given twice")
            assumptions.append((key, value == "True"))
        cursor.take("punct", ")")
        return SymbolNode(name, tuple(assumptions))
    if head == "Integer":
        value = _parse_int(cursor.take("int"))
        cursor.take("punct", ")")
        return IntegerNode(value)
    if head not in _FUNCTIONS:
        raise GrammarError(f"function {head[:40]!r} is not accepted")
    args = [_parse_sym(cursor, depth + 1)]
    while cursor.accept("punct", ","):
        if len(args) >= MAX_ARGS:
            raise GrammarError(f"{head} has more than {MAX_ARGS} arguments")
        args.append(_parse_sym(cursor, depth + 1))
    cursor.take("punct", ")")
    arity = _FUNCTIONS[head]
    if (arity is None and len(args) < 2) or (arity is not None and len(args) != arity):
        raise GrammarError(f"{head} takes {arity or 'two or more'} arguments, not {len(args)}")
    return CallNode(head, tuple(args))


def print_sym_expr(tree: SymExpr) -> str:
    """The canonical ``srepr`` text of ``tree``; ``sympify`` of it rebuilds the same expression."""
    if isinstance(tree, SymbolNode):
        extra = "".join(f", {key}={value}" for key, value in tree.assumptions)
        return f"Symbol('{tree.name}'{extra})"
    if isinstance(tree, IntegerNode):
        return f"Integer({tree.value})"
    return f"{tree.head}({', '.join(print_sym_expr(arg) for arg in tree.args)})"


def canonical_sym_expr(text: str) -> str:
    """Parse then re-print: the only form of an uploaded expression the loader lets torch see."""
    return print_sym_expr(parse_sym_expr(text))


# --------------------------------------------------------------------------- guards

_GUARD_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<source>L(?:\['[A-Za-z_][A-Za-z0-9_]*'\]|\[[0-9]{1,4}\])+"
    r"(?:\.size\(\)\[[0-9]{1,2}\]|\.stride\(\)\[[0-9]{1,2}\]|\.storage_offset\(\)))"
    r"|(?P<int>[0-9]+)"
    r"|(?P<word>and|or|not)\b"
    r"|(?P<op>==|!=|<=|>=|//|[<>*%+\-()])"
    r")"
)
_COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")


@dataclass(frozen=True)
class GuardLeaf:
    text: str


@dataclass(frozen=True)
class GuardUnary:
    op: str
    operand: GuardExpr


@dataclass(frozen=True)
class GuardBinary:
    op: str
    left: GuardExpr
    right: GuardExpr


@dataclass(frozen=True)
class GuardChain:
    """``a < b <= c``: operands and the comparisons between them (Python chains comparisons)."""

    operands: tuple[GuardExpr, ...]
    ops: tuple[str, ...]


GuardExpr = GuardLeaf | GuardUnary | GuardBinary | GuardChain


def parse_guard(text: str) -> GuardExpr:
    """Parses one guard (a boolean Python expression over input sizes), or raises :class:`GrammarError`."""
    if not isinstance(text, str):
        raise GrammarError("the guard is not a string")
    if len(text) > MAX_TEXT_CHARS:
        raise GrammarError(f"the guard is {len(text)} characters long (limit {MAX_TEXT_CHARS})")
    cursor = _Cursor(_tokenize(text, _GUARD_TOKEN))
    tree = _guard_or(cursor, 0)
    if cursor.peek() is not None:
        raise GrammarError(f"unexpected {cursor.peek()[1]!r} after the guard")  # type: ignore[index]
    return tree


def _deeper(depth: int) -> int:
    """Nesting counts parentheses and unary operators (the precedence levels between them are fixed)."""
    if depth >= MAX_DEPTH:
        raise GrammarError(f"the guard nests deeper than {MAX_DEPTH} levels")
    return depth + 1


def _guard_or(cursor: _Cursor, depth: int) -> GuardExpr:
    left = _guard_and(cursor, depth)
    while cursor.accept("word", "or"):
        left = GuardBinary("or", left, _guard_and(cursor, depth))
    return left


def _guard_and(cursor: _Cursor, depth: int) -> GuardExpr:
    left = _guard_not(cursor, depth)
    while cursor.accept("word", "and"):
        left = GuardBinary("and", left, _guard_not(cursor, depth))
    return left


def _guard_not(cursor: _Cursor, depth: int) -> GuardExpr:
    if cursor.accept("word", "not"):
        return GuardUnary("not", _guard_not(cursor, _deeper(depth)))
    return _guard_comparison(cursor, depth)


def _guard_comparison(cursor: _Cursor, depth: int) -> GuardExpr:
    operands = [_guard_sum(cursor, depth)]
    ops: list[str] = []
    while (token := cursor.peek()) is not None and token[0] == "op" and token[1] in _COMPARISONS:
        ops.append(cursor.take())
        operands.append(_guard_sum(cursor, depth))
    return operands[0] if not ops else GuardChain(tuple(operands), tuple(ops))


def _guard_sum(cursor: _Cursor, depth: int) -> GuardExpr:
    left = _guard_product(cursor, depth)
    while (token := cursor.peek()) is not None and token[0] == "op" and token[1] in ("+", "-"):
        left = GuardBinary(cursor.take(), left, _guard_product(cursor, depth))
    return left


def _guard_product(cursor: _Cursor, depth: int) -> GuardExpr:
    left = _guard_factor(cursor, depth)
    while (token := cursor.peek()) is not None and token[0] == "op" and token[1] in ("*", "//", "%"):
        left = GuardBinary(cursor.take(), left, _guard_factor(cursor, depth))
    return left


def _guard_factor(cursor: _Cursor, depth: int) -> GuardExpr:
    if cursor.accept("op", "-"):
        return GuardUnary("-", _guard_factor(cursor, _deeper(depth)))
    if cursor.accept("op", "("):
        inner = _guard_or(cursor, _deeper(depth))
        cursor.take("op", ")")
        return inner
    token = cursor.peek()
    if token is not None and token[0] == "int":
        return GuardLeaf(str(_parse_int(cursor.take())))
    if token is not None and token[0] == "source":
        source = cursor.take()
        for key in re.findall(r"\['([^']*)'\]", source):
            if keyword.iskeyword(key) or key.startswith("__"):
                raise GrammarError(f"input name {key!r} is not accepted")
        return GuardLeaf(source)
    raise GrammarError(f"expected a size, an integer or '(' but found {token[1] if token else 'the end'!r}")


def print_guard(tree: GuardExpr) -> str:
    """Canonical, fully parenthesised Python text of ``tree``."""
    if isinstance(tree, GuardLeaf):
        return tree.text
    if isinstance(tree, GuardUnary):
        return f"(not {print_guard(tree.operand)})" if tree.op == "not" else f"(-{print_guard(tree.operand)})"
    if isinstance(tree, GuardBinary):
        return f"({print_guard(tree.left)} {tree.op} {print_guard(tree.right)})"
    parts = [print_guard(tree.operands[0])]
    for op, operand in zip(tree.ops, tree.operands[1:], strict=True):
        parts.append(f"{op} {print_guard(operand)}")
    return "(" + " ".join(parts) + ")"


def canonical_guard(text: str) -> str:
    """Parse then re-print a guard, as for :func:`canonical_sym_expr`."""
    return print_guard(parse_guard(text))
