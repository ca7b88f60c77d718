"""The published bundle schema (docs/bundle-schema.json) is the importer's, and the demo's bundles satisfy it.

Hosts write their manifests against ``docs/bundle-schema.json`` (docs/bundles.md links it), while the
importer validates against ``bundles.schema.SCHEMA``. The file must therefore be that dictionary written
out, byte for byte, and regenerating it must be one command (``scripts/write_bundle_schema``). The demo's
manifests (``platform/builders/bundles/*.yaml``) are real bundles imported by ``build_demo``: each must
pass the published file under Draft 2020-12 and the importer's own consistency checks, so the examples a
host copies from are valid ones. The complete manifests in docs/bundles.md (its ```yaml blocks that start
with ``format: 1``) are checked the same way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from bundles.manifest import consistency_problems
from bundles.schema import SCHEMA

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "docs" / "bundle-schema.json"
SCRIPT = ROOT / "scripts" / "write_bundle_schema"
DEMO_MANIFESTS = sorted((ROOT / "platform" / "builders" / "bundles").glob("*.yaml"))
GUIDE = ROOT / "docs" / "bundles.md"


def guide_manifests() -> list[str]:
    """The complete manifests docs/bundles.md shows: its yaml code blocks that start with ``format: 1``."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), flags=re.S | re.M)
    return [block for block in blocks if block.startswith("format: 1")]


def problems_of(manifest: object) -> list[str]:
    """Violations of the published schema, then (when there are none) of the importer's consistency checks."""
    schema = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    errors = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
              for error in Draft202012Validator(schema).iter_errors(manifest)]
    return errors or [str(problem) for problem in consistency_problems(manifest)]


def expected_text() -> str:
    return json.dumps(SCHEMA, indent=2, sort_keys=True) + "\n"


def test_published_schema_is_the_importers() -> None:
    assert PUBLISHED.is_file(), "docs/bundle-schema.json is missing: run scripts/write_bundle_schema"
    assert PUBLISHED.read_text(encoding="utf-8") == expected_text(), (
        "docs/bundle-schema.json differs from bundles.schema.SCHEMA: run scripts/write_bundle_schema and commit "
        "the file")


def test_published_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_script_writes_the_published_file(tmp_path: Path) -> None:
    assert os.access(SCRIPT, os.X_OK), "scripts/write_bundle_schema must be executable"
    out = tmp_path / "bundle-schema.json"
    # The running interpreter's virtual environment, so the script neither creates nor looks for another.
    env = {**os.environ, "ARENA_VENV": sys.prefix}
    subprocess.run([str(SCRIPT), str(out)], check=True, env=env, capture_output=True, timeout=120)
    assert out.read_text(encoding="utf-8") == expected_text()


def test_there_are_demo_manifests() -> None:
    names = {path.name for path in DEMO_MANIFESTS}
    assert {"demo-digits.yaml", "demo-detector.yaml", "demo-cifar10.yaml", "usps-digits.yaml"} <= names


@pytest.mark.parametrize("path", DEMO_MANIFESTS, ids=lambda path: path.name)
def test_demo_manifest_validates_against_the_published_schema(path: Path) -> None:
    assert problems_of(yaml.safe_load(path.read_text(encoding="utf-8"))) == []


def test_the_guides_examples_validate_against_the_published_schema() -> None:
    examples = guide_manifests()
    assert len(examples) >= 3, "docs/bundles.md shows a classifier, a detector and a generator example"
    for text in examples:
        manifest = yaml.safe_load(text)
        assert problems_of(manifest) == [], manifest["tracks"][0]["slug"]
