"""Read ``benchmark.yaml`` and check it against the schema and against itself, naming keys.

Every problem is reported as a :class:`Problem` whose ``key`` is the manifest path the way a
person reads it (``tracks[1].evaluation_sets[0].data``), and all of them at once: a host fixing a
bundle should see the whole list, not one error per upload.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bundles.schema import SCHEMA
from evaluator.attacks.suites import SUITES

MANIFEST_NAME = "benchmark.yaml"
#: A manifest is text a person writes; anything larger is not one.
MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class Problem:
    """One reason a bundle is refused: where (a manifest key) and what."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class BundleInvalid(Exception):
    """The bundle is refused; ``problems`` lists every reason found. Nothing was registered or written."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def key_of(path: Iterable[str | int]) -> str:
    """``["tracks", 1, "evaluation_sets", 0]`` -> ``tracks[1].evaluation_sets[0]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: a few aliases can expand to billions of nodes downstream."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                 "allowed in a manifest")
        return super().compose_node(parent, index)


def load_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the bundle at ``root``, parsed and schema-checked; BundleInvalid otherwise."""
    path = root / MANIFEST_NAME
    if path.is_symlink() or not path.is_file():
        raise BundleInvalid([Problem("", f"no {MANIFEST_NAME} at the top of the bundle")])
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleInvalid([Problem("", f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")])
    try:
        manifest = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # noqa: S506 (safe loader)
    except UnicodeDecodeError:
        raise BundleInvalid([Problem("", f"{MANIFEST_NAME} is not UTF-8 text")]) from None
    except yaml.YAMLError as exc:
        raise BundleInvalid([Problem("", f"{MANIFEST_NAME} is not valid YAML: {exc}")]) from None
    except RecursionError:  # thousands of nested brackets: the parser recurses once per level
        raise BundleInvalid([Problem("", f"{MANIFEST_NAME} nests too deeply to be a manifest")]) from None
    problems = schema_problems(manifest)
    if problems:
        raise BundleInvalid(problems)
    problems = consistency_problems(manifest)
    if problems:
        raise BundleInvalid(problems)
    return manifest


def schema_problems(manifest: Any) -> list[Problem]:
    """Every schema violation, deepest first within a key, one line each."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(SCHEMA)
    problems = []
    for error in sorted(validator.iter_errors(manifest), key=lambda e: (key_of(e.absolute_path), e.message)):
        if error.validator == "oneOf" and error.instance is not None and isinstance(error.instance, dict):
            chosen = [k for k in ("data", "split", "generate") if k in error.instance]
            message = (f"exactly one of data, split or generate is needed, found {', '.join(chosen) or 'none'}"
                       if "name" in error.instance else error.message)
        else:
            message = error.message
        problems.append(Problem(key_of(error.absolute_path), message))
    return problems


def set_reference(track: dict[str, Any], reference: str) -> tuple[bool, str, str]:
    """(public?, track slug, set name) of a reference written in ``track``'s sets."""
    public = reference.startswith("public:")
    reference = reference.removeprefix("public:")
    slug, _, name = reference.rpartition("/")
    return public, slug or track["slug"], name


