"""Leaderboard tables: views per shift and threat model, filters, sorting, badges, exports, the
effective-robustness and robust-accuracy figures, and a bounded number of queries at 1,000 models."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from html import unescape
from types import SimpleNamespace

import numpy as np
import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from scipy.special import logit
from scipy.stats import norm

from accounts.models import Withdrawal
from benchmarks.models import BaselineFit
from leaderboards.fits import robustness_of
from leaderboards.plots import detector_attack_figure, effective_robustness_figure, robust_accuracy_figure
from leaderboards.queries import ATTACKED_AUC, Filters, build
from submissions.models import EvaluationRun, Result, Submission
from submissions.rounding import round_released
from tests.web.test_leaderboards_helpers import THREAT, add_shifts, populate

pytestmark = pytest.mark.django_db
URL = "/tracks/digits/"


@pytest.fixture
def board_models(digits_track, researcher, other_user):
    return populate(digits_track, researcher, other_user)


def _names(html: str) -> list[str]:
    """Model names in table order (the first link of each body row)."""
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [unescape(n) for n in re.findall(r'<td class="model"><a href="/submissions/[0-9a-f-]+/">([^<]+)</a>', body)]


def test_views_columns_directions_and_ranks(board_models, digits_track):
    overview = build(digits_track)
    assert [c.key for c in overview.columns] == [
        "mnist-hidden:accuracy", "usps:accuracy", "mnist-imagenet-c-padded:accuracy",
        f"mnist-hidden:robust_accuracy@{THREAT}"]
    assert {v for v, _ in overview.views} == {"overview", "shift:usps", "shift:mnist-imagenet-c-padded",
                                              f"threat:{THREAT}"}

    shift = build(digits_track, filters=Filters(view="shift:usps"))
    directions = {c.metric: c.higher_is_better for c in shift.columns}
    assert directions == {"accuracy": True, "drop": False, "effective_robustness": True}
    # The table's effective robustness is the model page's (same line, same bootstrap interval).
    robust = next(r for r in shift.rows if r.submission.name == "Robust net")
    page = next(r for r in robustness_of(robust.submission, "logit") if r.shift_set.name == "usps")
    er = robust.scores["usps:effective_robustness"]
    assert er.value == pytest.approx(page.effective_robustness, abs=1e-12)
    assert (er.ci_low, er.ci_high) == pytest.approx((page.ci_low, page.ci_high), abs=1e-12)
    assert robust.scores["usps:drop"].value == pytest.approx(0.95 - robust.value("usps:accuracy"))

    threat = build(digits_track, filters=Filters(view=f"threat:{THREAT}"))
    assert [c.label for c in threat.columns][2:] == ["after APGD-CE", "after APGD-T", "after Square"]
    ranked = {r.submission.name: r.rank for r in threat.rows}
    assert threat.rows[0].submission.name == "Robust net" and ranked["Robust net"] == 1
    assert ranked["Big data net"] is None  # never attacked: unranked, listed last
    assert threat.rows[-1].submission.name == "Big data net"


def test_filters_sorting_badges_and_visibility(board_models, researcher):
    client = Client()
    html = client.get(URL).content.decode()
    names = _names(html)
    assert "Ada's private" not in html and len(names) == 9
    assert names[0] == "Baseline 5"  # 99% clean accuracy
    assert 'aria-sort="descending"' in html and html.count('aria-sort="none"') == 3
    assert "higher is better" in html
    assert html.count('class="tag verified"') == 1 + 8  # the legend, and every model but the flagged one

    assert _names(client.get(URL, {"model_type": "robust"}).content.decode()) == ["Robust net"]
    assert _names(client.get(URL, {"extra_data": "yes"}).content.decode()) == ["Big data net"]
    assert "Big data net" not in _names(client.get(URL, {"extra_data": "no"}).content.decode())
    assert "Ada's model" not in _names(client.get(URL, {"verified": "1"}).content.decode())

    # Lower-is-better column: its first click sorts ascending (best first).
    html = client.get(URL, {"view": "shift:usps"}).content.decode()
    assert 'sort=usps%3Adrop&amp;order=asc">drop' in html
    html = client.get(URL, {"view": "shift:usps", "sort": "usps:drop", "order": "asc"}).content.decode()
    board = build(board_models["Robust net"].track, filters=Filters(view="shift:usps"))
    drops = sorted((r.value("usps:drop"), r.submission.name) for r in board.rows)
    assert _names(html)[0] == drops[0][1]
    assert re.search(r'aria-sort="ascending"[^>]*>\s*<a href="[^"]*order=desc">drop', html)

    client.force_login(researcher)  # the owner sees their private model, highlighted
    html = client.get(URL).content.decode()
    assert "Ada's private" in _names(html) and html.count('class="mine"') == 2

    Withdrawal.objects.create(submission=board_models["Robust net"])
    assert "Robust net" not in _names(client.get(URL).content.decode())


def test_csv_and_json_exports_follow_the_filters(board_models, other_user):
    evil = board_models["Big data net"]
    Submission.objects.filter(pk=evil.pk).update(name="=HYPERLINK(\"http://x\")")
    client = Client()
    params = {"view": "shift:usps", "model_type": "standard", "sort": "usps:drop", "order": "asc"}
    data = client.get(f"{URL}leaderboard.json", params).json()
    assert data["view"] == "shift:usps" and data["filters"]["model_type"] == "standard"
    assert [c["higher_is_better"] for c in data["columns"]] == [True, True, False, True]
    assert len(data["rows"]) == 6 and {r["model_type"] for r in data["rows"]} == {"standard"}
    drops = [r["scores"]["usps:drop"]["value"] for r in data["rows"]]
    assert drops == sorted(drops)
    stored = {r.submission.name: r for r in Result.objects.filter(metric="accuracy", evaluation_set__name="usps")}
    for row in data["rows"]:
        stored_row = stored[row["name"]]
        released = round_released("accuracy", stored_row.value, stored_row.ci_low, stored_row.ci_high)
        assert (row["scores"]["usps:accuracy"]["value"], row["scores"]["usps:accuracy"]["ci_low"]) == released[:2]
        assert abs(released[0] - stored_row.value) <= 0.005 + 1e-12  # never more than half a unit of the interval
        assert row["verified"] and row["suite_version"] == "clean-1" and row["paper_url"].startswith("https://")

    response = client.get(f"{URL}leaderboard.csv", params)
    assert response["Content-Type"].startswith("text/csv") and "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["name"] for r in rows] == [r["name"] for r in data["rows"]]
    assert "usps:drop (lower_better)" in rows[0] and "usps:accuracy (higher_better)" in rows[0]
    for line, row in zip(rows, data["rows"], strict=True):
        assert float(line["usps:accuracy (higher_better)"]) == row["scores"]["usps:accuracy"]["value"]
        assert float(line["usps:effective_robustness ci_high"]) == row["scores"]["usps:effective_robustness"]["ci_high"]

    everything = list(csv.DictReader(io.StringIO(client.get(f"{URL}leaderboard.csv").content.decode())))
    assert len(everything) == 9
    assert any(r["name"] == "'=HYPERLINK(\"http://x\")" for r in everything)  # formulas defused

    api = client.get("/api/v1/tracks/digits/leaderboard/", params).json()
    assert api["rows"] == data["rows"]  # the API serves the same table


def test_effective_robustness_figure(board_models, digits_track, researcher):
    board = build(digits_track, researcher, Filters(shift="usps"))
    fig = effective_robustness_figure(board, researcher)
    names = [t.name for t in fig.data]
    line = next(t for t in fig.data if t.name.startswith("Baseline fit"))
    assert "95% bootstrap band" in names and "y = x (no drop)" in names and "Your models" in names
    assert {"Standard training (baselines)", "Robust training", "Extra training data", "Submission"} <= set(names)
    fit = BaselineFit.objects.get(shift_set__name="usps", transform="logit", is_current=True)
    # Plotted in logit space: the line is slope * x + intercept there.
    assert np.allclose(np.asarray(line.y), fit.slope * np.asarray(line.x) + fit.intercept, atol=1e-9)
    robust = next(t for t in fig.data if t.name == "Robust training")
    assert robust.x[0] == pytest.approx(logit(0.95))
    assert robust.customdata[0][0] == board_models["Robust net"].get_absolute_url()
    assert all(text.endswith("%") for text in fig.layout.xaxis.ticktext)
    mine = next(t for t in fig.data if t.name == "Your models")
    assert len(mine.x) == 2  # Ada's public and private models

    probit = effective_robustness_figure(build(digits_track, None, Filters(shift="usps", scale="probit")))
    assert "Your models" not in [t.name for t in probit.data]
    assert next(t for t in probit.data if t.name == "Robust training").x[0] == pytest.approx(norm.ppf(0.95))

    attack = robust_accuracy_figure(build(digits_track, None, Filters(threat=THREAT)))
    assert attack.layout.meta["models"] == 8
    assert next(t for t in attack.data if t.name == "Robust training").y[0] == pytest.approx(77.0)


HOSTILE_NAMES = {"Ada's model": '<a href="https://evil">x</a>', "Robust net": "<b>bold</b> & co"}


def _hover_strings(figure: dict) -> list[str]:
    """Every string a figure's points carry into their hover labels (customdata and text)."""
    found: list[str] = []
    for trace in figure["data"]:
        for row in trace.get("customdata") or []:
            found += [cell for cell in row[1:] if isinstance(cell, str)]  # row[0] is the page URL
        found += [cell for cell in trace.get("text") or [] if isinstance(cell, str)]
    return found


