"""Leaderboard tables for a track, built with a fixed number of queries whatever its size.

A track has several tables ("views"): an overview of the headline score on every evaluation set
and every threat model, one per distribution shift (clean vs shifted accuracy, the drop and the
effective robustness), one per threat model (clean, robust, and the accuracy left after each
attack of the cascade), and for detectors one per evaluation set with every detector metric.
Every view is filtered the same way, sorted on any column, exported as CSV or JSON, and plotted.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db.models import Q
from django.urls import reverse

from adversaries.scores import lowest_found
from adversaries.targets import lowered_metric
from benchmarks.models import BaselineFit, EvaluationSet, Track
from evaluator.attacks.stages import stage_labels
from evaluator.metrics.effective_robustness import TRANSFORMS
from leaderboards.fits import stored_line
from submissions.models import EvaluationRun, Result, Submission

DETECTOR_METRICS = (("auc", "AUC"), ("average_precision", "average precision"), ("tpr@1%fpr", "TPR at 1% FPR"),
                    ("tpr@5%fpr", "TPR at 5% FPR"))
ROBUST = "robust_accuracy@"
#: Detector attack metrics on the clean set: AUC of reals against attacked fakes, and distortions.
ATTACKED_AUC = "auc@"
DISTORTION = "median_distortion@"
SUCCESS = "success_rate@"
#: References that the attacked AUCs are compared with (same fakes, not attacked).
ATTACK_REFERENCES = ("clean-subset", "latent-reference")
#: Known attack stages in cascade order; others are shown after them in the order they appear.
STAGE_ORDER = tuple(name for name, _ in stage_labels())
STAGE_LABELS = dict(stage_labels())
MODEL_TYPES = tuple(Submission.ModelType.values)
#: The submission columns a leaderboard row shows (the rest, e.g. failure text, is never loaded).
ROW_FIELDS = ("public_id", "name", "owner__username", "track", "model_type", "extra_data", "is_baseline", "is_public",
              "paper_url", "code_url", "state", "created_at")
URL_PLACEHOLDER = uuid.UUID(int=0)


@dataclass
class Score:
    """One number of a row (stored or computed here), shaped like a Result so templates treat both alike."""

    metric: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    num_examples: int | None = None
    #: A submitted attack's name when this robust accuracy is the lowest it found, below the built-in suite's.
    found_by: str = ""


@dataclass
class Column:
    """One score column. ``metric`` is the stored metric, or ``drop`` / ``effective_robustness``."""

    key: str
    evaluation_set: EvaluationSet
    metric: str
    label: str
    higher_is_better: bool = True
    description: str = ""

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


@dataclass
class Row:
    submission: Submission
    scores: dict[str, Any] = field(default_factory=dict)
    rank: int | None = None
    verified: bool = False
    #: A reliability check of the attack suite fired (RobustBench's unreliable-evaluation mark).
    unreliable: bool = False
    suite_version: str = ""
    url: str = ""

    def value(self, key: str) -> float | None:
        result = self.scores.get(key)
        return None if result is None else result.value


@dataclass
class Filters:
    """What the reader asked for, parsed leniently from GET parameters (unknown values are ignored)."""

    view: str = "overview"
    sort: str = ""
    descending: bool | None = None
    model_type: str = ""
    extra_data: str = ""  # "yes", "no" or "" (either)
    verified: bool = False
    shift: str = ""  # the shift the effective-robustness plot shows
    scale: str = "logit"  # logit or probit axes (and the effective-robustness line)
    threat: str = ""  # the threat model the robust-accuracy plot shows

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Filters:
        order = params.get("order", "")
        return cls(
            view=params.get("view", "") or "overview",
            sort=params.get("sort", ""),
            descending=None if order not in {"asc", "desc"} else order == "desc",
            model_type=params.get("model_type", "") if params.get("model_type", "") in MODEL_TYPES else "",
            extra_data=params.get("extra_data", "") if params.get("extra_data", "") in {"yes", "no"} else "",
            verified=params.get("verified", "") in {"1", "yes", "on", "true"},
            shift=params.get("shift", ""),
            scale=params.get("scale", "") if params.get("scale", "") in TRANSFORMS else "logit",
            threat=params.get("threat", ""),
        )

    def as_params(self) -> dict[str, str]:
        """The non-default parameters, to carry across links (sorting, toggles, exports)."""
        out = {"view": self.view if self.view != "overview" else "", "sort": self.sort,
               "order": "" if self.descending is None else ("desc" if self.descending else "asc"),
               "model_type": self.model_type, "extra_data": self.extra_data, "verified": "1" if self.verified else "",
               "shift": self.shift, "scale": self.scale if self.scale != "logit" else "", "threat": self.threat}
        return {k: v for k, v in out.items() if v}


@dataclass
class Leaderboard:
    track: Track
    filters: Filters
    views: list[tuple[str, str]]
    columns: list[Column]
    rows: list[Row]
    sort: str
    descending: bool
    rank_key: str
    clean_set: EvaluationSet | None
    shift_sets: list[EvaluationSet]
    threats: list[str]
    #: (shift set id, transform) -> the current effective-robustness line of that shift.
    fits: dict[tuple[int, str], BaselineFit]
    #: Accuracies for the plots, whatever the view: submission id -> (set id, metric) -> value.
    values: dict[int, dict[tuple[int, str], float]]
    #: Detector tracks: attack labels with an attacked AUC on the clean set, in display order.
    attacks: list[str] = field(default_factory=list)

    @property
    def plot_shift(self) -> EvaluationSet | None:
        wanted = self.filters.shift or (self.filters.view.split(":", 1)[1] if self.filters.view.startswith("shift:")
                                        else "")
        return next((s for s in self.shift_sets if s.name == wanted), self.shift_sets[0] if self.shift_sets else None)

    @property
    def plot_threat(self) -> str:
        wanted = self.filters.threat or (self.filters.view.split(":", 1)[1] if self.filters.view.startswith("threat:")
                                         else "")
        return wanted if wanted in self.threats else (self.threats[0] if self.threats else "")


def _threats(track: Track, found: set[str]) -> list[str]:
    """Threat labels: the track's configured ones in order, then any others that have results."""
    configured = [t.get("label", "") for t in (getattr(track, "threat_models", None) or []) if isinstance(t, dict)]
    return [t for t in configured if t] + sorted(found - set(configured))


