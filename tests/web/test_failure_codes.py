"""Every failure code the code base can produce has a row in the one failure table.

The codes are found in the source, not listed by hand: an ast scan of evaluator/ and platform/ for
each way a code is written (an ``EvaluationError``, a failed ``Result``, a stored ``failure_code``,
the sandbox's descriptions of how a child ended). A new code without a row fails here, so a page can
never fall back to "The evaluation failed." for a failure the platform knows about.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from evaluator import failures as evaluator_failures
from submissions import failures

ROOT = Path(__file__).resolve().parents[2]
CODE = re.compile(r"^[a-z]+(_[a-z]+)*$")


def _module_constants() -> dict[str, str]:
    """Upper-case module-level names bound to a code-like string (``WORKER_LOST = "worker_lost"``)."""
    named: dict[str, str] = {}
    for folder in ("evaluator", "platform"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:
                if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                        and node.targets[0].id.isupper() and isinstance(node.value, ast.Constant)
                        and isinstance(node.value.value, str) and CODE.match(node.value.value)):
                    named[node.targets[0].id] = node.value.value
    return named


NAMED = _module_constants()


def _const(node: ast.AST | None) -> str | None:
    """The code a node spells: a string literal, or a module constant's name."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE.match(node.value):
        return node.value
    if isinstance(node, ast.Name) and node.id in NAMED:
        return NAMED[node.id]
    return None


def _name(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _codes_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    in_sandbox = "sandbox" in path.parts
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            position = {"EvaluationError": 0, "failure": 1, "platform_failure": 1, "failure_message": 0}.get(name)
            if position is not None and len(node.args) > position:
                found.add(_const(node.args[position]) or "")
            for keyword in node.keywords:
                if keyword.arg in {"failure_code", "error_code"}:
                    found.add(_const(keyword.value) or "")
            if in_sandbox and name == "append" and node.args:  # the reasons a supervisor stopped a child
                found.add(_const(node.args[0]) or "")
        elif in_sandbox and isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and node.value.elts:
            found.add(_const(node.value.elts[0]) or "")  # ``return code, sentence``
        elif in_sandbox and isinstance(node, ast.Tuple) and len(node.elts) == 3:
            found.add(_const(node.elts[1]) or "")  # (stderr patterns, code, sentence) tables
    found.discard("")
    return found


def _produced() -> dict[str, list[str]]:
    codes: dict[str, list[str]] = {}
    for folder in ("evaluator", "platform"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for code in _codes_in(path):
                codes.setdefault(code, []).append(str(path.relative_to(ROOT)))
    return codes


def test_the_scan_finds_the_codes_of_every_producer():
    """The scan itself works: it sees codes from the evaluator, the sandbox and the platform."""
    produced = set(_produced())
    assert {"model_error", "data_integrity", "wrong_input_shape", "export_failed",  # EvaluationError
            "timeout", "too_many_processes", "disk_full", "cpu_time_exceeded", "crashed",  # the sandbox
            "sandbox_unavailable", "worker_lost"} <= produced  # the platform


def test_every_code_that_can_be_produced_has_a_row():
    missing = {code: where for code, where in _produced().items() if code not in failures.FAILURES}
    assert not missing, f"failure codes without a row in the failure table: {missing}"


def test_the_platform_only_codes_are_not_the_evaluators():
    assert failures.WORKER_LOST in failures.FAILURES
    assert failures.WORKER_LOST not in evaluator_failures.FAILURES
    assert set(evaluator_failures.FAILURES) < set(failures.FAILURES)


def test_platform_faults_are_exactly_the_flagged_rows():
    flagged = {code for code, row in failures.FAILURES.items() if row.platform_fault}
    assert flagged == {"data_integrity", "data_unavailable", "internal", "sandbox_unavailable", "worker_lost",
                       "out_of_time"}
    assert all(failures.is_platform_fault(code) for code in flagged)
    assert not failures.is_platform_fault("model_error") and not failures.is_platform_fault("no_such_code")


def test_every_row_has_a_sentence_and_a_code_is_defined_once():
    for code, row in failures.FAILURES.items():
        assert row.code == code and row.headline.endswith(".") and len(row.headline) > 20
    try:
        evaluator_failures.failure_table(evaluator_failures.Failure("x", "X."), evaluator_failures.Failure("x", "Y."))
    except ValueError as exc:
        assert "twice" in str(exc)
    else:
        raise AssertionError("a code given twice was accepted")


def test_a_stored_failure_shows_its_rows_headline():
    assert failures.failure_message("disk_full", "") == failures.headline("disk_full")
    assert failures.failure_message("worker_lost", "It stopped responding 3 times.").startswith(
        failures.FAILURES["worker_lost"].headline)
    assert failures.headline("no_such_code") == evaluator_failures.UNKNOWN_HEADLINE
