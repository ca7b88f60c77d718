"""Public pages: the list of benchmarks and each track's leaderboard, its plots and its exports."""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from benchmarks.models import Benchmark, EvaluationSet, Track
from leaderboards import cache as lb_cache
from leaderboards import exports
from leaderboards.model_page import MODEL_PAGE_RELATED, model_page_context
from leaderboards.plots import (
    MODEL_TYPE_STYLE,
    detector_attack_figure,
    effective_robustness_figure,
    figure_json,
    robust_accuracy_figure,
)
from leaderboards.queries import TRANSFORMS, Filters, Leaderboard, build
from submissions.models import Submission
from submissions.views import status_payload, visible_submission


def home(request: HttpRequest) -> HttpResponse:
    benchmarks = Benchmark.objects.prefetch_related("tracks")
    return render(request, "leaderboards/home.html", {"benchmarks": benchmarks})


def _track(slug: str) -> Track:
    return get_object_or_404(Track.objects.select_related("benchmark"), slug=slug, is_public=True)


def _board(request: HttpRequest, slug: str) -> Leaderboard:
    track = _track(slug)
    return build(track, request.user, Filters.from_params(request.GET))


def _link(params: dict[str, str], **changes: str) -> str:
    """A query string: the current parameters with ``changes`` applied (empty values dropped)."""
    merged = {**params, **changes}
    return "?" + urlencode({k: v for k, v in merged.items() if v})


def set_documentation(evaluation_set: EvaluationSet) -> dict[str, Any]:
    """What the track page says about one evaluation set: what it is, the published definition it
    follows and how many images each cell holds (from the set's metadata, when the builder recorded it)."""
    metadata = evaluation_set.metadata if isinstance(evaluation_set.metadata, dict) else {}
    cells = metadata.get("cells")
    return {
        "set": evaluation_set,
        "follows": metadata.get("reference", ""),
        "constants": metadata.get("constants", ""),
        "definition": metadata.get("definition", ""),
        "per_cell": metadata.get("per_cell"),
        "cells": len(cells) if isinstance(cells, dict) else 0,
    }


def attack_plan(track: Track, clean_points: int | None) -> dict[str, Any] | None:
    """What the attack suite does on a classifier track, and how precise a robust accuracy on it can be.

    A robust accuracy is measured on ``attack_points`` hidden clean points (fewer if the clean set is
    smaller), so its interval is as wide as that sample allows: a researcher reading 62% should know
    it means 62 +- 4 on 500 points. The half-width shown is the widest one (at 50%), Clopper-Pearson
    as the scores' own intervals.
    """
    if track.task_kind != Track.TaskKind.CLASSIFIER or not track.threat_models or not track.attack_points:
        return None
    points = min(track.attack_points, clean_points) if clean_points else track.attack_points
    return {"points": points, "suite": track.attack_suite,
            "threats": ", ".join(t["label"] for t in track.threat_models),
            "half_width": _widest_half_width(points) * 100}