def consistency_problems(manifest: dict[str, Any]) -> list[Problem]:
    """What the schema cannot say: unique names, references to earlier sets, one clean set, class counts."""
    problems: list[Problem] = []
    seen_tracks: set[str] = set()
    described: set[tuple[str, str]] = set()  # (track, set) described so far, in bundle order
    public: set[tuple[str, str]] = set()
    for t, track in enumerate(manifest["tracks"]):
        where = f"tracks[{t}]"
        if track["slug"] in seen_tracks:
            problems.append(Problem(f"{where}.slug", f"track {track['slug']!r} is described twice"))
        seen_tracks.add(track["slug"])
        detector = track["task"] == "detector"
        classes = 2 if detector else track.get("classes", len(track.get("class_names", [])) or None)
        if classes is None:
            problems.append(Problem(where, "a classifier track needs classes or class_names"))
        elif "class_names" in track and len(track["class_names"]) != classes:
            problems.append(Problem(f"{where}.class_names",
                                    f"{len(track['class_names'])} names for {classes} classes"))
        if detector and track.get("classes", 2) != 2:
            problems.append(Problem(f"{where}.classes", "a detector track has 2 classes (real 0, fake 1)"))
        if track.get("attack_suite", "attacks-2") not in SUITES:
            problems.append(Problem(f"{where}.attack_suite", f"unknown attack suite {track['attack_suite']!r}; "
                                                             f"registered: {', '.join(sorted(SUITES))}"))
        labels = [threat["label"] for threat in track.get("threat_models", [])]
        if len(set(labels)) != len(labels):
            problems.append(Problem(f"{where}.threat_models", "threat-model labels must be distinct"))
        if track.get("threat_models") and detector:
            problems.append(Problem(f"{where}.threat_models", "detector tracks take detector_attacks, not "
                                                              "threat_models"))
        value_range = track["input"].get("value_range", [0, 1])
        if value_range[0] >= value_range[1]:
            problems.append(Problem(f"{where}.input.value_range", "the minimum must be below the maximum"))
        generators = track.get("generators", {})
        if "attack_generator" in track and track["attack_generator"] not in generators:
            problems.append(Problem(f"{where}.attack_generator",
                                    f"{track['attack_generator']!r} is not one of the track's generators"))
        names: set[str] = set()
        cleans = 0
        for s, evaluation_set in enumerate(track["evaluation_sets"]):
            key = f"{where}.evaluation_sets[{s}]"
            name = evaluation_set["name"]
            if name in names:
                problems.append(Problem(f"{key}.name", f"set {name!r} is described twice in this track"))
            names.add(name)
            cleans += evaluation_set["role"] == "clean"
            if evaluation_set["role"] == "clean" and "shift_kind" in evaluation_set:
                problems.append(Problem(f"{key}.shift_kind", "a clean set has no shift kind"))
            if not evaluation_set.get("hidden", True):
                problems.append(Problem(f"{key}.hidden", "a scored set must stay hidden: the site would serve it "
                                                         "and a model could be fitted to it (publish a public "
                                                         "part with split.public_name instead)"))
            generate = evaluation_set.get("generate")
            if generate:
                inline = generate.get("reals") if isinstance(generate.get("reals"), dict) else None
                if inline and "public_name" in inline.get("split", {}):
                    if (track["slug"], inline["split"]["public_name"]) in public | described:
                        problems.append(Problem(f"{key}.generate.reals.split.public_name",
                                                f"{inline['split']['public_name']!r} is taken"))
                    public.add((track["slug"], inline["split"]["public_name"]))
                for field in ("from", "reals", "public_reals"):
                    if field not in generate or not isinstance(generate[field], str):
                        continue
                    is_public, slug, target = set_reference(track, generate[field])
                    if (slug, target) not in (public if is_public else described):
                        problems.append(Problem(f"{key}.generate.{field}",
                                                f"{generate[field]!r} names no {'public part' if is_public else 'set'}"
                                                " described before this one"))
                if "generator" in generate and generate["generator"] not in generators:
                    problems.append(Problem(f"{key}.generate.generator",
                                            f"{generate['generator']!r} is not one of the track's generators"))
                if generate["kind"] in ("generator_fakes", "transfer_attack", "laundering") and not detector:
                    problems.append(Problem(f"{key}.generate.kind", f"{generate['kind']} makes detector sets; "
                                                                    "this is a classifier track"))
            split = evaluation_set.get("split")
            if split and "public_name" in split:
                if (track["slug"], split["public_name"]) in public | described:
                    problems.append(Problem(f"{key}.split.public_name", f"{split['public_name']!r} is taken"))
                public.add((track["slug"], split["public_name"]))
            described.add((track["slug"], name))
        if cleans != 1:
            problems.append(Problem(f"{where}.evaluation_sets", f"a track has exactly one clean set, found {cleans}"))
        baseline_names = [b["name"] for b in track.get("baselines", [])]
        for b, name in enumerate(baseline_names):
            if baseline_names.index(name) != b:
                problems.append(Problem(f"{where}.baselines[{b}].name", f"baseline {name!r} is named twice"))
    return problems
