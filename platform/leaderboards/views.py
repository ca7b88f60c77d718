"""Public pages: the list of benchmarks and each track's leaderboard."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from benchmarks.models import Benchmark, Track
from leaderboards.queries import leaderboard


def home(request: HttpRequest) -> HttpResponse:
    benchmarks = Benchmark.objects.prefetch_related("tracks")
    return render(request, "leaderboards/home.html", {"benchmarks": benchmarks})


def track_leaderboard(request: HttpRequest, slug: str) -> HttpResponse:
    track = get_object_or_404(Track.objects.select_related("benchmark"), slug=slug, is_public=True)
    sort = request.GET.get("sort", "")
    descending = request.GET.get("order", "desc") != "asc"
    columns, rows = leaderboard(track, request.user, sort=sort, descending=descending)
    return render(
        request,
        "leaderboards/track.html",
        {"track": track, "columns": columns, "rows": rows, "sort": sort or (columns[0].key if columns else ""),
         "descending": descending, "evaluation_sets": track.evaluation_sets.all()},
    )
