"""The JSON Schema of ``benchmark.yaml``, the manifest of a benchmark bundle (format 1).

The schema is the bundle format's published definition: ``docs/bundle-schema.json`` is this
dictionary written out (a test keeps the two equal), and the importer validates every manifest
against it before it reads a single data file. What a schema cannot say (a set named twice, a
reference to a set that does not exist, labels beyond the class count) the importer checks next,
naming the manifest key the same way (``tracks[1].evaluation_sets[0].data``).
"""

from __future__ import annotations

from typing import Any

FORMAT_VERSION = 1

_SLUG = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]{0,79}$"}
_TEXT = {"type": "string", "maxLength": 20000}
_RELATIVE_PATH = {"type": "string", "minLength": 1, "maxLength": 400, "pattern": r"^[^/\\]([^\\]*[^/\\])?$"}
_SECRET = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_.-]{0,59}$",
           "description": "Name of a seed this installation derives from its secret (never a number): sets "
                          "that name the same secret in one benchmark draw the same way."}
#: A reference to a set already described in the bundle: "name" (same track) or "track/name";
#: "public:name" is the public half of a split.
_REFERENCE = {"type": "string", "pattern": r"^(public:)?([a-z0-9][a-z0-9_-]*/)?[a-z0-9][a-z0-9_-]*$"}

LAYOUTS = ("folders", "real_fake", "npz", "npy", "safetensors", "idx", "hdf5")

_DATA: dict[str, Any] = {
    "type": "object",
    "description": "Files of one set, in one of the layouts researchers have: class folders of PNG/JPEG "
                   "(folders), real/ and fake/ folders (real_fake, detectors), .npz, a pair of .npy, safetensors, "
                   "a pair of IDX files, HDF5. Array layouts take NCHW, NHWC or (N, H, W), uint8 or float in [0, 1].",
    "required": ["layout"],
    "additionalProperties": False,
    "properties": {
        "layout": {"enum": list(LAYOUTS)},
        "path": _RELATIVE_PATH,
        "images": {"type": "string", "minLength": 1, "maxLength": 400},
        "labels": {"type": "string", "minLength": 1, "maxLength": 400},
    },
    "allOf": [
        {"if": {"properties": {"layout": {"enum": ["folders", "real_fake", "npz", "safetensors", "hdf5"]}}},
         "then": {"required": ["path"]}},
        {"if": {"properties": {"layout": {"enum": ["npy", "idx"]}}}, "then": {"required": ["images", "labels"]}},
        {"if": {"properties": {"layout": {"enum": ["hdf5"]}}}, "then": {"required": ["images", "labels"]}},
    ],
}

_SUBSAMPLE = {
    "type": "object", "additionalProperties": False, "required": ["count"],
    "description": "Keep a seeded subset of this many images (the seed: a named secret).",
    "properties": {"count": {"type": "integer", "minimum": 1}, "secret": _SECRET},
}

_GENERATE = {
    "type": "object",
    "description": "A set computed at import from sets already described: the corruptions x 5 severities "
                   "(corruptions), the laundering conditions (laundering), fakes drawn from a generator artifact "
                   "next to reals (generator_fakes), or fakes attacked through a surrogate detector trained on "
                   "public data (transfer_attack; defer: true leaves it to `import_benchmark --deferred`).",
    "required": ["kind"],
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": ["corruptions", "laundering", "generator_fakes", "transfer_attack"]},
        "from": _REFERENCE,
        "definition": {"enum": ["imagenet-c", "cifar10-c"]},
        "per_cell": {"type": "integer", "minimum": 1, "maximum": 10000},
        "what": _TEXT,
        "reals": {"oneOf": [_REFERENCE, {
            "type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
            "description": "Reals given here rather than by a set: files, or the hidden part of a split (its "
                           "labels are ignored: every real is label 0).",
            "properties": {"data": _DATA, "split": {"$ref": "#/$defs/split"}}}]},
        "first": {"type": "integer", "minimum": 1},
        "per_class": {"type": "integer", "minimum": 1},
        "generator": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]*$",
                      "description": "A key of the track's generators."},
        "secret": _SECRET,
        "public_reals": _REFERENCE,
        "public_first": {"type": "integer", "minimum": 1},
        "public_fake_seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "surrogate_architecture": {"type": "string", "minLength": 1},
        "surrogate_epochs": {"type": "integer", "minimum": 1, "maximum": 1000},
        "eps": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "steps": {"type": "integer", "minimum": 1, "maximum": 10000},
        "defer": {"type": "boolean"},
    },
    "allOf": [
        {"if": {"properties": {"kind": {"const": "corruptions"}}},
         "then": {"required": ["from", "definition", "per_cell"]}},
        {"if": {"properties": {"kind": {"const": "laundering"}}}, "then": {"required": ["from", "per_class"]}},
        {"if": {"properties": {"kind": {"const": "generator_fakes"}}},
         "then": {"required": ["reals", "first", "generator"]}},
        {"if": {"properties": {"kind": {"const": "transfer_attack"}}},
         "then": {"required": ["from", "per_class", "public_reals", "generator", "surrogate_architecture",
                               "surrogate_epochs", "eps", "steps"]}},
    ],
}

_SPLIT = {
    "type": "object", "additionalProperties": False, "required": ["data", "hidden_fraction"],
    "description": "This set is the hidden part of a public/hidden split of `data` by a seed that stays secret; "
                   "the public part is written for researchers as `public_name` and exported.",
    "properties": {
        "data": _DATA,
        "hidden_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "secret": _SECRET,
        "public_name": _SLUG,
    },
}

_SPLIT_REF = {"$ref": "#/$defs/split"}

