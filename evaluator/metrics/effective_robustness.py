"""Effective robustness against a testbed baseline line (Taori et al. 2020; Recht et al. 2019).

Across a testbed of standard models, accuracy on a shifted test set is close to a linear function
of accuracy on the original test set once both axes are transformed (logit by default, probit as in
Recht et al.). A model's *effective robustness* is how far its shifted accuracy sits above (or
below) what that line predicts from its original accuracy, in accuracy points; being more accurate
overall is then not mistaken for being more robust.

The fitted line is a :class:`LineFit`, a versioned artifact: ``fit_version`` hashes what the fit was
made from (so every plotted point can name the exact line it was compared to) and ``content_hash``
hashes what it says (so a stored line whose slope or bootstrap was edited is refused on reading).

This module holds the one definition of the accuracy transforms (:func:`transform`,
:func:`inverse_transform`) for the whole project; plots and pages call it rather than repeating it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

TransformKind = Literal["logit", "probit"]
TRANSFORMS: tuple[str, ...] = ("logit", "probit")

#: Accuracies within EPS of 0 or 1 are *saturated*: the logit/probit of 0 or 1 is infinite, and an
#: accuracy of 0 or 1 measured on n examples only says the truth is within about 1/n of it, so the
#: transformed value is an artifact of whatever clip is applied, not a measurement. The fit leaves
#: such baselines out (and records them in :attr:`LineFit.excluded`): clipped to EPS, one of them
#: sits at |logit| = 9.2 and its leverage drags the line (in the tests, one model at 0% shifted
#: accuracy among 85 scattered about the ImageNetV2 line moves the slope from 0.93 to 0.15).
#: 1e-4 is half an example on a 5,000-image set, below the resolution of every test set the arena
#: uses (the smallest, CIFAR-10.1, has 2,000), so with the default exactly the 0% and 100% models
#: are saturated; pass ``eps=1 / (2 * n)`` to keep that so for a test set of n > 5,000 images.
#: :func:`transform` still clips at EPS, so a submitted model at 100% can be plotted and compared
#: with a line.
DEFAULT_EPS = 1e-4

#: Transformed values closer than this (relative to max(1, |value|)) count as equal. Accuracies are
#: counts over at most ten million images, so two different ones differ by at least 1e-7, i.e. by
#: >= 2.5e-7 on the logit or probit axis (their derivatives are >= 4 and >= sqrt(2 pi) everywhere);
#: float64 rounding of an accuracy moves its transformed value by at most ~1e-12 (near 1 - EPS,
#: where the logit's derivative is 1e4). 1e-9 sits between the two, so x values that differ only
#: by rounding do not yield a slope of 1e13, and no real testbed is refused.
SPREAD_TOL = 1e-9

#: Fewest models a line is fitted on (two points always lie on a line, so they test nothing).
MIN_MODELS = 3

#: Bumped when the fitting procedure or the stored format changes, so old and new fits never share a
#: ``fit_version``. v2: saturated and below-floor baselines are left out (v1 clipped them), degeneracy
#: is judged with SPREAD_TOL, and the stored fit carries ``min_accuracy``, ``excluded`` and
#: ``content_hash``.
FIT_METHOD = "ols-bootstrap-v2"

ExclusionReason = Literal["saturated", "below_min_accuracy"]


class TooFewModelsError(ValueError):
    """Fewer than :data:`MIN_MODELS` baselines are left to fit once unusable ones are set aside.

    A ValueError, so callers that treat any refused fit alike need not know it; callers that show
    "no line yet" for a thin testbed can catch this one alone.
    """


def _check_kind(kind: str) -> None:
    if kind not in TRANSFORMS:
        raise ValueError(f"transform kind must be one of {TRANSFORMS}, got {kind!r}")


def _check_eps(eps: float) -> None:
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")


def _check_accuracies(values: ArrayLike, name: str = "accuracies") -> np.ndarray:
    """``values`` as float64, refused unless finite fractions in [0, 1].

    Accuracies given in percent (85.0 for 85%) are the likeliest mistake, and a bare "out of range"
    does not say so; when every value lies in [0, 100] and some exceed 1, the error names percent.
    """
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite fractions in [0, 1], got a NaN or infinity")
    if np.any((array < 0.0) | (array > 1.0)):
        worst = float(array.flat[int(np.argmax(np.abs(array - 0.5)))])
        if np.all((array >= 0.0) & (array <= 100.0)):
            raise ValueError(
                f"{name} must be fractions in [0, 1], got {worst!r}: it looks like a percentage "
                f"({worst:g}% is {worst / 100:g}); divide by 100"
            )
        raise ValueError(f"{name} must be fractions in [0, 1], got {worst!r}")
    return array


def _scalar_or_array(values: np.ndarray, like: ArrayLike) -> float | np.ndarray:
    """Give scalars back as plain floats so callers can put them straight into JSON."""
    return float(values) if np.ndim(like) == 0 else values


def transform(acc: ArrayLike, kind: TransformKind = "logit", eps: float = DEFAULT_EPS) -> float | np.ndarray:
    """Map accuracies in [0, 1] to the axis on which the testbed is linear (natural-log logit or probit).

    Values are clipped into [eps, 1 - eps] first, so a model at 0% or 100% still gets a (finite)
    position on a plot and a prediction from a line; :func:`fit_baseline` never fits such a model.
    """
    from scipy.special import logit
    from scipy.stats import norm

    _check_kind(kind)
    _check_eps(eps)
    clipped = np.clip(_check_accuracies(acc), eps, 1.0 - eps)
    out = logit(clipped) if kind == "logit" else norm.ppf(clipped)
    return _scalar_or_array(np.asarray(out, dtype=np.float64), acc)


def inverse_transform(z: ArrayLike, kind: TransformKind = "logit") -> float | np.ndarray:
    """Map values on the transformed axis back to accuracies (expit or the normal CDF)."""
    from scipy.special import expit
    from scipy.stats import norm

    _check_kind(kind)
    values = np.asarray(z, dtype=np.float64)
    out = expit(values) if kind == "logit" else norm.cdf(values)
    return _scalar_or_array(np.asarray(out, dtype=np.float64), z)


def _has_spread(values: np.ndarray, axis: int | None = None) -> np.ndarray | bool:
    """Whether the values differ by more than rounding (see :data:`SPREAD_TOL`), along ``axis``."""
    scale = np.maximum(1.0, np.max(np.abs(values), axis=axis))
    return np.ptp(values, axis=axis) > SPREAD_TOL * scale


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap endpoints along axis 0."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    low, high = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return low, high


@dataclass(frozen=True)
class ExcludedPoint:
    """A baseline that was given to the fit but left out of it, and why.

    ``saturated``: an accuracy within ``eps`` of 0 or 1 on either axis (no finite transformed value);
    ``below_min_accuracy``: original accuracy under the caller's floor.
    """

    model_id: str
    original_acc: float
    shifted_acc: float
    reason: ExclusionReason


def _exclusion_reason(original: float, shifted: float, eps: float, min_accuracy: float) -> ExclusionReason | None:
    """Why a point cannot be fitted, or None. Saturation is named first: it is a fact about the
    point, whereas the floor is the caller's choice."""
    if not all(eps <= a <= 1.0 - eps for a in (original, shifted)):
        return "saturated"
    if original < min_accuracy:
        return "below_min_accuracy"
    return None


