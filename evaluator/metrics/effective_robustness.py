"""Effective robustness against a testbed baseline line (Taori et al. 2020; Recht et al. 2019).

Across a testbed of standard models, accuracy on a shifted test set is close to a linear function
of accuracy on the original test set once both axes are transformed (logit by default, probit as in
Recht et al.). A model's *effective robustness* is how far its shifted accuracy sits above (or
below) what that line predicts from its original accuracy, in accuracy points; being more accurate
overall is then not mistaken for being more robust. The fit is a versioned artifact
(:attr:`BaselineFit.fit_version`) so every plotted point can name the exact line it was compared to.
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

#: Accuracies are clipped into [EPS, 1 - EPS] before transforming. An accuracy of 0 or 1 measured
#: on n examples only says the truth is within about 1/n of it, and the logit/probit of 0 or 1 is
#: infinite. 1e-4 is half an example on a 5,000-image set, below the resolution of every test set
#: the arena uses (the smallest, CIFAR-10.1, has 2,000 images), and caps |logit| at about 9.2, so a
#: single saturated model cannot dominate the least-squares fit through sheer leverage.
DEFAULT_EPS = 1e-4

#: Bumped when the fitting procedure changes, so old and new fits never share a ``fit_version``.
FIT_METHOD = "ols-bootstrap-v1"


def _check_kind(kind: str) -> None:
    if kind not in TRANSFORMS:
        raise ValueError(f"transform kind must be one of {TRANSFORMS}, got {kind!r}")


def _scalar_or_array(values: np.ndarray, like: ArrayLike) -> float | np.ndarray:
    """Give scalars back as plain floats so callers can put them straight into JSON."""
    return float(values) if np.ndim(like) == 0 else values


def transform(acc: ArrayLike, kind: TransformKind = "logit", eps: float = DEFAULT_EPS) -> float | np.ndarray:
    """Map accuracies in [0, 1] to the axis on which the testbed is linear (natural-log logit or probit)."""
    from scipy.special import logit
    from scipy.stats import norm

    _check_kind(kind)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
    values = np.asarray(acc, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any((values < 0.0) | (values > 1.0)):
        raise ValueError("accuracies must be finite and lie in [0, 1]")
    clipped = np.clip(values, eps, 1.0 - eps)
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


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap endpoints along axis 0."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    low, high = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return low, high


@dataclass
class BaselineFit:
    """A fitted baseline line: ``transform(shifted) = slope * transform(original) + intercept``.

    It keeps the points it was fitted on and its bootstrap fits, so the line, its band and every
    effective-robustness interval can be redrawn from the stored artifact alone.
    """

    kind: TransformKind
    slope: float
    intercept: float
    n_models: int
    model_ids: list[str]
    original_accs: list[float]
    shifted_accs: list[float]
    #: Coefficient of determination of the fit in transformed space.
    r2: float
    seed: int
    #: Resamples asked for; ``bootstrap_slopes`` holds that many non-degenerate fits.
    n_bootstrap: int
    bootstrap_slopes: list[float] = field(default_factory=list)
    bootstrap_intercepts: list[float] = field(default_factory=list)
    eps: float = DEFAULT_EPS
    fit_version: str = ""
    method: str = FIT_METHOD

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
        return {
            "kind": self.kind,
            "slope": self.slope,
            "intercept": self.intercept,
            "n_models": self.n_models,
            "model_ids": list(self.model_ids),
            "original_accs": list(self.original_accs),
            "shifted_accs": list(self.shifted_accs),
            "r2": self.r2,
            "seed": self.seed,
            "n_bootstrap": self.n_bootstrap,
            "bootstrap_slopes": list(self.bootstrap_slopes),
            "bootstrap_intercepts": list(self.bootstrap_intercepts),
            "eps": self.eps,
            "fit_version": self.fit_version,
            "method": self.method,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineFit:
        """Rebuild a stored fit, refusing one whose contents no longer match its ``fit_version``."""
        fit = cls(**data)
        _check_kind(fit.kind)
        if len(fit.bootstrap_slopes) != len(fit.bootstrap_intercepts):
            raise ValueError("bootstrap slopes and intercepts differ in length")
        expected = _fit_version(
            list(zip(fit.model_ids, fit.original_accs, fit.shifted_accs, strict=True)),
            fit.kind,
            fit.eps,
            fit.n_bootstrap,
            fit.seed,
            fit.method,
        )
        if fit.fit_version != expected:
            raise ValueError(f"fit_version {fit.fit_version!r} does not match the stored inputs ({expected!r})")
        return fit

    @classmethod
    def from_json(cls, text: str) -> BaselineFit:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class EffectiveRobustness:
    """Shifted accuracy minus the baseline's prediction, as a fraction (-0.0074 is -0.74 points)."""

    value: float
    #: Percentile-bootstrap interval over the baseline fits; None when the fit has no bootstrap.
    ci_low: float | None
    ci_high: float | None


