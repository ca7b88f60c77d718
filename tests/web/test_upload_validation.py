"""Malformed uploads are refused at upload, through the API and the web form, before the quota is
checked: the answer names the field and why, and no submission, no stored file and no charge remain."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import QuotaEntry
from submissions.models import Submission

pytestmark = pytest.mark.django_db


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture
def pickled(tmp_path) -> Path:
    path = tmp_path / "model.pt2"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    return path


def _cases(lenet5_safetensors: Path, lenet5_pt2: Path, pickled: Path) -> dict[str, tuple[dict[str, Any], str, str]]:
    """label -> (fields besides track and name; a path value is sent as a file), refused field, words."""
    return {
        "two artifacts": ({"artifact": [lenet5_safetensors, lenet5_pt2], "zoo_architecture": "mnist_lenet5"},
                          "artifact", "“artifact” was sent 2 times"),
        "two names": ({"artifact": lenet5_pt2, "name": ["first", "second"]}, "name", "“name” was sent 2 times"),
        "unknown architecture": ({"artifact": lenet5_safetensors, "zoo_architecture": "resnet9000"},
                                 "zoo_architecture", "no architecture called 'resnet9000'"),
        "safetensors without architecture": ({"artifact": lenet5_safetensors}, "zoo_architecture",
                                             "Safetensors weights need the zoo architecture"),
        "pt2 declared safetensors": ({"artifact": lenet5_pt2, "artifact_format": "safetensors",
                                      "zoo_architecture": "mnist_lenet5"}, "artifact_format",
                                     "is a torch.export program (.pt2), not safetensors weights as declared"),
        "safetensors declared pt2": ({"artifact": lenet5_safetensors, "artifact_format": "pt2",
                                      "zoo_architecture": "mnist_lenet5"}, "artifact_format",
                                     "is safetensors weights, not a torch.export program (.pt2) as declared"),
        "pickle": ({"artifact": pickled, "artifact_format": "pt2"}, "artifact", "Pickles execute code when loaded"),
    }


CASES = ["two artifacts", "two names", "unknown architecture", "safetensors without architecture",
         "pt2 declared safetensors", "safetensors declared pt2", "pickle"]


def _post(client: Any, url: str, base: dict[str, Any], fields: dict[str, Any], **extra: Any) -> Any:
    """Post ``base`` plus ``fields``, paths opened as files (lists give one part per item)."""
    handles = []

    def opened(value: Any) -> Any:
        if isinstance(value, list):
            return [opened(v) for v in value]
        if isinstance(value, Path):
            handles.append(value.open("rb"))
            return handles[-1]
        return value

    try:
        return client.post(url, {**base, **{k: opened(v) for k, v in fields.items()}}, **extra)
    finally:
        for handle in handles:
            handle.close()


def _assert_nothing_kept(researcher) -> None:
    assert not Submission.objects.exists()
    assert not QuotaEntry.objects.filter(user=researcher).exists()
    assert _files(Path(settings.MEDIA_ROOT)) == []


@pytest.mark.parametrize("label", CASES)
def test_api_refuses_malformed_uploads_before_charging(label, digits_track, researcher, token, lenet5_safetensors,
                                                      lenet5_pt2, pickled):
    fields, field, words = _cases(lenet5_safetensors, lenet5_pt2, pickled)[label]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    response = _post(client, "/api/v1/submissions/", {"track": "digits", "name": label}, fields, format="multipart")
    assert response.status_code == 400, (label, response.content)
    assert any(words in message for message in response.json()[field]), (label, response.json())
    _assert_nothing_kept(researcher)


@pytest.mark.parametrize("label", CASES)
def test_web_form_refuses_malformed_uploads_before_charging(label, digits_track, researcher, lenet5_safetensors,
                                                           lenet5_pt2, pickled):
    fields, _, words = _cases(lenet5_safetensors, lenet5_pt2, pickled)[label]
    client = Client()
    client.force_login(researcher)
    response = _post(client, reverse("submit"), {"track": digits_track.pk, "name": label, "is_public": "on"}, fields)
    assert response.status_code == 200, label  # the form again, with the reason
    page = response.content.decode().replace("&#x27;", "'")
    assert words in page, label
    _assert_nothing_kept(researcher)


def test_a_well_formed_upload_gets_its_format_from_the_content(digits_track, researcher, token, lenet5_pt2):
    """A .pt2 named like safetensors, format left empty: detected from its bytes, not its name."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    upload = SimpleUploadedFile("weights.safetensors", lenet5_pt2.read_bytes())
    response = client.post("/api/v1/submissions/", {"track": "digits", "name": "renamed", "artifact": upload},
                           format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["artifact_format"] == "pt2"
    assert QuotaEntry.objects.filter(user=researcher, kind="charge").count() == 1


def test_a_hostile_graph_is_refused_at_upload_in_milliseconds(digits_track, researcher, token, lenet5_pt2, tmp_path):
    """The loader's screen runs at upload too: the forged legacy archive (whose shape strings ``sympify``
    would run) and a randomised defence are refused before anything is stored or charged, and the
    forged archive's payload never runs on the web server."""
    import time

    import torch
    from torch import nn

    from tests.evaluator.pt2_archives import export_to, forge_legacy_archive

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear((x + 0.1 * torch.randn_like(x)).flatten(1))

    marker = tmp_path / "pwned"
    forged = forge_legacy_archive(lenet5_pt2, tmp_path / "forged.pt2", marker)
    noisy = export_to(tmp_path / "noisy.pt2", Noisy().eval())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    for path, words in ((forged, "older torch.export format"), (noisy, "random")):
        started = time.perf_counter()
        response = _post(client, "/api/v1/submissions/", {"track": "digits", "name": path.stem}, {"artifact": path},
                         format="multipart")
        elapsed = time.perf_counter() - started
        assert response.status_code == 400, response.content
        assert any(words in message for message in response.json()["artifact"]), response.json()
        assert elapsed < 10, elapsed
    assert not marker.exists()
    _assert_nothing_kept(researcher)
