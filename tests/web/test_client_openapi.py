"""The OpenAPI schema the client is written against, and the API docs served without a CDN."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

pytestmark = pytest.mark.django_db


def test_schema_documents_uploads_quota_and_leaderboards():
    schema = Client().get("/api/schema/", {"format": "json"}).json()
    paths = schema["paths"]
    create = paths["/api/v1/submissions/"]["post"]
    assert {"201", "400", "429"} <= set(create["responses"])
    assert "multipart/form-data" in create["requestBody"]["content"]
    assert "/api/v1/quota/" in paths
    params = {p["name"] for p in paths["/api/v1/tracks/{slug}/leaderboard/"]["get"]["parameters"]}
    assert {"view", "sort", "order", "model_type", "extra_data", "verified"} <= params
    submission = schema["components"]["schemas"]["Submission"]["properties"]
    assert {"status_url", "queue_position", "progress", "progress_stage", "results"} <= set(submission)


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_api_docs_load_their_assets_locally(url):
    html = Client().get(url).content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
    assert assets and all(a.startswith("/static/drf_spectacular_sidecar/") for a in assets), assets
    assert "cdn" not in html.lower() and "jsdelivr" not in html
    for asset in assets:
        assert finders.find(asset.removeprefix("/static/")), asset
