"""`import platform` must stay the standard library everywhere, although a folder of the project
is called platform/ (it holds the Django project and has no __init__.py on purpose)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STDLIB_PLATFORM = str(Path(sysconfig.get_paths()["stdlib"]) / "platform.py")

PROBE = (
    "import platform, django, torch, json; "
    "print(json.dumps({'file': platform.__file__, 'system': platform.system(), 'python': platform.python_version()}))"
)


def _probe(args: list[str], extra_env: dict[str, str] | None = None) -> dict:
    import json

    env = {**os.environ, **(extra_env or {})}
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_no_package_named_platform_in_the_project():
    assert (ROOT / "platform").is_dir()
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_from_the_project_root():
    info = _probe([sys.executable, "-c", PROBE])
    assert info["file"] == STDLIB_PLATFORM and info["system"] == "Linux"


def test_with_the_worker_and_gunicorn_path():
    """Workers and gunicorn run with platform/ and the root on PYTHONPATH."""
    info = _probe([sys.executable, "-c", PROBE], {"PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}"})
    assert info["file"] == STDLIB_PLATFORM


def test_inside_django_via_manage_py():
    info = _probe([sys.executable, "manage.py", "shell", "-c", PROBE])
    assert info["file"] == STDLIB_PLATFORM


def test_in_this_test_process():
    import platform

    import django  # noqa: F401  (imports platform itself)

    assert platform.__file__ == STDLIB_PLATFORM
    assert callable(platform.python_implementation)