def test_hover_labels_show_model_names_as_text(board_models, digits_track, researcher):
    """Plotly renders tags in hover text: a model name must reach it escaped, never as markup."""
    for old, new in HOSTILE_NAMES.items():
        Submission.objects.filter(pk=board_models[old].pk).update(name=new)
    escaped = ['&lt;a href="https://evil"&gt;x&lt;/a&gt;', "&lt;b&gt;bold&lt;/b&gt; &amp; co"]
    html = Client().get(URL, {"view": "shift:usps", "threat": THREAT}).content.decode()
    figures = {key: json.loads(re.search(rf'<script type="application/json" id="{key}">(.*?)</script>', html,
                                         re.S)[1]) for key in ("er-figure", "robust-figure")}
    figures["threat"] = json.loads(robust_accuracy_figure(build(digits_track, researcher,
                                                                Filters(threat=THREAT))).to_json())
    for label, figure in figures.items():
        strings = _hover_strings(figure)
        assert all(name in strings for name in escaped), (label, strings)
        assert not any("<" in text or ">" in text for text in strings), label  # no raw <a, <b anywhere
        assert all(name in strings for name in ("Baseline 0", "bob")), label  # plain names are left alone


def test_detector_hover_labels_show_model_names_as_text(board_models, digits_track):
    """The detector figure puts names in its points' text: escaped there too."""
    clean = digits_track.clean_set()
    rows = [SimpleNamespace(submission=SimpleNamespace(pk=1, model_type="submission", name='<a href="x">y</a>'))]
    board = SimpleNamespace(clean_set=clean, attacks=["Linf-1/255"], shift_sets=[], rows=rows,
                            values={1: {(clean.pk, "auc"): 0.9, (clean.pk, f"{ATTACKED_AUC}Linf-1/255"): 0.1}})
    figure = json.loads(detector_attack_figure(board).to_json())
    strings = _hover_strings(figure)
    assert '&lt;a href="x"&gt;y&lt;/a&gt;' in strings and not any("<a" in text for text in strings)


