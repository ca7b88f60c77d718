"""Leaderboard rows for a track, built with a fixed number of queries whatever its size."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Q

from benchmarks.models import EvaluationSet, Track
from submissions.models import Result, Submission


@dataclass
class Column:
    """One score column: a metric on an evaluation set. All current metrics are higher-is-better."""

    key: str
    evaluation_set: EvaluationSet
    metric: str
    label: str
    higher_is_better: bool = True


@dataclass
class Row:
    submission: Submission
    scores: dict[str, Result] = field(default_factory=dict)
    rank: int | None = None

    def value(self, key: str) -> float | None:
        result = self.scores.get(key)
        return None if result is None else result.value


def columns_for(track: Track) -> list[Column]:
    metric = track.headline_metric
    label = "accuracy" if metric == "accuracy" else "AUC"
    return [
        Column(f"{s.name}:{metric}", s, metric, f"{s.name} {label}")
        for s in sorted(track.evaluation_sets.all(), key=lambda s: (s.role != EvaluationSet.Role.CLEAN, s.id))
    ]


def leaderboard(track: Track, user=None, sort: str = "", descending: bool = True) -> tuple[list[Column], list[Row]]:
    """Finished submissions visible to ``user``, scored under the track's current suite version."""
    columns = columns_for(track)
    visible = Q(is_public=True)
    if user is not None and user.is_authenticated:
        visible |= Q(owner=user)
    submissions = list(
        Submission.objects.filter(visible, track=track, state=Submission.State.FINISHED).select_related("owner")
    )
    rows = {s.pk: Row(s) for s in submissions}
    wanted = {(c.evaluation_set.pk, c.metric): c.key for c in columns}
    results = Result.objects.filter(
        submission__in=rows.keys(), suite_version=track.suite_version, metric__in={c.metric for c in columns}
    )
    for result in results:
        key = wanted.get((result.evaluation_set_id, result.metric))
        if key:
            rows[result.submission_id].scores[key] = result
    ordered = list(rows.values())
    sort_key = sort if sort in {c.key for c in columns} else (columns[0].key if columns else "")
    if sort_key:
        present = [r for r in ordered if r.value(sort_key) is not None]
        missing = [r for r in ordered if r.value(sort_key) is None]
        present.sort(key=lambda r: r.value(sort_key), reverse=descending)
        ordered = present + missing
    if columns:
        _rank_by_interval(ordered, columns[0].key)
    return columns, ordered


def _rank_by_interval(rows: list[Row], key: str) -> None:
    """Rank on the headline score so that a model only outranks those it beats beyond its interval.

    A model's rank is 1 + the number of models whose lower interval bound lies above its upper
    bound: models whose intervals overlap share a rank (the convention of the robustness
    leaderboards that report uncertainty).
    """
    scored = [(r, r.scores[key]) for r in rows if key in r.scores]
    for row, result in scored:
        high = result.ci_high if result.ci_high is not None else result.value
        row.rank = 1 + sum(
            1 for _, other in scored if (other.ci_low if other.ci_low is not None else other.value) > high
        )