_EVALUATION_SET = {
    "type": "object",
    "required": ["name", "role", "source", "license"],
    "additionalProperties": False,
    "description": "One evaluation set: exactly one of data, split or generate.",
    "properties": {
        "name": _SLUG,
        "role": {"enum": ["clean", "shift"]},
        "shift_kind": {"enum": ["natural", "synthetic", "adversarial"]},
        "source": _TEXT,
        "license": {"type": "string", "maxLength": 200},
        "hidden": {"type": "boolean", "description": "Hidden sets are never served (default true). Scored "
                                                     "sets must be hidden."},
        "metadata": {"type": "object"},
        "data": _DATA,
        "split": _SPLIT_REF,
        "generate": _GENERATE,
        "subsample": _SUBSAMPLE,
        "groups": {"type": "object", "additionalProperties": False, "required": ["path", "names"],
                   "description": "Optional subgroups: a .npy of int indices into names, one per image.",
                   "properties": {"path": _RELATIVE_PATH,
                                  "names": {"type": "array", "items": {"type": "string", "minLength": 1},
                                            "minItems": 1, "uniqueItems": True}}},
    },
    "oneOf": [{"required": ["data"]}, {"required": ["split"]}, {"required": ["generate"]}],
    "allOf": [{"if": {"properties": {"role": {"const": "shift"}}}, "then": {"required": ["shift_kind"]}}],
}

_THREAT_MODEL = {
    "type": "object", "additionalProperties": False, "required": ["norm", "eps", "label"],
    "properties": {"norm": {"enum": ["Linf", "L2"]}, "eps": {"type": "number", "exclusiveMinimum": 0},
                   "label": {"type": "string", "minLength": 1, "maxLength": 40}},
}

_BASELINE = {
    "type": "object", "additionalProperties": False, "required": ["name", "file", "format", "model_type"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "file": _RELATIVE_PATH,
        "format": {"enum": ["safetensors", "pt2"]},
        "zoo_architecture": {"type": "string", "maxLength": 100},
        "model_type": {"enum": ["standard", "robust", "extra_data"]},
        "architecture": {"type": "string", "maxLength": 200},
        "training_data": {"type": "string", "maxLength": 200},
        "license": {"type": "string", "maxLength": 200},
        "code_url": {"type": "string", "maxLength": 500},
        "paper_url": {"type": "string", "maxLength": 500},
    },
    "if": {"properties": {"format": {"const": "safetensors"}}}, "then": {"required": ["zoo_architecture"]},
}

_GENERATOR = {
    "type": "object", "additionalProperties": False, "required": ["file", "architecture"],
    "properties": {"file": _RELATIVE_PATH, "architecture": {"type": "string", "minLength": 1}},
}

_TRACK = {
    "type": "object",
    "required": ["slug", "name", "task", "input", "suite_version", "evaluation_sets"],
    "additionalProperties": False,
    "properties": {
        "slug": _SLUG,
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": _TEXT,
        "notes": _TEXT,
        "task": {"enum": ["classifier", "detector"]},
        "input": {
            "type": "object", "additionalProperties": False, "required": ["channels", "height", "width"],
            "properties": {"channels": {"enum": [1, 3]},
                           "height": {"type": "integer", "minimum": 1, "maximum": 4096},
                           "width": {"type": "integer", "minimum": 1, "maximum": 4096},
                           "value_range": {"type": "array", "items": {"type": "number"}, "minItems": 2,
                                           "maxItems": 2}},
        },
        "classes": {"type": "integer", "minimum": 2, "maximum": 100000},
        "class_names": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 100},
                        "minItems": 2, "uniqueItems": True},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "suite_version": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,29}$"},
        "attack_suite": {"type": "string"},
        "threat_models": {"type": "array", "items": _THREAT_MODEL},
        "attack_points": {"type": "integer", "minimum": 0},
        "reliability_points": {"type": "integer", "minimum": 0},
        "ladder": {"type": "object", "additionalProperties": False,
                   "properties": {"enabled": {"type": "boolean"}, "margin": {"type": "number", "minimum": 0}}},
        "quota": {"type": "object", "additionalProperties": False,
                  "properties": {"daily": {"type": "integer", "minimum": 0},
                                 "total": {"type": "integer", "minimum": 0}}},
        "queue": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]*$", "maxLength": 100},
        "queue_priority": {"type": "integer", "minimum": -100, "maximum": 100},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 65536},
        "baseline_min_accuracy": {"type": "number", "minimum": 0, "maximum": 1},
        "public": {"type": "boolean"},
        "generators": {"type": "object", "additionalProperties": _GENERATOR,
                       "propertyNames": {"pattern": r"^[a-z0-9][a-z0-9_-]*$"},
                       "description": "Generator artifacts (zoo safetensors) for fakes drawn at import; the one "
                                      "named by attack_generator also goes to the attack suite's universal attacks."},
        "attack_generator": {"type": "string"},
        "detector_attacks": {"type": "object"},
        "evaluation_sets": {"type": "array", "items": _EVALUATION_SET, "minItems": 1},
        "baselines": {"type": "array", "items": _BASELINE},
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://robustness-arena.example/schemas/benchmark-bundle-1.json",
    "title": "Robustness Arena benchmark bundle manifest (benchmark.yaml), format 1",
    "type": "object",
    "required": ["format", "benchmark", "tracks"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": FORMAT_VERSION},
        "benchmark": {"type": "object", "additionalProperties": False, "required": ["slug", "name"],
                      "properties": {"slug": _SLUG, "name": {"type": "string", "minLength": 1, "maxLength": 200},
                                     "description": _TEXT}},
        "tracks": {"type": "array", "items": _TRACK, "minItems": 1},
    },
    "$defs": {"split": _SPLIT},
}