@lru_cache(maxsize=64)
def _widest_half_width(points: int) -> float:
    # scipy (beta quantiles) is imported only when a track page is first drawn, not at start-up.
    from evaluator.metrics.classification import clopper_pearson

    low, high = clopper_pearson(points // 2, points)
    return (high - low) / 2


def track_leaderboard(request: HttpRequest, slug: str) -> HttpResponse:
    """A track's leaderboard; its body comes from the cache when this reader shares it (cache.page_for_reader)."""
    return lb_cache.page_for_reader(request, "page", slug, lambda shell: _track_page(request, slug, shell))


def _track_page(request: HttpRequest, slug: str, shell: bool = False) -> HttpResponse:
    """The leaderboard page built now; ``shell``: without the reader's header (markers for cache._fill)."""
    board = _board(request, slug)
    params = board.filters.as_params()
    table_params = {k: v for k, v in params.items() if k not in {"sort", "order"}}
    headers = []
    for column in board.columns:
        active = board.sort == column.key
        # A first click sorts best-first; a second click on the same column reverses it.
        best_first = "desc" if column.higher_is_better else "asc"
        worst_first = "asc" if column.higher_is_better else "desc"
        is_best_first = board.descending == column.higher_is_better
        order = (worst_first if is_best_first else best_first) if active else best_first
        headers.append({
            "column": column,
            "aria_sort": ("descending" if board.descending else "ascending") if active else "none",
            "href": _link(table_params, sort=column.key, order=order),
        })
    er_fig = effective_robustness_figure(board, request.user)
    robust_fig = robust_accuracy_figure(board, request.user)
    detector_fig = detector_attack_figure(board, request.user)
    shift = board.plot_shift
    context: dict[str, Any] = {
        "track": board.track,
        "board": board,
        "columns": board.columns,
        "rows": board.rows,
        "headers": headers,
        "filters": board.filters,
        "params": params,
        "view_links": [{"key": k, "label": label, "href": _link(params, view=k if k != "overview" else "", sort="",
                                                                  order=""), "active": k == board.filters.view}
                       for k, label in board.views],
        "shift_links": [{"label": s.name, "href": _link(params, shift=s.name) + "#er-plot-section",
                         "active": shift is not None and s.pk == shift.pk} for s in board.shift_sets],
        "scale_links": [{"label": t, "href": _link(params, scale=t if t != "logit" else "") + "#er-plot-section",
                         "active": t == board.filters.scale} for t in TRANSFORMS],
        "threat_links": [{"label": t, "href": _link(params, threat=t) + "#robust-plot-section",
                          "active": t == board.plot_threat} for t in board.threats],
        "plot_shift": shift if board.track.task_kind == Track.TaskKind.CLASSIFIER else None,
        "er_fit": board.fits.get((shift.pk, board.filters.scale)) if shift else None,
        "er_figure": figure_json(er_fig) if er_fig is not None else None,
        "robust_figure": figure_json(robust_fig) if robust_fig is not None else None,
        "detector_figure": figure_json(detector_fig) if detector_fig is not None else None,
        "model_types": Submission.ModelType.choices,
        "legend": MODEL_TYPE_STYLE,
        "export_query": _link(params)[1:],
        "attack_plan": attack_plan(board.track, board.clean_set.num_examples if board.clean_set else None),
        "evaluation_sets": [set_documentation(s) for s in
                            ([board.clean_set, *board.shift_sets] if board.clean_set else board.shift_sets)],
        "arena_shell": shell,
    }
    return render(request, "leaderboards/track.html", context)


def export_json(request: HttpRequest, slug: str) -> JsonResponse:
    board = _board(request, slug)
    response = JsonResponse(exports.as_json(board, request), json_dumps_params={"indent": 1})
    response["Content-Disposition"] = f'inline; filename="{board.track.slug}-leaderboard.json"'
    return response


def export_csv(request: HttpRequest, slug: str) -> HttpResponse:
    board = _board(request, slug)
    response = HttpResponse(exports.as_csv(board), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{board.track.slug}-leaderboard.csv"'
    return response


def model_page(request: HttpRequest, public_id) -> HttpResponse:
    """A submission's model page (leaderboards.model_page builds it; leaderboards.cache keeps anonymous renders
    whole, and the body of others' public settled models for signed-in readers)."""
    return lb_cache.page_for_reader(request, lb_cache.MODEL_PAGE, public_id,
                                    lambda shell: _model_page(request, public_id, shell))


def _model_page(request: HttpRequest, public_id, shell: bool = False) -> HttpResponse:
    submission = visible_submission(request, public_id, MODEL_PAGE_RELATED)
    is_owner = request.user.is_authenticated and (request.user.is_staff or request.user.pk == submission.owner_id)
    return render(
        request,
        "submissions/detail.html",
        {"submission": submission, "track": submission.track, "is_owner": is_owner,
         "status": status_payload(submission),
         **model_page_context(submission, request.user, request.GET.get("transform")), "arena_shell": shell},
    )