@dataclass
class LineFit:
    """A fitted effective-robustness line: ``transform(shifted) = slope * transform(original) + intercept``.

    It keeps the points it was fitted on, the ones it left out, and its bootstrap fits, so the
    line, its band and every effective-robustness interval can be redrawn from the stored artifact
    alone. (The platform's Django model ``BaselineFit`` is the database row that stores one.)
    """

    kind: TransformKind
    slope: float
    intercept: float
    #: Models the line was fitted on (those in ``model_ids``), not counting ``excluded``.
    n_models: int
    model_ids: list[str]
    original_accs: list[float]
    shifted_accs: list[float]
    #: Coefficient of determination of the fit in transformed space (1.0 when y is constant: a flat
    #: line then fits exactly).
    r2: float
    seed: int
    #: Resamples asked for; ``bootstrap_slopes`` holds that many non-degenerate fits.
    n_bootstrap: int
    bootstrap_slopes: list[float] = field(default_factory=list)
    bootstrap_intercepts: list[float] = field(default_factory=list)
    eps: float = DEFAULT_EPS
    #: Floor on the original accuracy below which baselines were left out (0: none).
    min_accuracy: float = 0.0
    #: Baselines given to the fit but left out of it, sorted by model id.
    excluded: list[ExcludedPoint] = field(default_factory=list)
    #: sha256 of the inputs: every given point, kind, eps, min_accuracy, n_bootstrap, seed, method.
    fit_version: str = ""
    method: str = FIT_METHOD
    #: sha256 of everything else in :meth:`to_dict`, so edited contents are refused by :meth:`from_dict`.
    content_hash: str = ""

    def predict(self, original_acc: ArrayLike) -> float | np.ndarray:
        """Shifted accuracy the line predicts for a model with this original accuracy."""
        z = self.slope * np.asarray(transform(original_acc, self.kind, self.eps)) + self.intercept
        return _scalar_or_array(np.asarray(inverse_transform(z, self.kind)), original_acc)

    def _bootstrap_predictions(self, original_accs: ArrayLike) -> np.ndarray:
        """Predicted shifted accuracy of every bootstrap fit: shape (n_fits, *shape of original_accs)."""
        if not self.bootstrap_slopes:
            raise ValueError("this fit has no bootstrap resamples (n_bootstrap=0), so it has no band")
        x = np.asarray(transform(original_accs, self.kind, self.eps))
        slopes = np.asarray(self.bootstrap_slopes).reshape((-1,) + (1,) * x.ndim)
        intercepts = np.asarray(self.bootstrap_intercepts).reshape((-1,) + (1,) * x.ndim)
        return np.asarray(inverse_transform(slopes * x + intercepts, self.kind))

    def band(self, original_accs: ArrayLike, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile-bootstrap band of the line, in accuracy, for plotting it with the line."""
        low, high = _percentiles(self._bootstrap_predictions(np.atleast_1d(original_accs)), confidence)
        return low, high

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only, numbers converted explicitly, so the content hash does not depend
        on whether a value came back from storage as ``1`` or ``1.0``."""
        return {
            "kind": str(self.kind),
            "slope": float(self.slope),
            "intercept": float(self.intercept),
            "n_models": int(self.n_models),
            "model_ids": [str(m) for m in self.model_ids],
            "original_accs": np.asarray(self.original_accs, dtype=np.float64).tolist(),
            "shifted_accs": np.asarray(self.shifted_accs, dtype=np.float64).tolist(),
            "r2": float(self.r2),
            "seed": int(self.seed),
            "n_bootstrap": int(self.n_bootstrap),
            "bootstrap_slopes": np.asarray(self.bootstrap_slopes, dtype=np.float64).tolist(),
            "bootstrap_intercepts": np.asarray(self.bootstrap_intercepts, dtype=np.float64).tolist(),
            "eps": float(self.eps),
            "min_accuracy": float(self.min_accuracy),
            "excluded": [
                {"model_id": str(p.model_id), "original_acc": float(p.original_acc),
                 "shifted_acc": float(p.shifted_acc), "reason": str(p.reason)}
                for p in self.excluded
            ],
            "fit_version": str(self.fit_version),
            "method": str(self.method),
            "content_hash": str(self.content_hash),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LineFit:
        """Rebuild a stored fit, refusing one that this code did not make or that was edited since.

        Checked: the method is this code's :data:`FIT_METHOD`; ``fit_version`` matches the stored
        inputs; the split into fitted and excluded points is the one ``eps`` and ``min_accuracy``
        give; ``content_hash`` matches everything stored. The hashes catch edits and corruption,
        not forgery: whoever can write the row can also recompute a sha256.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a stored fit is a dict, got {type(data).__name__}")
        method = data.get("method")
        if method != FIT_METHOD or "content_hash" not in data:
            raise ValueError(
                f"stored fit made by method {method!r}, this code reads {FIT_METHOD!r} fits only "
                "(older ones carry no content hash, so their contents cannot be checked): refit it"
            )
        names = set(cls.__dataclass_fields__)
        missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"stored fit has missing keys {missing} and unknown keys {unknown}")
        fields = dict(data)
        try:
            fields["excluded"] = [ExcludedPoint(**p) for p in data["excluded"]]
        except TypeError as exc:
            raise ValueError(f"stored fit has a malformed excluded point: {exc}") from None
        fit = cls(**fields)
        _check_kind(fit.kind)
        _check_eps(fit.eps)
        lengths = {len(fit.model_ids), len(fit.original_accs), len(fit.shifted_accs), fit.n_models}
        if len(lengths) != 1:
            raise ValueError("stored fit: model_ids, original_accs, shifted_accs and n_models disagree in length")
        if not len(fit.bootstrap_slopes) == len(fit.bootstrap_intercepts) == fit.n_bootstrap:
            raise ValueError("stored fit: bootstrap slopes, intercepts and n_bootstrap disagree in length")
        fitted = list(zip(fit.model_ids, fit.original_accs, fit.shifted_accs, strict=True))
        given = sorted(fitted + [(p.model_id, p.original_acc, p.shifted_acc) for p in fit.excluded])
        expected = _fit_version(given, fit.kind, fit.eps, fit.min_accuracy, fit.n_bootstrap, fit.seed, fit.method)
        if fit.fit_version != expected:
            raise ValueError(f"fit_version {fit.fit_version!r} does not match the stored inputs ({expected!r})")
        kept, excluded = _partition(given, fit.eps, fit.min_accuracy)
        if kept != fitted or excluded != fit.excluded:
            raise ValueError("stored fit: its fitted and excluded points are not the split eps and min_accuracy give")
        if fit.content_hash != _content_hash(fit.to_dict()):
            raise ValueError("content_hash does not match the stored fit: its numbers were changed after fitting")
        return fit

    @classmethod
    def from_json(cls, text: str) -> LineFit:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class EffectiveRobustness:
    """Shifted accuracy minus the baseline's prediction, as a fraction (-0.0074 is -0.74 points)."""

    value: float
    #: Percentile-bootstrap interval over the baseline fits; None when the fit has no bootstrap.
    ci_low: float | None
    ci_high: float | None


def _sha256_json(payload: Any) -> str:
    """sha256 of canonical JSON: json writes floats with ``repr``, which round-trips float64 exactly,
    and the text does not depend on the process (unlike ``hash()``), so equal inputs hash alike anywhere."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fit_version(
    points: Sequence[tuple[str, float, float]],
    kind: str,
    eps: float,
    min_accuracy: float,
    n_bootstrap: int,
    seed: int,
    method: str,
) -> str:
    """sha256 over everything the fit depends on: all given points (sorted by id) and the settings."""
    return _sha256_json({
        "method": method,
        "kind": kind,
        "eps": float(eps),
        "min_accuracy": float(min_accuracy),
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "points": [[str(m), float(o), float(s)] for m, o, s in points],
    })


#: The long float lists of a stored fit, hashed as raw little-endian float64 rather than as JSON
#: text: exact all the same, and it keeps :meth:`LineFit.from_dict` of a 1,000-resample fit under a
#: millisecond (writing its 2,000 floats with ``repr`` took 8 ms), which matters because a page that
#: shows an effective robustness reads a fit, and so checks this hash, on every request.
_ARRAY_FIELDS = ("original_accs", "shifted_accs", "bootstrap_slopes", "bootstrap_intercepts")


def _content_hash(stored: dict[str, Any]) -> str:
    """sha256 over a :meth:`LineFit.to_dict` without its own ``content_hash``."""
    rest = {k: v for k, v in stored.items() if k != "content_hash" and k not in _ARRAY_FIELDS}
    digest = hashlib.sha256(_sha256_json(rest).encode("ascii"))
    for name in _ARRAY_FIELDS:
        values = np.asarray(stored[name], dtype="<f8")
        digest.update(f"|{name}:{values.size}:".encode("ascii"))
        digest.update(values.tobytes())
    return digest.hexdigest()


def _partition(
    points: Sequence[tuple[str, float, float]], eps: float, min_accuracy: float
) -> tuple[list[tuple[str, float, float]], list[ExcludedPoint]]:
    """Split id-sorted points into those the line is fitted on and those left out (with reasons)."""
    kept: list[tuple[str, float, float]] = []
    excluded: list[ExcludedPoint] = []
    for model_id, original, shifted in points:
        reason = _exclusion_reason(original, shifted, eps, min_accuracy)
        if reason is None:
            kept.append((model_id, original, shifted))
        else:
            excluded.append(ExcludedPoint(model_id, original, shifted, reason))
    return kept, excluded


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares on centred data, the same formula the bootstrap applies to each resample."""
    xm, ym = x.mean(), y.mean()
    slope = float(np.sum((x - xm) * (y - ym)) / np.sum((x - xm) ** 2))
    return slope, float(ym - slope * xm)


def _bootstrap(x: np.ndarray, y: np.ndarray, n_bootstrap: int, seed: int) -> tuple[list[float], list[float]]:
    """OLS on ``n_bootstrap`` resamples of the models (with replacement), x-degenerate resamples redrawn.

    A resample whose x values are all equal (up to :data:`SPREAD_TOL`) has no defined slope; it is
    skipped and another one is drawn, so the band always rests on exactly ``n_bootstrap`` fits and
    stays reproducible per seed.
    """
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    slopes: list[np.ndarray] = []
    intercepts: list[np.ndarray] = []
    have = 0
    for _ in range(1000):
        if have >= n_bootstrap:
            break
        idx = rng.integers(0, n, size=(n_bootstrap - have, n))
        xb, yb = x[idx], y[idx]
        keep = np.asarray(_has_spread(xb, axis=1))
        xb, yb = xb[keep], yb[keep]
        xm, ym = xb.mean(axis=1, keepdims=True), yb.mean(axis=1, keepdims=True)
        slope = ((xb - xm) * (yb - ym)).sum(axis=1) / ((xb - xm) ** 2).sum(axis=1)
        slopes.append(slope)
        intercepts.append(ym[:, 0] - slope * xm[:, 0])
        have += int(keep.sum())
    if have < n_bootstrap:  # pragma: no cover - needs ~1000 consecutive all-degenerate rounds
        raise RuntimeError("could not draw enough non-degenerate bootstrap resamples")
    if not slopes:
        return [], []
    return np.concatenate(slopes).tolist(), np.concatenate(intercepts).tolist()


def _too_few(kept: int, excluded: list[ExcludedPoint], min_accuracy: float, eps: float) -> TooFewModelsError:
    given = kept + len(excluded)
    saturated = sum(p.reason == "saturated" for p in excluded)
    below = sum(p.reason == "below_min_accuracy" for p in excluded)
    detail = ""
    if excluded:
        detail = (f" ({saturated} saturated, i.e. within eps={eps:g} of 0% or 100%; "
                  f"{below} below min_accuracy={min_accuracy:g})")
    return TooFewModelsError(
        f"a baseline line needs at least {MIN_MODELS} usable models, got {kept} of {given}{detail}"
    )


def fit_baseline(
    points: Sequence[tuple[str, float, float]],
    kind: TransformKind = "logit",
    n_bootstrap: int = 1000,
    seed: int = 0,
    eps: float = DEFAULT_EPS,
    min_accuracy: float = 0.0,
) -> LineFit:
    """Fit the baseline line over testbed models given as ``(model_id, original_acc, shifted_acc)``.

    Points are sorted by model id first, so the same set of models gives the same fit, the same
    bootstrap draws and the same ``fit_version`` whatever order they arrive in.

    Left out of the fit, and listed in :attr:`LineFit.excluded`: *saturated* models, at 0% or 100%
    (within ``eps``) on either set, whose transformed accuracy would be an artifact of clipping;
    and models whose original accuracy is below ``min_accuracy``, a floor on the axis testbeds
    select models by, for callers who fit only models past chance-level behaviour. Raises
    :class:`TooFewModelsError` when fewer than :data:`MIN_MODELS` remain, and ValueError when the
    remaining original accuracies do not spread (the slope is then undefined).
    """
    _check_kind(kind)
    _check_eps(eps)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if not (math.isfinite(min_accuracy) and 0.0 <= min_accuracy < 1.0):
        raise ValueError(f"min_accuracy must lie in [0, 1), got {min_accuracy}")
    if len(points) < MIN_MODELS:
        raise TooFewModelsError(f"a baseline line needs at least {MIN_MODELS} models, got {len(points)}")
    ordered = sorted(((str(m), float(o), float(s)) for m, o, s in points), key=lambda p: p[0])
    ids = [m for m, _, _ in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError("model ids in a baseline must be unique")
    _check_accuracies([o for _, o, _ in ordered], "original accuracies")
    _check_accuracies([s for _, _, s in ordered], "shifted accuracies")

    kept, excluded = _partition(ordered, eps, min_accuracy)
    if len(kept) < MIN_MODELS:
        raise _too_few(len(kept), excluded, min_accuracy, eps)
    original = np.array([o for _, o, _ in kept])
    shifted = np.array([s for _, _, s in kept])
    x = np.asarray(transform(original, kind, eps))
    y = np.asarray(transform(shifted, kind, eps))
    if not _has_spread(x):
        raise ValueError(
            f"the fitted models' original accuracies span only {float(np.ptp(x)):.3g} on the {kind} axis "
            f"(less than rounding, SPREAD_TOL={SPREAD_TOL:g}): all are the same accuracy and the slope is undefined"
        )

    slope, intercept = _ols(x, y)
    ss_res = float(np.sum((y - (slope * x + intercept)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    # A y that does not spread is fitted exactly by the flat line through it: R^2 = 1. Testing
    # ss_tot > 0 instead lets rounding in the mean make ss_tot ~1e-32, and 1 - ss_res / ss_tot noise.
    r2 = 1.0 - ss_res / ss_tot if _has_spread(y) else 1.0
    boot_slopes, boot_intercepts = _bootstrap(x, y, n_bootstrap, seed)
    fit = LineFit(
        kind=kind,
        slope=slope,
        intercept=intercept,
        n_models=len(kept),
        model_ids=[m for m, _, _ in kept],
        original_accs=original.tolist(),
        shifted_accs=shifted.tolist(),
        r2=r2,
        seed=int(seed),
        n_bootstrap=int(n_bootstrap),
        bootstrap_slopes=boot_slopes,
        bootstrap_intercepts=boot_intercepts,
        eps=float(eps),
        min_accuracy=float(min_accuracy),
        excluded=excluded,
        fit_version=_fit_version(ordered, kind, eps, min_accuracy, n_bootstrap, seed, FIT_METHOD),
    )
    fit.content_hash = _content_hash(fit.to_dict())
    return fit


def effective_robustness(
    fit: LineFit, original_acc: float, shifted_acc: float, confidence: float = 0.95
) -> EffectiveRobustness:
    """Shifted accuracy above the baseline's prediction, with a bootstrap interval over the line.

    The interval reflects uncertainty in the line only (which testbed models happened to be in
    it), not the test-set sampling error of this model's own accuracies.
    """
    _check_accuracies(original_acc, "original_acc")
    _check_accuracies(shifted_acc, "shifted_acc")
    value = float(shifted_acc - fit.predict(original_acc))
    if not fit.bootstrap_slopes:
        return EffectiveRobustness(value=value, ci_low=None, ci_high=None)
    low_pred, high_pred = _percentiles(fit._bootstrap_predictions(original_acc), confidence)
    return EffectiveRobustness(
        value=value, ci_low=float(shifted_acc - high_pred), ci_high=float(shifted_acc - low_pred)
    )


def relative_robustness(shifted_acc: float, baseline_shifted_acc: float) -> float:
    """Shifted-accuracy gain of an intervention over the model it modifies (Taori et al.), as a fraction."""
    return float(shifted_acc - baseline_shifted_acc)