def _views(track: Track, shift_sets: list[EvaluationSet], sets: list[EvaluationSet],
           threats: list[str], attacks: list[str] | None = None) -> list[tuple[str, str]]:
    views = [("overview", "Overview")]
    if track.task_kind == Track.TaskKind.CLASSIFIER:
        views += [(f"shift:{s.name}", f"Shift: {s.name}") for s in shift_sets]
        views += [(f"threat:{t}", f"Threat model: {t}") for t in threats]
    else:
        if attacks:
            views.append(("attacks", "Attacks"))
        views += [(f"set:{s.name}", f"All metrics: {s.name}") for s in sets]
    return views


def attack_label(attack: str) -> str:
    """A reader's name for a detector attack label as the evaluator writes it."""
    if attack.startswith("Linf-"):
        return f"L∞ {attack[5:]} PGD" + (" (lowest bit)" if attack == "Linf-1/255" else "")
    if attack.startswith("min-"):
        return f"minimal {attack[4:]} change"
    if attack.startswith("patch-"):
        return f"universal patch {attack[6:]}"
    return {"latent": "universal latent", "latent-reference": "latent reference (no attack)",
            "clean-subset": "attacked subset, clean"}.get(attack, attack)


def attack_order(attack: str) -> tuple[int, float, str]:
    """Clean reference, PGD budgets by size, minimal changes, patch, latent, then anything else."""
    if attack == "clean-subset":
        return (0, 0.0, attack)
    if attack.startswith("Linf-"):
        numerator, _, denominator = attack[5:].partition("/")
        try:
            return (1, float(numerator) / float(denominator or 1), attack)
        except ValueError:
            return (1, 0.0, attack)
    for rank, prefix in enumerate(("min-", "patch-", "latent"), start=2):
        if attack.startswith(prefix):
            return (rank, 0.0, attack)
    return (9, 0.0, attack)


