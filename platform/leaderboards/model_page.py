"""What a model page shows beyond its status: scores, attack cascade, corruption heatmaps, per-class.

Kept out of the submissions app so that the page can grow (new result kinds) without touching
the upload and evaluation code; ``submissions.views.detail`` merges this context in.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.cache import cache
from django.utils.safestring import SafeString, mark_safe

from benchmarks.models import EvaluationSet
from leaderboards.queries import ROBUST, STAGE_LABELS, STAGE_ORDER, _flagged, _threats
from submissions.models import EvaluationRun, Result, Submission

if TYPE_CHECKING:
    from benchmarks.fits import ShiftRobustness

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    label: str
    result: Any  # Result or Score


@dataclass
class Cascade:
    """Robust accuracy after each stage of the attack cascade for one threat model."""

    threat: str
    clean: Result | None
    stages: list[Stage]
    final: Result | None
    forward_passes: int | None = None
    backward_passes: int | None = None
    seconds: float | None = None
    flags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return any(f.get("flagged") for f in self.flags)


@dataclass
class Heatmap:
    evaluation_set: EvaluationSet
    figure: SafeString
    overall: Result | None
    severities: list[int]
    rows: list[tuple[str, list[float | None], float | None]]  # corruption, per severity, mean


@dataclass
class PerClass:
    sets: list[str]
    rows: list[tuple[str, list[float | None]]]


def _stage_key(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def cascades(submission: Submission, results: list[Result], run: EvaluationRun | None) -> list[Cascade]:
    clean_set = next((r.evaluation_set for r in results if r.evaluation_set.role == EvaluationSet.Role.CLEAN), None)
    clean = next((r for r in results if r.evaluation_set == clean_set and r.metric == "accuracy"), None)
    found: dict[str, dict[str, Result]] = {}
    for r in results:
        if r.metric.startswith(ROBUST):
            threat, _, stage = r.metric[len(ROBUST):].partition(">")
            found.setdefault(threat, {})[stage] = r
    attacks = (run.provenance or {}).get("attacks", {}) if run is not None else {}
    out = []
    for threat in _threats(submission.track, set(found)):
        if threat not in found:
            continue
        stages = found[threat]
        info = attacks.get(threat) or {}
        out.append(Cascade(
            threat=threat,
            clean=clean,
            stages=[Stage(STAGE_LABELS.get(s, s), stages[s]) for s in sorted((s for s in stages if s), key=_stage_key)],
            final=stages.get(""),
            forward_passes=info.get("forward_passes"),
            backward_passes=info.get("backward_passes"),
            seconds=info.get("seconds"),
            flags=[f for f in info.get("flags", []) if isinstance(f, dict)],
        ))
    return out


def _heatmap_figure(cells: dict[tuple[str, int], float]) -> tuple[SafeString, list[str], list[list[float | None]]]:
    """The heatmap's figure JSON with its rows (names, and accuracies in percent), cached by content.

    Building the plotly figure is most of a model page's time (~20 ms for 15 corruptions x 5
    severities), for a figure that is a pure function of the cells. The key is a digest of the cells
    themselves, so an entry can never be stale and needs no invalidation: new results are new cells.
    """
    from leaderboards.cache import cache_seconds
    from leaderboards.plots import corruption_heatmap, figure_json

    key = f"arena:heatmap:{hashlib.sha256(repr(sorted(cells.items())).encode()).hexdigest()[:40]}"
    seconds = cache_seconds()
    try:
        stored = cache.get(key) if seconds > 0 else None
    except Exception:  # a cache server that is down costs the figure's time, not the page
        stored = None
    if stored is None:
        figure = corruption_heatmap(cells)
        trace = figure.data[0]
        stored = (str(figure_json(figure)), list(trace.y), [list(row) for row in trace.z])
        if seconds > 0:
            try:
                cache.set(key, stored, timeout=seconds)
            except Exception:
                logger.warning("cache unavailable; heatmap not stored", exc_info=True)
    text, names, z = stored
    return mark_safe(text), names, z  # noqa: S308 - figure_json's output, escaped for a script element


def heatmaps(results: list[Result]) -> list[Heatmap]:
    """One heatmap per synthetic-shift set that has per-cell accuracies ``accuracy@<corruption>:<severity>``."""
    by_set: dict[int, dict[tuple[str, int], float]] = {}
    sets: dict[int, EvaluationSet] = {}
    overall: dict[int, Result] = {}
    for r in results:
        if r.metric == "accuracy":
            overall[r.evaluation_set_id] = r
        if not r.metric.startswith("accuracy@"):
            continue
        corruption, _, severity = r.metric[len("accuracy@"):].rpartition(":")
        if not corruption or not severity.isdigit():
            continue
        by_set.setdefault(r.evaluation_set_id, {})[(corruption, int(severity))] = r.value
        sets[r.evaluation_set_id] = r.evaluation_set
    out = []
    for set_id, cells in by_set.items():
        figure, names, zs = _heatmap_figure(cells)
        severities = sorted({s for _, s in cells})
        rows = []
        for name, row in zip(names, zs, strict=True):
            values = [None if v is None else v / 100 for v in row]
            present = [v for v in values if v is not None]
            rows.append((name, values, sum(present) / len(present) if present else None))
        out.append(Heatmap(sets[set_id], figure, overall.get(set_id), severities, rows))
    return out


def per_class(track: Any, run: EvaluationRun | None) -> PerClass | None:
    """Per-class accuracy on each evaluation set, with the track's class names when it has them."""
    table = (run.per_class or {}) if run is not None else {}
    if not isinstance(table, dict) or not table:
        return None
    sets = list(table)
    classes: list[str] = []
    for accs in table.values():
        for key in accs or {}:
            if key not in classes:
                classes.append(key)
    classes.sort(key=lambda k: (0, int(k)) if str(k).isdigit() else (1, str(k)))
    names = list(track.class_names or [])

    def label(key: str) -> str:
        if str(key).isdigit() and int(key) < len(names) and names[int(key)] != str(key):
            return f"{key} ({names[int(key)]})"
        return str(key)

    return PerClass(sets, [(label(c), [(table[s] or {}).get(c) for s in sets]) for c in classes])