def _fit_version(
    points: Sequence[tuple[str, float, float]], kind: str, eps: float, n_bootstrap: int, seed: int, method: str
) -> str:
    """sha256 over a canonical JSON of everything the fit depends on.

    json writes floats with ``repr``, which round-trips float64 exactly, and the text does not
    depend on the process (unlike ``hash()``), so equal inputs give equal versions anywhere.
    """
    payload = {
        "method": method,
        "kind": kind,
        "eps": float(eps),
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "points": [[str(m), float(o), float(s)] for m, o, s in points],
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(x, y, deg=1)
    return float(slope), float(intercept)


def _bootstrap(x: np.ndarray, y: np.ndarray, n_bootstrap: int, seed: int) -> tuple[list[float], list[float]]:
    """OLS on ``n_bootstrap`` resamples of the models (with replacement), all x-equal resamples redrawn.

    A resample whose x values are all equal has no defined slope; it is skipped and another one is
    drawn, so the band always rests on exactly ``n_bootstrap`` fits and stays reproducible per seed.
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
        keep = np.ptp(xb, axis=1) > 0
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


def fit_baseline(
    points: Sequence[tuple[str, float, float]],
    kind: TransformKind = "logit",
    n_bootstrap: int = 1000,
    seed: int = 0,
    eps: float = DEFAULT_EPS,
) -> BaselineFit:
    """Fit the baseline line over testbed models given as ``(model_id, original_acc, shifted_acc)``.

    Points are sorted by model id first, so the same set of models gives the same fit, the same
    bootstrap draws and the same ``fit_version`` whatever order they arrive in.
    """
    _check_kind(kind)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if len(points) < 3:
        raise ValueError(f"a baseline needs at least 3 models, got {len(points)}")
    ordered = sorted(((str(m), float(o), float(s)) for m, o, s in points), key=lambda p: p[0])
    ids = [m for m, _, _ in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError("model ids in a baseline must be unique")
    original = np.array([o for _, o, _ in ordered])
    shifted = np.array([s for _, _, s in ordered])
    x = np.asarray(transform(original, kind, eps))
    y = np.asarray(transform(shifted, kind, eps))
    if np.ptp(x) == 0:
        raise ValueError("all models have the same (transformed) original accuracy: the slope is undefined")

    slope, intercept = _ols(x, y)
    ss_res = float(np.sum((y - (slope * x + intercept)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    # A constant y is fitted perfectly by a flat line; follow scikit-learn's r2_score convention there.
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    boot_slopes, boot_intercepts = _bootstrap(x, y, n_bootstrap, seed)
    return BaselineFit(
        kind=kind,
        slope=slope,
        intercept=intercept,
        n_models=len(ordered),
        model_ids=ids,
        original_accs=original.tolist(),
        shifted_accs=shifted.tolist(),
        r2=r2,
        seed=int(seed),
        n_bootstrap=int(n_bootstrap),
        bootstrap_slopes=boot_slopes,
        bootstrap_intercepts=boot_intercepts,
        eps=float(eps),
        fit_version=_fit_version(ordered, kind, eps, n_bootstrap, seed, FIT_METHOD),
    )


def effective_robustness(
    fit: BaselineFit, original_acc: float, shifted_acc: float, confidence: float = 0.95
) -> EffectiveRobustness:
    """Shifted accuracy above the baseline's prediction, with a bootstrap interval over the line.

    The interval reflects uncertainty in the line only (which testbed models happened to be in
    it), not the test-set sampling error of this model's own accuracies.
    """
    for name, value in (("original_acc", original_acc), ("shifted_acc", shifted_acc)):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
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
