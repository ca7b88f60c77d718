"""What a model page shows beyond its status: scores, attack cascade, corruption heatmaps, per-class.

Kept out of the submissions app so that the page can grow (new result kinds) without touching
the upload and evaluation code; ``submissions.views.detail`` merges this context in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils.safestring import SafeString

from benchmarks.models import EvaluationSet
from leaderboards.queries import ROBUST, STAGE_LABELS, STAGE_ORDER, _flagged, _threats
from submissions.models import EvaluationRun, Result, Submission


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


def heatmaps(results: list[Result]) -> list[Heatmap]:
    """One heatmap per synthetic-shift set that has per-cell accuracies ``accuracy@<corruption>:<severity>``."""
    from leaderboards.plots import corruption_heatmap, figure_json

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
        figure = corruption_heatmap(cells)
        severities = sorted({s for _, s in cells})
        trace = figure.data[0]
        rows = []
        for name, zs in zip(trace.y, trace.z, strict=True):
            values = [None if v is None else v / 100 for v in zs]
            present = [v for v in values if v is not None]
            rows.append((name, values, sum(present) / len(present) if present else None))
        out.append(Heatmap(sets[set_id], figure_json(figure), overall.get(set_id), severities, rows))
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


def model_page_context(submission: Submission, user: Any) -> dict[str, Any]:
    """Context for the model page: scores, cascades, heatmaps, per-class results, badges and actions."""
    from accounts.models import Withdrawal

    track = submission.track
    run = submission.runs.filter(suite_version=track.suite_version).first()
    results: list[Result] = []
    withheld = not submission.released and not (user is not None and getattr(user, "is_staff", False))
    if submission.state == Submission.State.FINISHED and not withheld:
        results = list(submission.results.filter(suite_version=track.suite_version).select_related("evaluation_set"))
    scores = [r for r in results if not r.metric.startswith(("accuracy@", ROBUST))]
    verified = bool(run and run.ok and not _flagged((run.provenance or {}).get("attacks")))
    return {
        "results": scores,
        "run": run,
        "cascades": [] if withheld else cascades(submission, results, run),
        "heatmaps": heatmaps(results),
        "per_class": None if withheld else per_class(track, run),
        "verified": verified,
        "withdrawn": Withdrawal.objects.filter(submission=submission).exists(),
        "withheld": withheld,
    }