def _headline_label(track: Track) -> str:
    return "accuracy" if track.headline_metric == "accuracy" else "AUC"


def columns_for(track: Track, sets: list[EvaluationSet] | None = None, view: str = "overview",
                threats: list[str] | None = None, stages: dict[str, list[str]] | None = None,
                attacks: list[str] | None = None, distortions: list[str] | None = None) -> list[Column]:
    """The columns of one view; the first one is what ranks are computed on."""
    attacks = attacks or []
    sets = sets if sets is not None else sorted(track.evaluation_sets.all(),
                                                key=lambda s: (s.role != EvaluationSet.Role.CLEAN, s.id))
    threats = threats or []
    metric = track.headline_metric
    clean = next((s for s in sets if s.role == EvaluationSet.Role.CLEAN), None)
    by_name = {s.name: s for s in sets}
    kind, _, arg = view.partition(":")
    if kind == "shift" and arg in by_name and clean is not None:
        shift = by_name[arg]
        return [
            Column(f"{shift.name}:accuracy", shift, "accuracy", f"{shift.name} accuracy",
                   description="Accuracy on the shifted set."),
            Column(f"{clean.name}:accuracy", clean, "accuracy", f"{clean.name} accuracy",
                   description="Accuracy on the clean set."),
            Column(f"{shift.name}:drop", shift, "drop", "drop (clean − shifted)", higher_is_better=False,
                   description="Accuracy lost under the shift, in points."),
            Column(f"{shift.name}:effective_robustness", shift, "effective_robustness", "effective robustness",
                   description="Shifted accuracy above the baseline line's prediction, in points."),
        ]
    if kind == "threat" and arg in threats and clean is not None:
        cols = [Column(f"{clean.name}:{ROBUST}{arg}", clean, f"{ROBUST}{arg}", f"robust accuracy ({arg})",
                       description="Accuracy left after the whole attack cascade."),
                Column(f"{clean.name}:accuracy", clean, "accuracy", f"{clean.name} accuracy")]
        for stage in (stages or {}).get(arg, []):
            cols.append(Column(f"{clean.name}:{ROBUST}{arg}>{stage}", clean, f"{ROBUST}{arg}>{stage}",
                               f"after {STAGE_LABELS.get(stage, stage)}",
                               description="Robust accuracy after this stage of the cascade."))
        return cols
    if kind == "set" and arg in by_name and track.task_kind == Track.TaskKind.DETECTOR:
        s = by_name[arg]
        return [Column(f"{s.name}:{m}", s, m, f"{s.name} {label}") for m, label in DETECTOR_METRICS]
    if kind == "attacks" and clean is not None and track.task_kind == Track.TaskKind.DETECTOR:
        cols = [Column(f"{clean.name}:auc", clean, "auc", f"{clean.name} AUC", description="AUC with no attack.")]
        cols += [Column(f"{clean.name}:{ATTACKED_AUC}{a}", clean, f"{ATTACKED_AUC}{a}", f"AUC: {attack_label(a)}",
                        description="AUC of the hidden reals against the attacked hidden fakes (8-bit images).")
                 for a in attacks]
        cols += [Column(f"{s.name}:auc", s, "auc", f"AUC: {s.name} (black-box transfer)",
                        description="AUC on fakes attacked through the platform's own surrogate detector.")
                 for s in sets if s.shift_kind == EvaluationSet.ShiftKind.ADVERSARIAL]
        for norm in distortions or []:
            unit = "pixels" if norm == "L0" else "in [0, 1]"
            cols.append(Column(f"{clean.name}:{DISTORTION}min-{norm}", clean, f"{DISTORTION}min-{norm}",
                               f"median {norm} to look real",
                               description=f"Median {norm} change ({unit}) that made a fake score as real."))
        return cols
    cols = [Column(f"{s.name}:{metric}", s, metric, f"{s.name} {_headline_label(track)}") for s in sets]
    if clean is not None and track.task_kind == Track.TaskKind.CLASSIFIER:
        cols += [Column(f"{clean.name}:{ROBUST}{t}", clean, f"{ROBUST}{t}", f"robust accuracy ({t})")
                 for t in threats]
    if clean is not None and track.task_kind == Track.TaskKind.DETECTOR:
        cols += [Column(f"{clean.name}:{ATTACKED_AUC}{a}", clean, f"{ATTACKED_AUC}{a}", f"AUC: {attack_label(a)}")
                 for a in attacks if a not in ATTACK_REFERENCES and not a.startswith("min-")]
    return cols


