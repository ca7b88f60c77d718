"""Effective-robustness lines per (track, shift set), refitted when the baseline testbed changes.

A baseline's arriving result reaches :func:`refit_after_result` through
``submissions.arrival.result_recorded`` (connected in :class:`leaderboards.apps.LeaderboardsConfig`).

The science lives in :mod:`evaluator.metrics.effective_robustness`; this module only gathers the
stored accuracies of a track's standard baselines, keeps each fit as a versioned row, and answers
"how far above or below the line is this model?" for pages and the API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction

from benchmarks.models import BaselineFit, EvaluationSet, Track
from evaluator.metrics.effective_robustness import (
    TRANSFORMS,
    LineFit,
    TooFewModelsError,
    effective_robustness,
    fit_baseline,
    relative_robustness,
)
from evaluator.spec import JobResult
from submissions.models import Result, Submission

logger = logging.getLogger(__name__)

FIT_SEED = 0


def stored_line(row: BaselineFit) -> LineFit | None:
    """The line a stored fit row holds, or None (logged) when the evaluator refuses it.

    ``LineFit.from_dict`` refuses a row whose contents do not match their hash, or one written in an
    older format: such a line is not shown (the page says there is no line) until ``manage.py
    refit_baselines`` writes a current one, rather than failing the page.
    """
    try:
        return LineFit.from_dict(row.fit)
    except (KeyError, TypeError, ValueError) as exc:
        logger.error("stored baseline fit %s (%s, %s) refused: %s; run manage.py refit_baselines",
                     row.pk, row.shift_set_id, row.transform, exc)
        return None


def _accuracies(track: Track, submissions, sets: list[EvaluationSet]) -> dict[int, dict[int, float]]:
    """submission id -> evaluation set id -> accuracy, under the track's current suite version."""
    table: dict[int, dict[int, float]] = {}
    rows = Result.objects.filter(
        submission__in=submissions, evaluation_set__in=sets, metric="accuracy", suite_version=track.suite_version
    ).values_list("submission_id", "evaluation_set_id", "value")
    for submission_id, set_id, value in rows:
        table.setdefault(submission_id, {})[set_id] = value
    return table


def baseline_points(track: Track, clean_set: EvaluationSet, shift_set: EvaluationSet) -> list[tuple[str, float, float]]:
    """(model id, original accuracy, shifted accuracy) of every finished standard baseline."""
    baselines = Submission.objects.filter(
        track=track, is_baseline=True, model_type=Submission.ModelType.STANDARD, state=Submission.State.FINISHED
    )
    table = _accuracies(track, baselines, [clean_set, shift_set])
    ids = dict(baselines.values_list("pk", "public_id"))
    return sorted(
        (str(ids[pk]), accs[clean_set.pk], accs[shift_set.pk])
        for pk, accs in table.items()
        if clean_set.pk in accs and shift_set.pk in accs
    )


def refit_track(track: Track) -> list[BaselineFit]:
    """Fit (or reuse) the line of every shift set of a classifier track; returns the current fits."""
    clean_set = track.clean_set()
    if track.task_kind != Track.TaskKind.CLASSIFIER or clean_set is None:
        return []
    current = []
    for shift_set in track.evaluation_sets.filter(role=EvaluationSet.Role.SHIFT):
        points = baseline_points(track, clean_set, shift_set)
        for kind in TRANSFORMS:
            try:
                fit = fit_baseline(points, kind=kind, seed=FIT_SEED, min_accuracy=track.baseline_min_accuracy)
            except TooFewModelsError as exc:  # too few usable baselines: no line rather than a wrong one
                logger.info("track %s, %s: no %s line: %s", track.slug, shift_set.name, kind, exc)
                BaselineFit.objects.filter(shift_set=shift_set, transform=kind).update(is_current=False)
                continue
            with transaction.atomic():
                row, _ = BaselineFit.objects.get_or_create(
                    shift_set=shift_set, transform=kind, fit_version=fit.fit_version,
                    defaults={"track": track, "clean_set": clean_set, "suite_version": track.suite_version,
                              "slope": fit.slope, "intercept": fit.intercept, "n_models": fit.n_models,
                              "fit": fit.to_dict()},
                )
                BaselineFit.objects.filter(shift_set=shift_set, transform=kind).exclude(pk=row.pk).update(
                    is_current=False
                )
                BaselineFit.objects.filter(pk=row.pk).update(is_current=True)
            row.is_current = True
            current.append(row)
    return current


