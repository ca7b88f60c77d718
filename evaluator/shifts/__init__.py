"""Synthetic distribution shifts: computed corruptions of clean evaluation images.

Computed rather than downloaded, so a benchmark can test robustness on any source set it has,
with the hidden images never leaving the platform.
"""

from evaluator.shifts.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    build_corruption_set,
    corrupt_image,
    image_seed,
    select_subset,
)

__all__ = ["CORRUPTIONS", "SEVERITIES", "build_corruption_set", "corrupt_image", "image_seed", "select_subset"]
