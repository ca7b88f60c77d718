"""The layers point one way: each Django app imports only the apps listed before it in INSTALLED_APPS,
the evaluator imports nothing of the platform, and an import inside a function says why it is there.

The order (accounts, benchmarks, submissions, adversaries, leaderboards, bundles, builders; the project
package ``arena`` above them all) is written once, in ``platform/arena/settings.py``, and described in
docs/architecture.md.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = ROOT / "platform"
EVALUATOR = ROOT / "evaluator"


def _layer_order() -> list[str]:
    """The project's own apps, in INSTALLED_APPS order, read from the settings' source (no Django needed)."""
    tree = ast.parse((PLATFORM / "arena" / "settings.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "INSTALLED_APPS" for t in node.targets):
            names = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]  # type: ignore[attr-defined]
            return [n for n in names if (PLATFORM / n / "apps.py").exists()]
    raise AssertionError("INSTALLED_APPS not found in platform/arena/settings.py")


LAYERS = _layer_order()
PROJECT_PACKAGES = {*LAYERS, "arena", "evaluator"}


def _sources(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*.py")):
        if "migrations" not in path.parts:  # migrations name other apps as dependencies, by design
            yield path


def _imports(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line, imported top-level package, inside a function?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(i) for f in functions for i in ast.walk(f) if isinstance(i, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            yield node.lineno, name.split(".")[0], id(node) in inner


def test_the_layer_order_is_the_documented_one():
    assert LAYERS == ["accounts", "benchmarks", "submissions", "adversaries", "leaderboards", "bundles", "builders"]
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert " -> ".join(LAYERS) in doc


def test_each_app_imports_only_the_apps_below_it():
    wrong = []
    for rank, app in enumerate(LAYERS):
        allowed = set(LAYERS[: rank + 1])
        for path in _sources(PLATFORM / app):
            for line, package, _ in _imports(path):
                if package in LAYERS and package not in allowed or package == "arena":
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {package}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_evaluator_knows_nothing_of_django_or_the_platform():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {package}"
             for path in _sources(EVALUATOR) for line, package, _ in _imports(path)
             if package in {*LAYERS, "arena", "django", "rest_framework", "celery"}]
    assert not wrong, "\n".join(wrong)


def _commented_block(lines: list[str], index: int) -> bool:
    """Whether a comment line sits in the run of imports (and comments) that ``lines[index]`` belongs to,
    or just above it: one reason may serve a block of imports."""
    i = index - 1
    while i >= 0:
        text = lines[i].strip()
        if text.startswith("#"):
            return True
        if not (text.startswith(("from ", "import ")) or text.endswith((",", "(")) or text == ")"):
            return False
        i -= 1
    return False


@pytest.mark.parametrize("folder", [PLATFORM, EVALUATOR], ids=["platform", "evaluator"])
def test_an_import_inside_a_function_says_why(folder: Path):
    """Project imports inside functions hide import cycles unless each has a reason, written beside it
    (a comment on the line or heading its block of imports; AppConfig.ready says why in its docstring)."""
    silent = []
    for path in _sources(folder):
        lines = path.read_text().splitlines()
        for line, package, inside in _imports(path):
            if not inside or package not in PROJECT_PACKAGES or path.name == "apps.py":
                continue
            here = lines[line - 1]
            if "#" in here or _commented_block(lines, line - 1):
                continue
            silent.append(f"{path.relative_to(ROOT)}:{line}: {here.strip()}")
    assert not silent, "imports inside functions without a reason:\n" + "\n".join(silent)


def test_the_web_server_starts_without_torch():
    """Pages read the evaluator's registries (attack stages, transforms, failure codes) but never load torch:
    each gunicorn worker would otherwise carry it (about a second to import and hundreds of MB)."""
    import subprocess
    import sys

    code = ("import os, sys; sys.path[:0] = ['platform', '.']; os.environ['DJANGO_SETTINGS_MODULE'] = 'arena.settings';"
            "import django; django.setup(); import arena.urls, leaderboards.queries as q;"
            "print(','.join(q.STAGE_ORDER[:5]), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["apgd-ce,apgd-t,fmn,fab-t,square", "False"]