def test_leaderboard_page_serves_plotly_locally(board_models):
    html = Client().get(URL, {"view": "shift:usps"}).content.decode()
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts == ["/static/arena/vendor/plotly.min.js", "/static/arena/plots.js"]  # nothing from a CDN
    figure = json.loads(re.search(r'<script type="application/json" id="er-figure">(.*?)</script>', html, re.S)[1])
    assert any(t["name"].startswith("Baseline fit") for t in figure["data"])
    found = finders.find("arena/vendor/plotly.min.js")
    assert found and open(found, "rb").read(200).lstrip().startswith(b"/**")


def test_track_without_shifts_or_attacks_degrades_gracefully(digits_track, researcher):
    from tests.web.test_leaderboards_helpers import finish, new_submission

    finish(new_submission(digits_track, researcher, "Only clean"), 0.97)
    html = Client().get(URL).content.decode()
    assert _names(html) == ["Only clean"]
    assert "er-figure" not in html and "robust-figure" not in html and "plotly" not in html


def test_thousand_submissions_render_with_bounded_queries(digits_track, researcher, other_user,
                                                          django_assert_max_num_queries):
    add_shifts(digits_track)
    sets = {s.name: s for s in digits_track.evaluation_sets.all()}
    rng = np.random.default_rng(0)
    types = ["standard", "robust", "extra_data", "submission"]
    subs = Submission.objects.bulk_create([
        Submission(track=digits_track, owner=researcher if i % 7 == 0 else other_user, name=f"model {i:04d}",
                   artifact="artifacts/x.pt2", artifact_format="pt2", artifact_sha256=f"{i:064d}",
                   state="finished", model_type=types[i % 4], extra_data=i % 4 == 2, public_id=uuid.uuid4())
        for i in range(1000)
    ])
    results, runs = [], []
    for s in subs:
        clean = float(rng.uniform(0.85, 0.995))
        values = {("mnist-hidden", "accuracy"): clean, ("usps", "accuracy"): clean - 0.08,
                  ("mnist-imagenet-c-padded", "accuracy"): clean - 0.15,
                  ("mnist-hidden", f"robust_accuracy@{THREAT}"): clean / 3}
        for (set_name, metric), v in values.items():
            results.append(Result(submission=s, evaluation_set=sets[set_name], metric=metric, value=v,
                                  ci_low=v - 0.01, ci_high=v + 0.01, num_examples=2000, suite_version="clean-1",
                                  seed=0))
        runs.append(EvaluationRun(submission=s, suite_version="clean-1", seed=0, ok=True,
                                  provenance={"attacks": {THREAT: {"flags": [{"check": "x", "flagged": False}]}}}))
    Result.objects.bulk_create(results, batch_size=500)
    EvaluationRun.objects.bulk_create(runs, batch_size=500)
    from leaderboards.fits import refit_track

    Submission.objects.filter(name__in=[f"model {i:04d}" for i in range(0, 40, 4)]).update(is_baseline=True)
    refit_track(digits_track)

    client = Client()
    client.force_login(researcher)
    # One of them reads what submitted attacks found (adversaries.scores), whatever the number of models.
    for params in ({}, {"view": "shift:usps", "scale": "probit"}, {"view": f"threat:{THREAT}"}):
        with django_assert_max_num_queries(13):
            response = client.get(URL, params)
        assert response.status_code == 200
        assert len(_names(response.content.decode())) == 1000
    with django_assert_max_num_queries(11):
        data = client.get(f"{URL}leaderboard.json", {"view": "shift:usps"}).json()
    assert len(data["rows"]) == 1000 and all(r["verified"] for r in data["rows"])
    with django_assert_max_num_queries(11):
        assert client.get(f"{URL}leaderboard.csv").content.decode().count("\n") == 1001


