"""Model pages show only text the platform wrote.

An evaluation's provenance, per-class table and reliability flags come back from the sandbox in
which the model ran beside the hidden data. A forged provenance once carried the hidden labels
onto the public model page: the page printed ``processor``, ``torch``, ``device``, ``sandbox`` and
each flag's ``check`` and ``explanation`` as stored. The page now reads known fields only, numbers
as numbers and strings from known sets, and words the flags itself; a failure shows the platform's
headline for its code and the stored sentence only when the platform composed it.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from submissions.models import EvaluationRun, Submission
from tests.web.test_leaderboards_helpers import THREAT, add_shifts, finish, new_submission

pytestmark = pytest.mark.django_db

#: What a model would smuggle out: the first hidden labels, as digits, in several wrappings.
LABELS = "7210414959069015973496654074013134727121174235124463"
SMUGGLED = (LABELS, "<script>", "<b>", "hidden_labels", "exfil", "smuggled")


def _forged_provenance() -> dict:
    flags = [
        {"check": "black_box", "flagged": False, "value": 0.0, "threshold": 0.1,
         "explanation": f"fine <b>{LABELS}</b>"},
        {"check": f"exfil {LABELS}", "flagged": True, "explanation": f"smuggled {LABELS}"},
        {"check": "gradients", "flagged": "yes", "value": LABELS, "threshold": None, "explanation": LABELS},
    ]
    return {
        "device": f"cpu {LABELS}", "processor": f"x86_64 <script>alert('{LABELS}')</script>",
        "torch": f"2.13.0+{LABELS}", "evaluator": f"0.1.0 smuggled {LABELS}", "sandbox": f"bubblewrap {LABELS}",
        "seconds": LABELS, "hidden_labels": LABELS, f"exfil {LABELS}": [LABELS],
        "time_budget": {"seconds": LABELS, "work": LABELS}, "model_seconds": f"{LABELS}",
        "attacks": {THREAT: {"forward_passes": LABELS, "backward_passes": -3, "seconds": "soon",
                             "flags": flags},
                    f"exfil {LABELS}": {"flags": flags}},
    }


def _pages(submission: Submission, owner, token: str) -> dict[str, str]:
    """The model page as the public, the owner and another user see it, and the API."""
    mine = Client()
    mine.force_login(owner)
    stranger = Client()
    stranger.force_login(get_user_model().objects.create_user("eve", password="a-long-password-9"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    url = submission.get_absolute_url()
    return {
        "anonymous": Client().get(url).content.decode(),
        "owner": mine.get(url).content.decode(),
        "other user": stranger.get(url).content.decode(),
        "api": api.get(f"/api/v1/submissions/{submission.public_id}/").content.decode(),
        "api list": api.get("/api/v1/submissions/").content.decode(),
    }


def test_forged_provenance_text_never_reaches_the_page_or_the_api(digits_track, researcher, token):
    """Strings in the fields the page knows, in unknown fields and in the flags: none of it is shown."""
    add_shifts(digits_track)
    model = finish(new_submission(digits_track, researcher, "Forger", is_public=True), 0.97,
                   robust={"apgd-ce": 0.5, "final": 0.4})
    run = EvaluationRun.objects.get(submission=model)
    run.provenance = _forged_provenance()
    run.save()

    for who, text in _pages(model, researcher, token).items():
        for marker in SMUGGLED:
            assert marker not in text and marker not in text.replace(",", ""), (who, marker)
    html = Client().get(model.get_absolute_url()).content.decode()
    # What is known is still shown, in the platform's words and formats.
    assert "torch –, evaluator –, unknown sandbox" in html and "Hardware</dt><dd>–</dd>" in html
    cascade = html.split(f"Adversarial robustness: {THREAT}", 1)[1].split("</section>", 1)[0]
    assert "<strong>black-box attack</strong>: The black-box Square attack broke 0.0% of the points" in cascade
    assert cascade.count("<li>") == 2  # black_box and gradients; the unknown check is left out


def test_values_of_the_wrong_kind_are_left_out_not_trusted(digits_track, researcher, token):
    """Numbers that are strings, booleans that are strings, class keys and sets the track does not
    have: the page renders (the old page failed on some), shows none of them, and keeps the rest."""
    add_shifts(digits_track)
    model = finish(new_submission(digits_track, researcher, "Confused", is_public=True), 0.97,
                   robust={"apgd-ce": 0.5, "final": 0.4})
    run = EvaluationRun.objects.get(submission=model)
    run.provenance = {"seconds": LABELS, "attacks": {THREAT: {
        "forward_passes": LABELS, "backward_passes": -3, "seconds": "soon",
        "flags": [{"check": "gradients", "flagged": "yes", "value": LABELS, "threshold": None}]}}}
    run.per_class = {"mnist-hidden": {str(c): 0.9 for c in range(10)} | {f"labels {LABELS}": 0.5, "11": 0.7},
                     f"exfil {LABELS}": {"0": 1.0}, "usps": {"3": LABELS, "4": 7.5}}
    run.save()

    response = Client().get(model.get_absolute_url())
    assert response.status_code == 200
    html = response.content.decode()
    for who, text in _pages(model, researcher, token).items():
        for marker in SMUGGLED:
            assert marker not in text and marker not in text.replace(",", ""), (who, marker)
    cascade = html.split(f"Adversarial robustness: {THREAT}", 1)[1].split("</section>", 1)[0]
    assert "<strong>input gradients</strong>: –" in cascade  # a non-number value is shown as none
    assert "reliability flag" not in cascade and "backward passes" not in cascade  # "yes" is not True
    per_class = html.split("Per-class accuracy", 1)[1].split("</section>", 1)[0]
    assert per_class.count("<tr>") == 11 and ">11<" not in per_class  # 10 classes, no 11th
    assert "750.0%" not in per_class and ">usps<" in per_class  # the set is known, its junk values are not


def test_known_provenance_is_shown_as_the_platform_formats_it(digits_track, researcher):
    model = finish(new_submission(digits_track, researcher, "Honest"), 0.97)
    run = EvaluationRun.objects.get(submission=model)
    run.provenance |= {"device": "cuda:0", "processor": "aarch64", "torch": "2.5.1+cu124", "evaluator": "0.1.0",
                       "sandbox": "unsandboxed", "seconds": 3725, "time_budget": {"seconds": 7320.5},
                       "model_seconds": 1250}
    run.save()
    html = Client().get(model.get_absolute_url()).content.decode()
    for text in ("cuda:0 (aarch64)", "torch 2.5.1+cu124, evaluator 0.1.0, no sandbox (development only)",
                 "1 h 02 min", "Time budget</dt><dd>2 h 02 min, from the track's work at the model's measured speed; "
                 "the model's own answers took 20 min 50 s"):
        assert text in html


@pytest.mark.parametrize("code, stored, shown", [
    # The platform's composition (headline, then the evaluator's sentence): shown as stored.
    ("wrong_input_shape", "The model does not accept the track's input shape. It wants 3 channels.",
     "The model does not accept the track's input shape. It wants 3 channels."),
    # Anything else under a known code: the headline alone.
    ("model_error", f"smuggled {LABELS}", "The model raised an error during evaluation."),
    # An unknown code (the column holds 40 characters): the generic headline, not the code or the text.
    (f"x{LABELS[:39]}", f"The evaluation failed. {LABELS}", "The evaluation failed."),
])
def test_a_failure_shows_the_platform_headline_and_only_platform_text(digits_track, researcher, code, stored,
                                                                      shown):
    from django.utils.html import escape

    model = new_submission(digits_track, researcher, "Broken", is_public=True)
    model.transition(Submission.State.RUNNING)
    model.transition(Submission.State.FAILED, failure_code=code, failure_reason=stored)
    html = Client().get(model.get_absolute_url()).content.decode()
    failure = html.split('id="failure"', 1)[1].split("</p>", 1)[0]
    assert failure.endswith(f">{escape(shown)}") and LABELS not in html and LABELS[:39] not in html