def _flagged(attacks: Any) -> bool:
    """True when any attack's reliability check raised a flag (gradient masking and the like)."""
    if not isinstance(attacks, dict):
        return False
    for info in attacks.values():
        for flag in (info or {}).get("flags", []) if isinstance(info, dict) else []:
            if isinstance(flag, dict) and flag.get("flagged"):
                return True
    return False


def _visible_submissions(track: Track, user: Any, filters: Filters):
    visible = Q(is_public=True)
    if user is not None and user.is_authenticated:
        visible |= Q(owner=user)
    qs = Submission.objects.filter(visible, track=track, state=Submission.State.FINISHED, withdrawal__isnull=True,
                                   released=True)
    if filters.model_type:
        qs = qs.filter(model_type=filters.model_type)
    if filters.extra_data:
        qs = qs.filter(extra_data=filters.extra_data == "yes")
    return qs


def _effective_robustness(fit_row: BaselineFit, clean: np.ndarray, shifted: np.ndarray) -> list[Score]:
    """Effective robustness of many models against one line at once (one bootstrap pass for all)."""
    fit = stored_line(fit_row)
    if fit is None:  # a refused stored line (logged): no effective robustness rather than a wrong one
        return []
    value = shifted - np.asarray(fit.predict(clean))
    if not fit.bootstrap_slopes:
        return [Score("points", float(v)) for v in value]
    low, high = fit.band(clean)  # the same percentile band effective_robustness() uses, per model
    return [Score("points", float(v), float(s - h), float(s - lo)) for v, s, lo, h in
            zip(value, shifted, low, high, strict=True)]


