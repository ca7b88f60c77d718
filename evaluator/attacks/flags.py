"""A reliability check's verdict, and the one check the cascade can make from its own numbers.

The cascade needs the black-box check to decide, by itself, whether to escalate (Square breaking
points that every gradient and minimum-norm stage failed on is the classic sign of masked
gradients); :mod:`evaluator.attacks.reliability` runs the rest of the checks, which need extra
attacks of their own. Both use :class:`ReliabilityFlag`, so it lives here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReliabilityFlag:
    """The outcome of one check: ``flagged`` means the evaluation should be marked unreliable."""

    check: str
    flagged: bool
    explanation: str
    value: float | None = None
    threshold: float | None = None


def check_black_box(
    attacked: int, broken: int, *, max_fraction: float = 0.05, min_points: int = 2
) -> ReliabilityFlag:
    """Flags when Square broke more than ``max_fraction`` (and at least ``min_points``) of the
    points on which the white-box attacks had failed."""
    fraction = broken / attacked if attacked else 0.0
    flagged = broken >= min_points and fraction > max_fraction
    explanation = (
        f"The black-box Square attack broke {broken} of the {attacked} points on which the white-box "
        f"attacks failed ({fraction:.1%}; the limit is {max_fraction:.0%})."
    )
    if flagged:
        explanation += " A gradient-free attack beating the white-box ones points to gradient masking."
    return ReliabilityFlag("black_box", flagged, explanation, fraction, max_fraction)