@dataclass
class ShiftRobustness:
    shift_set: EvaluationSet
    transform: str
    original_accuracy: float
    shifted_accuracy: float
    effective_robustness: float | None
    ci_low: float | None
    ci_high: float | None
    fit_version: str
    n_models: int
    relative_robustness: float | None = None
    relative_to: Submission | None = None


def robustness_of(submission: Submission, transform: str = "logit") -> list[ShiftRobustness]:
    """Effective (and, when a reference is named, relative) robustness on each shift set."""
    track = submission.track
    clean_set = track.clean_set()
    if clean_set is None or submission.state != Submission.State.FINISHED:
        return []
    shift_sets = list(track.evaluation_sets.filter(role=EvaluationSet.Role.SHIFT))
    subjects = [submission.pk] + ([submission.relative_to_id] if submission.relative_to_id else [])
    table = _accuracies(track, Submission.objects.filter(pk__in=subjects), [clean_set, *shift_sets])
    mine = table.get(submission.pk, {})
    reference = table.get(submission.relative_to_id, {}) if submission.relative_to_id else {}
    return robustness_rows(submission, transform, clean_set, shift_sets, mine, reference,
                           current_fits(shift_sets, transform))


def current_fits(shift_sets: list[EvaluationSet], transform: str) -> dict[int, BaselineFit]:
    """shift set id -> its current line under ``transform``: one query for all the sets."""
    if not shift_sets:
        return {}
    return {f.shift_set_id: f for f in BaselineFit.objects.filter(shift_set__in=shift_sets, transform=transform,
                                                                  is_current=True)}


def robustness_rows(submission: Submission, transform: str, clean_set: EvaluationSet,
                    shift_sets: list[EvaluationSet], mine: dict[int, float], reference: dict[int, float],
                    fits: dict[int, BaselineFit]) -> list[ShiftRobustness]:
    """:func:`robustness_of` on data already loaded (no query): the model page reads the accuracies from
    the results it shows anyway, so that the page costs a fixed handful of queries.

    ``mine`` and ``reference`` map evaluation set ids to the accuracy of the submission and of its
    ``relative_to`` model under the current suite; ``fits`` is :func:`current_fits`.
    """
    out = []
    for shift_set in shift_sets:
        if clean_set.pk not in mine or shift_set.pk not in mine:
            continue
        original, shifted = mine[clean_set.pk], mine[shift_set.pk]
        row = ShiftRobustness(shift_set, transform, original, shifted, None, None, None, "", 0)
        stored = fits.get(shift_set.pk)
        line = stored_line(stored) if stored is not None else None
        if stored is not None and line is not None:
            er = effective_robustness(line, original, shifted)
            row.effective_robustness, row.ci_low, row.ci_high = er.value, er.ci_low, er.ci_high
            row.fit_version, row.n_models = stored.fit_version, stored.n_models
        if shift_set.pk in reference:
            row.relative_robustness = relative_robustness(shifted, reference[shift_set.pk])
            row.relative_to = submission.relative_to
        out.append(row)
    return out


def refit_after_result(sender: object, submission: Submission, result: JobResult, **kwargs: object) -> None:
    """Receiver of ``submissions.arrival.result_recorded``: a finished baseline changes its track's testbed."""
    if submission.is_baseline and result.ok:
        refit_track(submission.track)