def build(track: Track, user: Any = None, filters: Filters | None = None) -> Leaderboard:
    """Everything a leaderboard page, its exports and its plots need, in eight queries (the eighth: what submitted
    attacks found, which can lower a robust accuracy)."""
    filters = filters or Filters()
    sets = sorted(track.evaluation_sets.all(), key=lambda s: (s.role != EvaluationSet.Role.CLEAN, s.id))
    clean = next((s for s in sets if s.role == EvaluationSet.Role.CLEAN), None)
    shift_sets = [s for s in sets if s.role == EvaluationSet.Role.SHIFT]
    sets_by_id = {s.pk: s for s in sets}

    subs_qs = _visible_submissions(track, user, filters)
    submissions = list(subs_qs.select_related("owner").only(*ROW_FIELDS).order_by("created_at", "id"))

    # One query for every number any view or plot needs: headline metrics on every set, final
    # robust accuracies, and the per-stage or per-metric numbers only when this view shows them.
    wanted = Q(metric=track.headline_metric) | Q(metric="accuracy")
    if track.task_kind == Track.TaskKind.CLASSIFIER:
        wanted |= Q(metric__startswith=ROBUST)
    else:
        wanted |= Q(metric__in=[m for m, _ in DETECTOR_METRICS])
        if clean is not None:
            wanted |= Q(evaluation_set=clean) & (Q(metric__startswith=ATTACKED_AUC) | Q(metric__startswith=DISTORTION))
    results = Result.objects.filter(wanted, submission__in=subs_qs.values("pk"), suite_version=track.suite_version)
    if not filters.view.startswith("threat:"):
        results = results.exclude(metric__contains=">")
    by_sub: dict[int, list[tuple[int, Score]]] = {}
    found_threats: set[str] = set()
    stages: dict[str, list[str]] = {}
    found_attacks: set[str] = set()
    found_distortions: set[str] = set()
    # Plain tuples, not model instances: a thousand models have several thousand numbers.
    for sub_id, set_id, metric, value, low, high, n in results.values_list(
        "submission_id", "evaluation_set_id", "metric", "value", "ci_low", "ci_high", "num_examples"
    ):
        if set_id not in sets_by_id:
            continue
        by_sub.setdefault(sub_id, []).append((set_id, Score(metric, value, low, high, n)))
        if metric.startswith(ROBUST):
            threat, _, stage = metric[len(ROBUST):].partition(">")
            found_threats.add(threat)
            if stage and stage not in stages.setdefault(threat, []):
                stages[threat].append(stage)
        elif clean is not None and set_id == clean.pk:
            if metric.startswith(ATTACKED_AUC):
                found_attacks.add(metric[len(ATTACKED_AUC):])
            elif metric.startswith(DISTORTION):
                found_distortions.add(metric[len(DISTORTION) + len("min-"):])
    if clean is not None:
        _lower_by_attacks(by_sub, clean, track.suite_version, lowered_metric(track))
    attack_labels = sorted(found_attacks, key=attack_order)
    distortions = [n for n in ("L2", "Linf", "L0") if n in found_distortions]
    for threat, found in list(stages.items()):
        order = {name: i for i, name in enumerate(found)}
        stages[threat] = sorted(found, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER),
                                                      order[s]))
    threats = _threats(track, found_threats)

    views = _views(track, shift_sets, sets, threats, attack_labels)
    if filters.view not in {v for v, _ in views}:
        filters.view = "overview"
    columns = columns_for(track, sets, filters.view, threats, stages, attack_labels, distortions)

    runs = EvaluationRun.objects.filter(submission__in=subs_qs.values("pk"), suite_version=track.suite_version)
    run_info = {sid: (ok, attacks)
                for sid, ok, attacks in runs.values_list("submission_id", "ok", "provenance__attacks")}

    fits = {(f.shift_set_id, f.transform): f for f in
            BaselineFit.objects.filter(track=track, is_current=True, shift_set__in=shift_sets)}

    rows: list[Row] = []
    values: dict[int, dict[tuple[int, str], float]] = {}
    by_key = {(c.evaluation_set.pk, c.metric): c.key for c in columns}
    url_pattern = reverse("submission-detail", args=[URL_PLACEHOLDER])
    for submission in submissions:
        row = Row(submission, url=url_pattern.replace(str(URL_PLACEHOLDER), str(submission.public_id)))
        mine = values.setdefault(submission.pk, {})
        for set_id, score in by_sub.get(submission.pk, []):
            mine[(set_id, score.metric)] = score.value
            key = by_key.get((set_id, score.metric))
            if key:
                row.scores[key] = score
        ok, attacks = run_info.get(submission.pk, (False, None))
        row.unreliable = _flagged(attacks)
        row.verified = bool(ok) and not row.unreliable
        row.suite_version = track.suite_version if submission.pk in run_info else ""
        if filters.verified and not row.verified:
            continue
        rows.append(row)

    _derived_columns(columns, rows, clean, fits, filters.scale)

    rank_key = columns[0].key if columns else ""
    sort_key = filters.sort if filters.sort in {c.key for c in columns} else rank_key
    sort_col = next((c for c in columns if c.key == sort_key), None)
    descending = filters.descending if filters.descending is not None else bool(sort_col and sort_col.higher_is_better)
    if sort_key:
        present = [r for r in rows if r.value(sort_key) is not None]
        missing = [r for r in rows if r.value(sort_key) is None]
        present.sort(key=lambda r: r.value(sort_key), reverse=descending)
        rows = present + missing
    if columns:
        _rank_by_interval(rows, rank_key, columns[0].higher_is_better)
    return Leaderboard(track, filters, views, columns, rows, sort_key, descending, rank_key, clean, shift_sets,
                       threats, fits, values, attack_labels)


