"""Attack submissions through the platform (issue 20): uploaded by the API and the form, run against the track's
public models (never private ones), recorded per threat model, shown on the attack's page and the track's
attack leaderboard; a model finishing later faces every active attack.

The runs are real: the shared LeNet-5 hosted in its sandbox, the attack in its own (the task is called in
place, as the worker calls it).
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
from django.core.files import File
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from adversaries.checks import AttackRefused, check_source
from adversaries.models import Attack, AttackRun
from adversaries.scores import lowest_found, released
from adversaries.tasks import run_attack
from submissions.models import Result, Submission
from submissions.rounding import round_released
from submissions.services import create_submission
from submissions.tasks import evaluate_submission

pytestmark = pytest.mark.django_db(transaction=True)

FGSM = textwrap.dedent("""
    import torch.nn.functional as F


    def attack(model, x, y, threat, budget, generator):
        x_adv = x.clone().requires_grad_(True)
        F.cross_entropy(model(x_adv), y).backward()
        return (x + threat.eps * x_adv.grad.sign()).clamp(0, 1)
    """).encode()

#: An attack that breaks nothing (it returns the originals): it never lowers a score.
IDLE = b"def attack(model, x, y, threat, budget, generator):\n    return x\n"


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    ids: list[int] = []
    monkeypatch.setattr("adversaries.dispatch.enqueue", lambda run, countdown=None: ids.append(run.pk))
    monkeypatch.setattr("submissions.dispatch.enqueue", lambda submission: None)
    return ids


@pytest.fixture
def attacked_track(digits_track):
    # Linf 0.05: the built-in suite on 12 points leaves part of a clean LeNet-5 robust, FGSM at 0.3 none.
    digits_track.threat_models = [{"norm": "Linf", "eps": 0.3, "label": "Linf-0.3"}]
    digits_track.attack_points, digits_track.reliability_points = 12, 0
    digits_track.attack_suite = "attacks-1"
    digits_track.save()
    return digits_track


def _copy(path: Path, tag: str, folder: Path) -> Path:
    """The same weights in another file (other metadata, another sha256): the platform evaluates each upload once."""
    from safetensors.torch import load_file, save_file

    out = folder / f"lenet-{tag}.safetensors"
    save_file(load_file(path), out, metadata={"copy": tag})
    return out


def _model(user, track, path: Path, name: str, public: bool = True) -> Submission:
    with path.open("rb") as handle:
        return create_submission(user, track, File(handle, name=path.name), name=name,
                                 zoo_architecture="mnist_lenet5", is_public=public)


def upload_and_run(user, track, model: Submission, sent: list[int], name: str, filename: str,
                   source: bytes) -> tuple[Attack, AttackRun]:
    """Upload an attack through the API as ``user``, check it was queued against ``model`` alone, and run it as
    the worker would: the attack and its finished run."""
    api = APIClient()
    api.force_authenticate(user)
    response = api.post("/api/v1/attacks/", {"track": track.slug, "name": name,
                                             "source": SimpleUploadedFile(filename, source)}, format="multipart")
    assert response.status_code == 201, response.content
    attack = Attack.objects.get(public_id=response.json()["id"])
    run = AttackRun.objects.get(attack=attack)
    assert run.submission == model and sent == [run.pk]
    assert run_attack(run.pk) == "finished"
    run.refresh_from_db()
    return attack, run


@pytest.mark.slow
def test_an_attack_faces_the_public_models_and_can_only_lower_their_scores(
        attacked_track, researcher, other_user, lenet5_safetensors, sent, tmp_path):
    public = _model(researcher, attacked_track, lenet5_safetensors, "LeNet-5 public")
    assert evaluate_submission(public.pk) == "finished"
    suite_row = Result.objects.get(submission=public, metric="robust_accuracy@Linf-0.3")
    suite_value, suite_interval = suite_row.value, (suite_row.ci_low, suite_row.ci_high)

    attack, run = upload_and_run(other_user, attacked_track, public, sent, "FGSM", "fgsm.py", FGSM)
    found = run.robust["Linf-0.3"]
    assert found["num_examples"] == 12 and 0.0 <= found["value"] <= 1.0
    assert run.provenance["attack"]["sha256"] == attack.source_sha256 and run.provenance["evaluator"]
    # The same source again is refused, with the attack it duplicates named.
    api = APIClient()
    api.force_authenticate(other_user)
    again = api.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "FGSM again",
                                          "source": SimpleUploadedFile("fgsm.py", FGSM)}, format="multipart")
    assert again.status_code == 409 and again.json()["existing"] == str(attack.public_id)

    # A second attack that breaks nothing: the lowest number is still FGSM's (or the suite's).
    web = Client()
    web.force_login(other_user)
    page = web.post("/attacks/submit/", {"track": attacked_track.pk, "name": "Idle",
                                         "source": SimpleUploadedFile("idle.py", IDLE)}, follow=True)
    assert page.status_code == 200 and "Idle" in page.content.decode()
    idle = Attack.objects.get(name="Idle")
    idle_run = AttackRun.objects.get(attack=idle)
    assert run_attack(idle_run.pk) == "finished"
    idle_run.refresh_from_db()
    assert idle_run.robust["Linf-0.3"]["value"] >= found["value"]
    lowest = lowest_found([public.pk], attacked_track.suite_version)[public.pk]["Linf-0.3"]
    assert lowest.value == found["value"] and lowest.attack_name == "FGSM"

    # Pages: the attack's own, and the track's attack leaderboard.
    detail = Client().get(f"/attacks/{attack.public_id}/").content.decode()
    # Shown rounded to what the interval on 12 points justifies (an attack's exact count is a channel it controls).
    shown = released(found)
    assert "LeNet-5 public" in detail and f"{100 * shown['value']:.1f}%" in detail
    assert f"{100 * round_released('robust_accuracy', suite_value, *suite_interval)[0]:.1f}%" in detail
    api_row = APIClient().get(f"/api/v1/attacks/{attack.public_id}/").json()["runs"][0]["robust"]["Linf-0.3"]
    assert api_row["value"] == shown["value"]
    board = Client().get(f"/tracks/{attacked_track.slug}/attacks/").content.decode()
    assert board.index("FGSM") < board.index("Idle") or found["value"] >= suite_value

    # Where an attack beats the suite, the leaderboard shows the attack's lower number and names it. The suite
    # breaks every point at Linf 0.3 here too, so its stored number is raised as if it had missed them all.
    Result.objects.filter(submission=public, metric="robust_accuracy@Linf-0.3").update(value=1.0, ci_low=0.73,
                                                                                       ci_high=1.0)
    from leaderboards.queries import build

    board = build(attacked_track)
    key = next(c.key for c in board.columns if c.metric == "robust_accuracy@Linf-0.3")
    cell = next(r for r in board.rows if r.submission.pk == public.pk).scores[key]
    assert cell.value == found["value"] < 1.0 and cell.found_by == "FGSM"
    html = Client().get(f"/tracks/{attacked_track.slug}/").content.decode()
    assert "lowest found by FGSM" in html
    model_page = Client().get(public.get_absolute_url()).content.decode()
    assert "submitted attack <a" in model_page and "Idle" in model_page
    assert "Lowest found (leaderboard)" in model_page and "</strong> by <a" in model_page
    # Withdrawn, the attack no longer lowers anything.
    from adversaries.services import withdraw_attack

    withdraw_attack(attack)
    assert build(attacked_track).rows[0].scores[key].value == 1.0
    assert "lowest found by FGSM" not in Client().get(f"/tracks/{attacked_track.slug}/").content.decode()
    attack.refresh_from_db()
    Attack.objects.filter(pk=attack.pk).update(state=Attack.State.ACTIVE)

    # A model that finishes later faces every active attack; a private one faces none.
    late = _model(researcher, attacked_track, _copy(lenet5_safetensors, "late", tmp_path), "LeNet-5 late")
    sent.clear()
    assert evaluate_submission(late.pk) == "finished"
    assert sorted(AttackRun.objects.filter(submission=late).values_list("attack__name", flat=True)) == ["FGSM", "Idle"]
    assert len(sent) == 2
    hidden = _model(other_user, attacked_track, _copy(lenet5_safetensors, "private", tmp_path), "LeNet-5 private",
                    public=False)
    assert evaluate_submission(hidden.pk) == "finished"
    assert not AttackRun.objects.filter(submission=hidden).exists()
    # Made public by its owner, it faces them too.
    sent.clear()
    owner = Client()
    owner.force_login(other_user)
    owner.post(f"/submissions/{hidden.public_id}/visibility/", {"public": "1"})
    assert sorted(AttackRun.objects.filter(submission=hidden).values_list("attack__name", flat=True)) == [
        "FGSM", "Idle"]
    assert len(sent) == 2


@pytest.mark.slow
def test_a_hostile_attack_fails_its_run_with_the_platforms_sentence(attacked_track, researcher, other_user,
                                                                      lenet5_safetensors, sent):
    public = _model(researcher, attacked_track, lenet5_safetensors, "LeNet-5")
    assert evaluate_submission(public.pk) == "finished"
    api = APIClient()
    api.force_authenticate(other_user)
    cheat = b"def attack(model, x, y, threat, budget, generator):\n    print('labels', y.tolist())\n" \
            b"    return (x + 0.9).clamp(0, 1)\n"
    response = api.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "Cheat",
                                             "source": SimpleUploadedFile("cheat.py", cheat)}, format="multipart")
    assert response.status_code == 201
    run = AttackRun.objects.get(attack__name="Cheat")
    assert run_attack(run.pk) == "failed"
    run.refresh_from_db()
    assert run.failure_code == "out_of_ball" and run.robust == {}
    assert "labels" not in run.failure_reason
    assert lowest_found([public.pk], attacked_track.suite_version) == {}
    # A stored source that no longer matches its sha256 never runs: a platform fault, not the attack's.
    replaced = api.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "Replaced",
                                             "source": SimpleUploadedFile("r.py", IDLE)}, format="multipart")
    attack = Attack.objects.get(public_id=replaced.json()["id"])
    Path(attack.source.path).write_bytes(cheat)
    swapped = AttackRun.objects.get(attack=attack)
    assert run_attack(swapped.pk) == "failed"
    swapped.refresh_from_db()
    assert swapped.failure_code == "internal" and "sha256" in swapped.failure_reason
    owner_view = Client()
    owner_view.force_login(other_user)
    assert "outside the threat model" in owner_view.get(f"/attacks/{run.attack.public_id}/").content.decode()
    assert "The attack run failed." in Client().get(f"/attacks/{run.attack.public_id}/").content.decode()


@pytest.mark.parametrize(("source", "reason"), [
    (b"", "empty"),
    (b"\xff\xfe", "UTF-8"),
    (b"def attack(:\n", "not valid Python"),
    (b"def other(model):\n    return 1\n", "defines no top-level function attack"),
    (b"def attack(model, x):\n    return x\n", "six arguments"),
    (b"x = 1\n" * 60000, "at most"),
])
def test_the_upload_check_refuses_what_cannot_be_an_attack_without_running_it(settings, source, reason):
    with pytest.raises(AttackRefused, match=reason):
        check_source(source)


def test_attacks_are_limited_per_day_and_only_on_attackable_tracks(attacked_track, other_user, sent, settings):
    settings.ARENA_ATTACK_DAILY_LIMIT = 1
    api = APIClient()
    api.force_authenticate(other_user)
    first = api.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "a",
                                          "source": SimpleUploadedFile("a.py", IDLE)}, format="multipart")
    assert first.status_code == 201
    second = api.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "b",
                                           "source": SimpleUploadedFile("b.py", IDLE + b"\n# another\n")},
                      format="multipart")
    assert second.status_code == 400 and "today's 1 attacks" in second.json()["detail"]
    # The total limit counts every attack ever submitted, withdrawn ones too.
    settings.ARENA_ATTACK_DAILY_LIMIT, settings.ARENA_ATTACK_TOTAL_LIMIT = 5, 1
    Attack.objects.filter(owner=other_user).update(state=Attack.State.WITHDRAWN)
    total = api.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "b",
                                          "source": SimpleUploadedFile("b.py", IDLE + b"\n# another\n")},
                     format="multipart")
    assert total.status_code == 400 and "the most one account may submit" in total.json()["detail"]
    settings.ARENA_ATTACK_DAILY_LIMIT, settings.ARENA_ATTACK_TOTAL_LIMIT = 1, 30
    assert APIClient().post("/api/v1/attacks/", {}, format="multipart").status_code == 401
    huge = api.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "huge",
                                         "source": SimpleUploadedFile("h.py", b"#" * (5 * 2**20))}, format="multipart")
    assert huge.status_code == 400 and "at most" in huge.json()["detail"]
    attacked_track.threat_models = []
    attacked_track.save()
    refused = api.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "c",
                                            "source": SimpleUploadedFile("c.py", IDLE + b"\n# third\n")},
                       format="multipart")
    assert refused.status_code == 400 and "does not take attack submissions" in refused.json()["detail"]


@pytest.mark.slow
def test_a_real_worker_evaluates_the_model_then_runs_the_uploaded_attack(
        celery_worker, attacked_track, researcher, other_user, lenet5_safetensors, settings, wait_terminal):
    """The whole way with a real Celery worker: a model through the API, then an attack through the API, run from
    the attack queue, recorded, lowering nothing it did not beat."""
    settings.ARENA_ATTACK_QUEUE = f"{celery_worker.queue}-attacks"
    celery_worker("worker", [celery_worker.queue, settings.ARENA_ATTACK_QUEUE],
                  env={"ARENA_ATTACK_QUEUE": settings.ARENA_ATTACK_QUEUE})
    owner = APIClient()
    owner.force_authenticate(researcher)
    with lenet5_safetensors.open("rb") as handle:
        created = owner.post("/api/v1/submissions/", {"track": attacked_track.slug, "name": "LeNet-5",
                                                     "artifact": handle, "zoo_architecture": "mnist_lenet5"},
                             format="multipart")
    assert created.status_code == 201
    model = wait_terminal(created.json()["id"])
    assert model.state == "finished", model.failure_reason

    attacker = APIClient()
    attacker.force_authenticate(other_user)
    response = attacker.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "FGSM",
                                                  "source": SimpleUploadedFile("fgsm.py", FGSM)}, format="multipart")
    assert response.status_code == 201
    deadline = time.monotonic() + 240
    run = AttackRun.objects.get(attack__public_id=response.json()["id"])
    while run.state not in (AttackRun.State.FINISHED, AttackRun.State.FAILED) and time.monotonic() < deadline:
        time.sleep(0.5)
        run.refresh_from_db()
    assert run.state == AttackRun.State.FINISHED, (run.state, run.failure_reason)
    assert run.robust["Linf-0.3"]["num_examples"] == 12 and run.provenance["sandbox"] == "bubblewrap"
    listed = attacker.get(f"/api/v1/attacks/{response.json()['id']}/").json()
    assert listed["runs"][0]["state"] == "finished" and listed["runs"][0]["model_name"] == "LeNet-5"


def _zip(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.slow
def test_an_attack_package_is_checked_at_upload_and_runs_from_its_folder(
        attacked_track, researcher, other_user, lenet5_safetensors, sent):
    public = _model(researcher, attacked_track, lenet5_safetensors, "LeNet-5")
    assert evaluate_submission(public.pk) == "finished"
    entry = b"from steps import fgsm\n\ndef attack(model, x, y, threat, budget, generator):\n" \
            b"    return fgsm(model, x, y, threat.eps)\n"
    steps = b"import torch.nn.functional as F\n\ndef fgsm(model, x, y, eps):\n" \
            b"    x_adv = x.clone().requires_grad_(True)\n    F.cross_entropy(model(x_adv), y).backward()\n" \
            b"    return (x + eps * x_adv.grad.sign()).clamp(0, 1)\n"
    api = APIClient()
    api.force_authenticate(other_user)
    # Wrapped in one top folder, as zipping a folder makes it.
    package = _zip({"fgsm/attack.py": entry, "fgsm/steps.py": steps})
    response = api.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "FGSM package",
                                             "source": SimpleUploadedFile("fgsm.zip", package)}, format="multipart")
    assert response.status_code == 201, response.content
    attack = Attack.objects.get(public_id=response.json()["id"])
    assert attack.source.name.endswith(".zip")
    run = AttackRun.objects.get(attack=attack)
    assert run_attack(run.pk) == "finished"
    run.refresh_from_db()
    assert run.robust["Linf-0.3"]["value"] < 0.2

    for members, reason in [
        ({"steps.py": steps}, "no attack.py at the top"),
        ({"attack.py": entry, "../escape.py": steps}, "attack package was refused"),
        ({"attack.py": b"def attack(:\n"}, "not valid Python"),
    ]:
        refused = api.post("/api/v1/attacks/", {"track": attacked_track.slug, "name": "bad",
                                                "source": SimpleUploadedFile("bad.zip", _zip(members))},
                           format="multipart")
        assert refused.status_code == 400 and reason in refused.json()["detail"], (members.keys(), refused.json())


def test_models_whose_scores_the_ladder_withholds_are_not_attacked(attacked_track, researcher, other_user, sent):
    """An attack's number on a model is that model's robust accuracy, shown to everyone: never on a withheld one."""
    from adversaries.scheduling import schedule_attack

    shown = Submission.objects.create(track=attacked_track, owner=researcher, name="shown", artifact_format="pt2",
                                      artifact="artifacts/a.pt2", artifact_sha256="a" * 64, state="finished")
    Submission.objects.create(track=attacked_track, owner=researcher, name="withheld", artifact_format="pt2",
                              artifact="artifacts/b.pt2", artifact_sha256="b" * 64, state="finished", released=False)
    attack = Attack.objects.create(owner=other_user, track=attacked_track, name="a", source="attacks/a.py",
                                   source_sha256="c" * 64, passes_per_point=10)
    assert [run.submission for run in schedule_attack(attack)] == [shown]
