"""Synthetic distribution shifts: computed corruptions of clean evaluation images.

Computed rather than downloaded, so a benchmark can test robustness on any source set it has,
with the hidden images never leaving the platform. Each set follows a named published
definition (:data:`DEFINITIONS`: ``cifar10-c`` or ``imagenet-c``), which its provenance states.
"""

from evaluator.shifts.corruptions import (
    CORRUPTIONS,
    DEFINITIONS,
    SEVERITIES,
    CorruptionDefinition,
    build_corruption_set,
    cell_provenance,
    corrupt_image,
    corruption_set_metadata,
    describe_corruption_set,
    get_definition,
    image_seed,
    select_subset,
)

__all__ = [
    "CORRUPTIONS",
    "DEFINITIONS",
    "SEVERITIES",
    "CorruptionDefinition",
    "build_corruption_set",
    "cell_provenance",
    "corrupt_image",
    "corruption_set_metadata",
    "describe_corruption_set",
    "get_definition",
    "image_seed",
    "select_subset",
]