def test_detector_track_tables(researcher):
    from benchmarks.models import Benchmark, EvaluationSet, Track
    from tests.web.test_leaderboards_helpers import new_submission

    track = Track.objects.create(benchmark=Benchmark.objects.create(slug="d", name="D"), slug="gan", name="GAN",
                                 task_kind="detector", input_channels=1, input_height=28, input_width=28,
                                 num_classes=2)
    for name, role in (("gan-test", "clean"), ("vae-test", "shift")):
        EvaluationSet.objects.create(track=track, name=name, role=role, relative_path=name, sha256="0" * 64,
                                     num_examples=4000)
    sets = {s.name: s for s in track.evaluation_sets.all()}
    detector = new_submission(track, researcher, "Discriminator", state="finished")
    for set_name, auc in (("gan-test", 0.97), ("vae-test", 0.71)):
        for metric, value in (("auc", auc), ("average_precision", auc - 0.01), ("tpr@1%fpr", 0.4),
                              ("tpr@5%fpr", 0.6)):
            Result.objects.create(submission=detector, evaluation_set=sets[set_name], metric=metric, value=value,
                                  ci_low=value - 0.01, ci_high=value + 0.01, num_examples=4000,
                                  suite_version="clean-1", seed=0)
    client = Client()
    html = client.get("/tracks/gan/").content.decode()
    assert "gan-test AUC" in html and "0.97" in html and "Effective robustness" not in html
    html = client.get("/tracks/gan/", {"view": "set:vae-test"}).content.decode()
    assert "vae-test TPR at 1% FPR" in html and "40%" in html and "0.70<span class=\"ci\"> [0.69, 0.71]" in html


