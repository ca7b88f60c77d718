"""The leaderboard and a model page in headless Chromium: plotly draws the effective-robustness
plot with its baseline line from the locally served bundle, a click on a point opens that model,
the filters and the keyboard-operable sort change the rows. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import re

import pytest
from django.test import Client

from tests.web.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS
from tests.web.test_leaderboards_helpers import THREAT, populate

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
]


@pytest.fixture
def chromium():
    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # the sync API runs a loop; the test still uses the ORM
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def _rows(page) -> list[str]:
    return page.locator("table.leaderboard tbody td.model > a").all_inner_texts()


def test_leaderboard_plots_filters_and_model_page(live_server, digits_track, researcher, other_user, chromium):
    models = populate(digits_track, researcher, other_user)
    django_client = Client()
    django_client.force_login(researcher)
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": "sessionid", "value": django_client.cookies["sessionid"].value,
                          "url": live_server.url}])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # The Content-Security-Policy (script-src 'self') must not block anything these pages need.
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)

    page.goto(f"{live_server.url}/tracks/digits/?view=shift:usps")
    page.wait_for_selector("#er-plot[data-ready='1']", timeout=30_000)
    traces = page.evaluate("""() => document.getElementById('er-plot')._fullData.map(
        t => ({name: t.name, n: t.x ? t.x.length : 0}))""")
    by_name = {t["name"]: t["n"] for t in traces}
    assert by_name["Baseline fit (6 models)"] == 80 and "95% bootstrap band" in by_name
    assert by_name["Standard training (baselines)"] == 6 and by_name["Your models"] == 2
    assert page.locator("#er-plot .scatterlayer .trace").count() == len(traces)  # drawn, not only data
    page.screenshot(path=str(ARTIFACTS / "leaderboard-plots.png"), full_page=True)

    # A real click on the robust model's marker opens its page.
    page.locator("#er-plot").scroll_into_view_if_needed()
    target = page.evaluate("""() => {
        const gd = document.getElementById('er-plot');
        const t = gd._fullData.find(t => t.name === 'Robust training');
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
        return {x: box.left + xa._offset + xa.l2p(t.x[0]), y: box.top + ya._offset + ya.l2p(t.y[0])};
    }""")
    page.mouse.move(target["x"], target["y"])
    page.mouse.click(target["x"], target["y"])
    page.wait_for_url(re.compile(rf".*/submissions/{models['Robust net'].public_id}/$"), timeout=15_000)

    page.goto(live_server.url + models["Ada's model"].get_absolute_url())
    page.wait_for_selector("#heatmap-1[data-ready='1']", timeout=30_000)
    assert page.locator("#heatmap-1 .heatmaplayer").count() == 1
    assert page.get_by_role("heading", name=f"Adversarial robustness: {THREAT}").is_visible()
    page.screenshot(path=str(ARTIFACTS / "model-page-robustness.png"), full_page=True)

    page.goto(f"{live_server.url}/tracks/digits/?view=threat:{THREAT}")
    page.wait_for_selector("#robust-plot[data-ready='1']", timeout=30_000)
    assert "after APGD-CE" in page.locator("table.leaderboard thead").inner_text()

    page.goto(f"{live_server.url}/tracks/digits/")
    assert len(_rows(page)) == 10
    page.get_by_label("Model type").select_option("robust")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r".*model_type=robust.*"))
    assert _rows(page) == ["Robust net"]
    page.get_by_label("Model type").select_option("")
    page.get_by_label("Extra training data").select_option("no")
    page.get_by_label("Verified only").check()
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r".*verified=1.*"))
    assert set(_rows(page)) == {f"Baseline {i}" for i in range(6)} | {"Robust net", "Ada's private"}

    # Sorting from the keyboard: focus a column header's link, press Enter.
    header = page.locator("th", has_text="usps accuracy")
    header.get_by_role("link").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*sort=usps%3Aaccuracy.*"))
    assert page.locator("th", has_text="usps accuracy").get_attribute("aria-sort") == "descending"
    assert "verified=1" in page.url  # the filters survive sorting

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/tracks/digits/?view=shift:mnist-imagenet-c-padded")
    page.wait_for_selector("#er-plot[data-ready='1']", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "leaderboard-mobile.png"), full_page=True)
    assert not errors, errors
    context.close()
