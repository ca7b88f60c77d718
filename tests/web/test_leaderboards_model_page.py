"""The model page (attack cascade, corruption heatmap, per-class, provenance) and the owner's
actions on it: make public / private and withdraw / restore, with their permissions."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import Withdrawal
from leaderboards.queries import build
from tests.web.test_leaderboards_helpers import CORRUPTIONS, THREAT, finish, new_submission, populate

pytestmark = pytest.mark.django_db


@pytest.fixture
def models(digits_track, researcher, other_user):
    return populate(digits_track, researcher, other_user)


def test_model_page_shows_cascade_heatmap_per_class_and_provenance(models):
    model = models["Ada's model"]
    html = Client().get(model.get_absolute_url()).content.decode()
    cascade = html.split(f"Adversarial robustness: {THREAT}", 1)[1].split("</section>", 1)[0]
    stages = re.findall(r"<td>after ([^<]+)</td><td class=\"num\">([0-9.]+)%", cascade)
    # 500 attacked points: a half-width of about 4 points justifies whole percents.
    assert stages == [("APGD-CE", "50"), ("APGD-T", "45"), ("Square", "30")]
    assert "reliability flag" in cascade
    # The flag in the platform's words, from its numbers (not the stored explanation).
    assert ("<strong>black-box attack</strong>: The black-box Square attack broke 25.0% of the points on which the "
            "white-box attacks failed (the limit is 10%). A gradient-free attack beating the white-box ones points to "
            "gradient masking.") in cascade
    # The escalation the flag caused, in the platform's words; the unknown stored name is left out.
    assert re.search(r'<span class="tag bad">escalated</span> A reliability check fired \(black-box attack\), so',
                     cascade)
    assert "hidden label" not in html
    assert "123,456 forward and 98,765 backward passes" in cascade
    assert "verified</span>" not in html.split("<main", 1)[1].split("</p>", 1)[0]  # flagged: no badge

    figure = json.loads(re.search(r'id="heatmap-figure-1">(.*?)</script>', html, re.S)[1])
    heat = figure["data"][0]
    assert heat["type"] == "heatmap" and heat["x"] == ["1", "2", "3", "4", "5"]
    assert heat["y"] == [c.replace("_", " ") for c in CORRUPTIONS] and len(heat["z"]) == len(CORRUPTIONS)
    assert heat["z"][0][0] == pytest.approx(88.0)  # gaussian noise, severity 1 (0.80 + 0.08)
    assert "accuracy@" not in html.split("Scores per evaluation set", 1)[1].split("</section>", 1)[0]

    per_class = html.split("Per-class accuracy", 1)[1].split("</section>", 1)[0]
    assert per_class.count("<tr>") == 11 and "92.0%" in per_class  # header + 10 classes; class 5 = clean
    for text in (model.artifact_sha256, "clean-1 (seed 0)", "1 min 03 s", "cpu (x86_64)", "torch 2.13.0",
                 "bubblewrap sandbox"):
        assert text in html
    assert '<script src="/static/arena/vendor/plotly.min.js">' in html


def test_model_page_without_attacks_or_corruptions_degrades_gracefully(digits_track, researcher):
    plain = finish(new_submission(digits_track, researcher, "Plain"), 0.97)
    html = Client().get(plain.get_absolute_url()).content.decode()
    assert "Adversarial robustness" not in html and "Corruptions" not in html and "plotly" not in html
    assert "97.0%" in html and "verified</span>" in html
    queued = new_submission(digits_track, researcher, "Waiting")
    html = Client().get(queued.get_absolute_url()).content.decode()
    assert "Next to start." in html and "not evaluated yet" in html


@pytest.mark.parametrize("who, expected", [("anonymous", 302), ("other", 404), ("owner", 302), ("staff", 302)])
def test_owner_actions_permissions(models, researcher, other_user, who, expected):
    model = models["Ada's model"]
    client = Client()
    if who == "owner":
        client.force_login(researcher)
    elif who == "other":
        client.force_login(other_user)
    elif who == "staff":
        client.force_login(get_user_model().objects.create_user("op", password="x-long-password-3", is_staff=True))
    allowed = who in {"owner", "staff"}

    response = client.post(f"/submissions/{model.public_id}/visibility/", {"public": "0"})
    assert response.status_code == expected
    if who == "anonymous":
        assert "/accounts/login/" in response["Location"]
    model.refresh_from_db()
    assert model.is_public is not allowed

    response = client.post(f"/submissions/{model.public_id}/withdraw/", {"action": "withdraw"})
    assert response.status_code == expected
    assert Withdrawal.objects.filter(submission=model).exists() is allowed
    assert client.get(f"/submissions/{model.public_id}/visibility/").status_code in {302, 405}  # POST only


def test_withdraw_hides_from_leaderboards_and_restore_keeps_it_private(models, researcher, digits_track):
    model = models["Ada's model"]
    client = Client()
    client.force_login(researcher)
    page = client.post(f"/submissions/{model.public_id}/withdraw/", {"action": "withdraw"}, follow=True)
    assert "withdrawn" in page.content.decode() and "Restore to leaderboards" in page.content.decode()
    model.refresh_from_db()
    assert not model.is_public
    assert model.pk not in {r.submission.pk for r in build(digits_track, researcher).rows}  # not even for its owner
    assert "Ada&#x27;s model" not in client.get("/tracks/digits/").content.decode()

    refused = client.post(f"/submissions/{model.public_id}/visibility/", {"public": "1"}, follow=True)
    assert "restore it to the leaderboards first" in refused.content.decode()
    model.refresh_from_db()
    assert not model.is_public

    client.post(f"/submissions/{model.public_id}/withdraw/", {"action": "restore"})
    assert not Withdrawal.objects.filter(submission=model).exists()
    client.post(f"/submissions/{model.public_id}/visibility/", {"public": "1"})
    model.refresh_from_db()
    assert model.is_public
    assert model.pk in {r.submission.pk for r in build(digits_track).rows}