def test_detector_attack_view_and_collapse_plot(researcher):
    """Attacked AUCs on the clean set become an Attacks view, overview columns and the collapse plot."""
    import json
    import re

    from benchmarks.models import Benchmark, EvaluationSet, Track
    from tests.web.test_leaderboards_helpers import new_submission

    track = Track.objects.create(benchmark=Benchmark.objects.create(slug="d2", name="D2"), slug="gan2", name="GAN",
                                 task_kind="detector", input_channels=1, input_height=28, input_width=28,
                                 num_classes=2)
    clean = EvaluationSet.objects.create(track=track, name="gan-test", role="clean", relative_path="a",
                                         sha256="0" * 64, num_examples=4000)
    transfer = EvaluationSet.objects.create(track=track, name="gan-transfer", role="shift", shift_kind="adversarial",
                                            relative_path="b", sha256="0" * 64, num_examples=4000)
    detector = new_submission(track, researcher, "Small CNN", state="finished")
    numbers = [(clean, "auc", 0.99), (clean, "auc@clean-subset", 0.99), (clean, "auc@Linf-4/255", 0.002),
               (clean, "auc@Linf-1/255", 0.31), (clean, "auc@patch-1%", 0.41), (clean, "auc@latent", 0.62),
               (clean, "auc@latent-reference", 0.98), (clean, "auc@min-L2", 0.05),
               (clean, "median_distortion@min-L2", 0.731), (clean, "median_distortion@min-Linf", 2 / 255),
               (clean, "median_distortion@min-L0", 7.0), (transfer, "auc", 0.55)]
    for evaluation_set, metric, value in numbers:
        Result.objects.create(submission=detector, evaluation_set=evaluation_set, metric=metric, value=value,
                              num_examples=2500, suite_version="clean-1", seed=0)
    client = Client()
    html = client.get("/tracks/gan2/").content.decode()
    # The overview shows the attacks (not the references nor the minimal-change AUC) ...
    assert "AUC: L∞ 1/255 PGD (lowest bit)" in html and "AUC: universal patch 1%" in html
    assert "AUC: universal latent" in html and "latent reference" not in html.split("<table")[1].split("</table>")[0]
    # ... and the collapse plot, with the paper's numbers beside the model's, in the suite's order.
    figure = json.loads(re.search(r'<script type="application/json" id="detector-figure">(.*?)</script>', html,
                                  re.S).group(1))
    paper = next(t for t in figure["data"] if t["name"].startswith("Carlini"))
    assert paper["y"] == [0.95, 0.0005, 0.08, 0.17, 0.22]
    model = next(t for t in figure["data"] if t["name"].startswith("Standard") or t["name"] == "Submission")
    assert model["x"][:6] == ["no attack", "L∞ 1/255 PGD (lowest bit)", "L∞ 4/255 PGD", "universal patch 1%",
                              "universal latent", "transfer (gan-transfer)"]
    assert model["y"][:6] == [0.99, 0.31, 0.002, 0.41, 0.62, 0.55]
    html = client.get("/tracks/gan2/", {"view": "attacks"}).content.decode()
    table = html.split("<table")[1].split("</table>")[0]
    for text in ("AUC: attacked subset, clean", "AUC: minimal L2 change", "AUC: gan-transfer (black-box transfer)",
                 "median L0 to look real", "7.0 px", "2.00/255", "0.731"):
        assert text in table, text
