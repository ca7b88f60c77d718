"""Pages in a real browser: headless Chromium (Debian's package) driven by Playwright.

A researcher logs in, uploads the shared LeNet-5 through the form, watches the progress bar, and
lands on a finished model page whose accuracy also appears on the leaderboard. Screenshots are
written to test-artifacts/ for people to look at.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from leaderboards.templatetags.arena_tags import score
from submissions.models import Result, Submission

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
]


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test still talks to the ORM.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def test_login_upload_through_the_form_ends_on_a_finished_page(
    live_server, live_worker, digits_track, researcher, lenet5_safetensors, browser_page
):
    page = browser_page
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill("a-long-password-1")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Submit a model").click()
    page.get_by_label("Track").select_option(str(digits_track.pk))
    page.get_by_label("Name").fill("LeNet-5 via the browser")
    page.get_by_label("Artifact").set_input_files(str(lenet5_safetensors))
    page.get_by_label("Zoo architecture (safetensors only)").fill("mnist_lenet5")
    page.get_by_role("button", name="Upload and evaluate").click()

    assert re.search(r"/submissions/[0-9a-f-]{36}/$", page.url)
    page.wait_for_selector("#state:text('Finished')", timeout=240_000)
    page.screenshot(path=str(ARTIFACTS / "model-page.png"), full_page=True)
    submission = Submission.objects.get(name="LeNet-5 via the browser")
    stored = Result.objects.get(submission=submission, metric="accuracy")
    shown = score(stored).split("<")[0]  # as released: the digits its interval justifies
    assert shown in page.content()

    page.get_by_role("link", name=digits_track.name).first.click()
    page.wait_for_selector("table.leaderboard")
    page.screenshot(path=str(ARTIFACTS / "leaderboard.png"), full_page=True)
    row = page.locator("table.leaderboard tbody tr", has_text="LeNet-5 via the browser")
    assert shown in row.inner_text()