#: What the model page reads through its submission's relations, joined into the query that loads it.
MODEL_PAGE_RELATED = ("track__benchmark", "owner", "withdrawal", "relative_to")


def _withdrawn(submission: Submission) -> bool:
    """Whether the submission has a Withdrawal row: from the joined relation when loaded with MODEL_PAGE_RELATED."""
    from accounts.models import Withdrawal

    try:
        return submission.withdrawal is not None
    except Withdrawal.DoesNotExist:
        return False


def model_page_context(submission: Submission, user: Any, transform: str | None = "logit") -> dict[str, Any]:
    """Context for the model page: scores, cascades, heatmaps, per-class results, robustness, badges.

    It costs a fixed number of queries whatever the track holds (many shift sets, corruption
    cells, attack stages): the track's evaluation sets (one query, reused for every result), the
    submission's current results (one), its run (one), the current lines of the track's shift sets
    (one) and, only for a model with a ``relative_to`` reference, that model's accuracies (one).
    The effective robustness comes from the accuracies among the results already loaded, not from a
    second reading of them; load ``submission`` with :data:`MODEL_PAGE_RELATED` so that the owner,
    track, withdrawal and reference come with it. tests/web/test_model_page_queries.py holds it to that.
    """
    from benchmarks.fits import TRANSFORMS

    transform = transform if transform in TRANSFORMS else "logit"
    track = submission.track
    sets = {s.pk: s for s in EvaluationSet.objects.filter(track_id=track.pk)}
    run = submission.runs.filter(suite_version=track.suite_version).first()
    results: list[Result] = []
    withheld = submission.scores_withheld_from(user)
    finished = submission.state == Submission.State.FINISHED
    if finished and not withheld:
        results = list(submission.results.filter(suite_version=track.suite_version))
        for r in results:
            if r.evaluation_set_id in sets:  # else (never for a consistent track) Django loads it on access
                r.evaluation_set = sets[r.evaluation_set_id]
    scores = [r for r in results if not r.metric.startswith(("accuracy@", ROBUST))]
    verified = bool(run and run.ok and not _flagged((run.provenance or {}).get("attacks")))
    return {
        "results": scores,
        "run": run,
        "cascades": [] if withheld else cascades(submission, results, run),
        "heatmaps": heatmaps(results),
        "per_class": None if withheld else per_class(track, run),
        # Withheld scores stay withheld here too: the table shows the clean and shifted accuracies.
        "robustness": _robustness(submission, transform, list(sets.values()), results),
        "transform": transform,
        "verified": verified,
        "withdrawn": _withdrawn(submission),
        "withheld": withheld,
    }


def _robustness(submission: Submission, transform: str, sets: list[EvaluationSet],
                results: list[Result]) -> list[ShiftRobustness]:
    """Effective and relative robustness from the loaded results: at most two queries (fits, reference)."""
    from benchmarks.fits import current_fits, robustness_rows

    clean = sorted((s for s in sets if s.role == EvaluationSet.Role.CLEAN), key=lambda s: s.pk)
    shift_sets = sorted((s for s in sets if s.role == EvaluationSet.Role.SHIFT), key=lambda s: s.name)
    mine = {r.evaluation_set_id: r.value for r in results if r.metric == "accuracy"}
    if not clean or not shift_sets or clean[0].pk not in mine or not any(s.pk in mine for s in shift_sets):
        return []  # nothing to show: spare the fits' query (each holds its bootstrap resamples)
    reference: dict[int, float] = {}
    if submission.relative_to_id:
        reference = dict(Result.objects.filter(
            submission_id=submission.relative_to_id, evaluation_set__in=shift_sets, metric="accuracy",
            suite_version=submission.track.suite_version).order_by().values_list("evaluation_set_id", "value"))
    return robustness_rows(submission, transform, clean[0], shift_sets, mine, reference,
                           current_fits(shift_sets, transform))