def _lower_by_attacks(by_sub: dict[int, list[tuple[int, Score]]], clean: EvaluationSet, suite_version: str,
                      metric: str = "robust_accuracy") -> None:
    """Each final robust accuracy (a detector's AUC under each Linf budget) becomes the lowest of the suite's and
    every submitted attack's (one query)."""
    lowest = lowest_found(by_sub.keys(), suite_version, metric)
    prefix = f"{metric}@"
    for sub_id, found in lowest.items():
        scores = by_sub.get(sub_id, [])
        for index, (set_id, score) in enumerate(scores):
            label = score.metric[len(prefix):] if score.metric.startswith(prefix) else None
            if set_id != clean.pk or label is None or ">" in label or label not in found:
                continue
            attack = found[label]
            if attack.value < score.value:
                scores[index] = (set_id, Score(score.metric, attack.value, attack.ci_low, attack.ci_high,
                                               attack.num_examples, found_by=attack.attack_name))


def _derived_columns(columns: list[Column], rows: list[Row], clean: EvaluationSet | None,
                     fits: dict[tuple[int, str], BaselineFit], scale: str) -> None:
    """Fill the drop and effective-robustness columns from the stored accuracies."""
    if clean is None:
        return
    clean_key = f"{clean.name}:accuracy"
    for column in columns:
        if column.metric not in {"drop", "effective_robustness"}:
            continue
        shift_key = f"{column.evaluation_set.name}:accuracy"
        both = [r for r in rows if r.value(clean_key) is not None and r.value(shift_key) is not None]
        if column.metric == "drop":
            for r in both:
                r.scores[column.key] = Score("points", r.value(clean_key) - r.value(shift_key))
            continue
        fit = fits.get((column.evaluation_set.pk, scale))
        column.description = (f"Shifted accuracy above the {scale} baseline line over {fit.n_models} standard "
                              "models, in points (95% bootstrap interval over the line)." if fit else
                              "No baseline line yet: it needs at least 3 standard baselines.")
        if fit is None or not both:
            continue
        ers = _effective_robustness(fit, np.array([r.value(clean_key) for r in both]),
                                    np.array([r.value(shift_key) for r in both]))
        for r, er in zip(both, ers, strict=False):  # empty when the stored line was refused
            r.scores[column.key] = er


def _rank_by_interval(rows: list[Row], key: str, higher_is_better: bool = True) -> None:
    """Rank on one score so that a model only outranks those it beats beyond its interval.

    A model's rank is 1 + the number of models whose interval lies entirely on the better side
    of its own: models whose intervals overlap share a rank (the convention of the robustness
    leaderboards that report uncertainty). Sorting the bounds makes it O(n log n).
    """
    scored = [(r, r.scores[key]) for r in rows if key in r.scores]
    for row in rows:
        row.rank = None

    def low(s: Any) -> float:
        return s.ci_low if s.ci_low is not None else s.value

    def high(s: Any) -> float:
        return s.ci_high if s.ci_high is not None else s.value

    if higher_is_better:
        lows = sorted(low(s) for _, s in scored)
        for row, s in scored:
            row.rank = 1 + len(lows) - bisect.bisect_right(lows, high(s))
    else:
        highs = sorted(high(s) for _, s in scored)
        for row, s in scored:
            row.rank = 1 + bisect.bisect_left(highs, low(s))


def leaderboard(track: Track, user: Any = None, sort: str = "", descending: bool = True) -> tuple[list[Column],
                                                                                                  list[Row]]:
    """The overview table (kept for callers that only need columns and rows)."""
    board = build(track, user, Filters(sort=sort, descending=descending))
    return board.columns, board.rows
