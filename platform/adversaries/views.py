"""Attack pages: the upload form, an attack's page (its runs), a track's attack leaderboard."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from adversaries import services
from adversaries.forms import AttackForm
from adversaries.models import Attack, AttackRun
from adversaries.scores import released
from adversaries.targets import LOWERED_LABEL, lowered_metric
from benchmarks.models import Track
from submissions.models import Result
from submissions.rounding import round_released


@login_required
def submit(request: HttpRequest) -> HttpResponse:
    form = AttackForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            attack = services.create_attack(request.user, data["track"], data["source"], name=data["name"],
                                            description=data["description"], paper_url=data["paper_url"],
                                            code_url=data["code_url"])
        except services.AttackRefused as exc:
            form.add_error("source", str(exc))
        else:
            messages.success(request, "Your attack was accepted and queued against the track's public models.")
            return redirect(attack)
    return render(request, "adversaries/submit.html", {"form": form})


def detail(request: HttpRequest, public_id) -> HttpResponse:
    attack = get_object_or_404(Attack.objects.select_related("track", "owner"), public_id=public_id,
                               track__is_public=True)
    runs = list(attack.runs.filter(submission__is_public=True).select_related("submission"))
    is_owner = request.user.is_authenticated and (request.user.is_staff or request.user.pk == attack.owner_id)
    metric = lowered_metric(attack.track)
    suite = suite_numbers(runs, metric)
    rows = []
    for run in runs:
        if run.state == AttackRun.State.FINISHED:
            for label, number in (run.robust or {}).items():
                if isinstance(number, dict):
                    rows.append((run, label, suite.get((run.submission_id, label)), released(number, metric)))
        else:
            rows.append((run, "", None, None))
    return render(request, "adversaries/detail.html", {"attack": attack, "rows": rows, "is_owner": is_owner,
                                                       "metric": metric, "metric_label": LOWERED_LABEL[metric]})


def suite_numbers(runs: list[AttackRun], metric: str = "robust_accuracy") -> dict[tuple[int, str], float]:
    """The built-in suite's number (robust accuracy, or a detector's AUC under attack) for each (model, threat
    label) the runs touch (one query), rounded as the site releases it (:mod:`submissions.rounding`)."""
    ids = {r.submission_id for r in runs}
    labels = {label for r in runs for label in (r.robust or {})}
    prefix = f"{metric}@"
    rows = Result.objects.filter(submission_id__in=ids, metric__in=[prefix + label for label in labels]).exclude(
        metric__contains=">").values_list("submission_id", "metric", "value", "ci_low", "ci_high", "suite_version")
    versions = {r.submission_id: r.suite_version for r in runs}
    return {(sid, name.removeprefix(prefix)): round_released(name, value, low, high)[0]
            for sid, name, value, low, high, version in rows if versions.get(sid) == version}


@dataclass
class AttackStanding:
    """One attack on the track's attack leaderboard."""

    attack: Attack
    models: int = 0
    beaten: int = 0
    #: Summed over the models it beat the suite on: how many points of robust accuracy (of AUC, times 100) it
    #: took off.
    points_taken: float = 0.0
    failed: int = 0


def track_attacks(request: HttpRequest, slug: str) -> HttpResponse:
    """Attacks ranked by the models on which they beat the built-in suite, then by how much."""
    track = get_object_or_404(Track, slug=slug, is_public=True)
    attacks = list(Attack.objects.filter(track=track, state=Attack.State.ACTIVE).select_related("owner"))
    runs = list(AttackRun.objects.filter(attack__in=attacks, suite_version=track.suite_version,
                                         submission__is_public=True))
    metric = lowered_metric(track)
    suite = suite_numbers(runs, metric)
    standings = {a.pk: AttackStanding(a) for a in attacks}
    for run in runs:
        standing = standings[run.attack_id]
        if run.state == AttackRun.State.FAILED:
            standing.failed += 1
            continue
        if run.state != AttackRun.State.FINISHED:
            continue
        standing.models += 1
        beat = False
        for label, number in (run.robust or {}).items():
            ours = suite.get((run.submission_id, label))
            if ours is None or not isinstance(number, dict):
                continue
            # Both numbers as the site releases them: the sum must not carry digits the pages round away.
            theirs = released(number, metric)["value"]
            gap = ours - theirs if theirs is not None else 0.0
            if gap > 0:
                beat = True
                standing.points_taken += 100 * gap
        standing.beaten += int(beat)
    ranked = sorted(standings.values(), key=lambda s: (-s.beaten, -s.points_taken, s.attack.created_at))
    return render(request, "adversaries/track.html", {"track": track, "standings": ranked,
                                                      "metric_label": LOWERED_LABEL[metric]})
