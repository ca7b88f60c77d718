"""The content security policy in a real browser: Swagger UI and Redoc still render the API docs,
and a model page still follows its evaluation with the polling script moved out of the page, with
no CSP violation reported. (The leaderboard's plots are checked in test_browser_leaderboard.)"""

from __future__ import annotations

import os

import pytest
from django.core.files.base import ContentFile
from django.test import Client

from submissions.models import Submission
from tests.web.test_browser import CHROMIUM
from tests.web.test_browser_leaderboard import chromium  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
]


def _watch(page) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)
    return problems


def test_api_docs_render_under_the_policy(live_server, chromium):  # noqa: F811
    page = chromium.new_page()
    problems = _watch(page)
    page.goto(f"{live_server.url}/api/docs/")
    page.wait_for_selector(".swagger-ui .info .title:has-text('Robustness Arena API')", timeout=30_000)
    page.wait_for_selector(".opblock-summary-path:has-text('/api/v1/submissions/')", timeout=30_000)
    page.goto(f"{live_server.url}/api/redoc/")
    page.wait_for_selector("h1:has-text('Robustness Arena API')", timeout=30_000)
    page.wait_for_selector("text=/api/v1/tracks/{slug}/leaderboard/", state="attached", timeout=30_000)
    # Redoc's "API docs by Redocly" footer fetches its logo from Redocly's CDN: blocked on purpose
    # (the docs are served offline), and nothing else may be.
    assert [p for p in problems if "https://cdn.redoc.ly/" not in p] == [], problems
    page.close()


def test_model_page_follows_the_evaluation_with_its_script_file(live_server, digits_track, researcher,
                                                                 chromium):  # noqa: F811
    submission = Submission(track=digits_track, owner=researcher, name="Polled", artifact_format="pt2",
                            artifact_sha256="2" * 64)
    submission.artifact.save("x", ContentFile(b"PK"), save=False)
    submission.save()
    Submission.objects.filter(pk=submission.pk).update(state="running", progress=0.25, progress_stage="clean set")
    client = Client()
    client.force_login(researcher)
    context = chromium.new_context()
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
    page = context.new_page()
    problems = _watch(page)
    page.goto(live_server.url + submission.get_absolute_url())
    page.wait_for_selector("#state:text('Running')")
    Submission.objects.filter(pk=submission.pk).update(progress=0.5, progress_stage="corruptions")
    page.wait_for_selector("#stage:text('corruptions')", timeout=15_000)  # status.js polled the status URL
    assert page.evaluate("document.getElementById('progress').value") == 0.5
    assert not problems, problems
    context.close()
