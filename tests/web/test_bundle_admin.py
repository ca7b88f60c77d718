"""Importing a benchmark bundle from the admin: upload, dry-run report, confirm (bundles/admin.py).

The client tests cover the flow and its refusals (a bad bundle, forged or foreign tokens, users
without the right), that the upload goes to disk and never to memory, and the size limits; the
browser test does the whole thing the way an operator would, in headless Chromium.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.http import HttpResponse
from django.test import Client, RequestFactory

import bundles.admin as bundle_admin
from benchmarks.models import Track
from bundles.models import BundleImport
from submissions.uploads import UploadSizeLimitMiddleware
from tests.web.bundle_factory import manifest, write_bundle
from tests.web.test_browser import ARTIFACTS, CHROMIUM
from tests.web.test_browser_leaderboard import chromium  # noqa: F401  (fixture)

URL = "/admin/bundles/bundleimport/import/"


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("op", password="op-long-password-1", is_staff=True,
                                                 is_superuser=True)


@pytest.fixture
def staff_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def _zip(folder: Path) -> Path:
    """The bundle folder zipped the way an author would (members at the archive's root)."""
    return Path(shutil.make_archive(str(folder), "zip", root_dir=folder))


@pytest.fixture
def good_zip(arena_dirs) -> Path:
    return _zip(write_bundle(arena_dirs / "bundle"))


def _uploads(arena_dirs: Path) -> list[Path]:
    folder = arena_dirs / "data" / bundle_admin.UPLOADS
    return sorted(folder.iterdir()) if folder.exists() else []


def _upload(client: Client, archive: Path):
    with archive.open("rb") as handle:
        return client.post(URL, {"bundle": handle})


def _token(response) -> str:
    match = re.search(r'name="token" value="([0-9a-f]{32})"', response.content.decode())
    assert match, response.content.decode()
    return match.group(1)


@pytest.mark.django_db
def test_upload_shows_the_dry_run_and_confirm_imports(staff_client, good_zip, arena_dirs):
    response = _upload(staff_client, good_zip)
    assert response.status_code == 200
    html = response.content.decode()
    assert "passed every check" in html and "Confirm import" in html
    assert "track toy-digits: new track, suite version toy-1" in html
    assert "public part toy-public: 30 images" in html
    # Checked, not registered: no track, no import record; the zip waits privately.
    assert not Track.objects.filter(slug="toy-digits").exists() and not BundleImport.objects.exists()
    token = _token(response)
    (stored,) = _uploads(arena_dirs)
    assert stored.name == f"{token}.zip" and stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stored.read_bytes() == good_zip.read_bytes()

    response = staff_client.post(URL, {"token": token, "action": "Confirm import"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Benchmark toy imported: 1 track(s) registered." in html
    assert "track toy-digits: new track, suite version toy-1" in html and 'href="/tracks/toy-digits/"' in html
    track = Track.objects.get(slug="toy-digits")
    assert set(track.evaluation_sets.values_list("name", flat=True)) == {"toy-hidden", "toy-shift"}
    assert BundleImport.objects.get(track=track).imported_by == "op"
    assert _uploads(arena_dirs) == []
    # The token is spent: confirming again imports nothing twice.
    again = staff_client.post(URL, {"token": token, "action": "Confirm import"})
    assert again.status_code == 400 and "unknown or was already used" in again.content.decode()
    assert BundleImport.objects.count() == 1


@pytest.mark.django_db
def test_a_refused_bundle_lists_its_problems_and_keeps_nothing(staff_client, arena_dirs):
    spec = manifest()
    spec["tracks"][0]["evaluation_sets"][0]["split"]["data"]["path"] = "missing.npz"
    response = _upload(staff_client, _zip(write_bundle(arena_dirs / "bad", spec)))
    assert response.status_code == 200
    html = response.content.decode()
    problems = re.search(r'<ul class="errorlist" id="bundle-problems">(.*?)</ul>', html, re.S)
    assert problems, html
    items = [re.sub(r"<[^>]+>", "", item) for item in re.findall(r"<li>(.*?)</li>", problems.group(1), re.S)]
    assert items == ["tracks[0].evaluation_sets[0].split.data: missing.npz is missing"]
    assert "nothing was registered" in html and "Confirm import" not in html
    assert not Track.objects.exists() and not BundleImport.objects.exists()
    assert _uploads(arena_dirs) == []


@pytest.mark.django_db
def test_a_file_that_is_not_a_zip_is_refused(staff_client, arena_dirs):
    fake = arena_dirs / "bundle.zip"
    fake.write_bytes(b"not a zip at all")
    html = _upload(staff_client, fake).content.decode()
    assert "is not a zip archive" in html
    assert _uploads(arena_dirs) == [] and not BundleImport.objects.exists()


@pytest.mark.django_db
def test_cancel_discards_the_upload(staff_client, good_zip, arena_dirs):
    token = _token(_upload(staff_client, good_zip))
    response = staff_client.post(URL, {"token": token, "action": "cancel"})
    assert response.status_code == 200 and "discarded" in response.content.decode()
    assert _uploads(arena_dirs) == [] and not Track.objects.exists()


@pytest.mark.django_db
def test_forged_and_foreign_tokens_are_refused(staff_client, staff, good_zip, arena_dirs, django_user_model):
    # A valid bundle sitting where a traversing token would lead, and one under a token never issued.
    (arena_dirs / "x.zip").write_bytes(good_zip.read_bytes())
    uploads = arena_dirs / "data" / bundle_admin.UPLOADS
    uploads.mkdir(parents=True)
    unknown = "0123456789abcdef" * 2
    (uploads / f"{unknown}.zip").write_bytes(good_zip.read_bytes())
    for token in ("../../x", "../x", "/etc/passwd", unknown, unknown.upper(), unknown + ".zip", ""):
        response = staff_client.post(URL, {"token": token, "action": "Confirm import"})
        assert response.status_code == 400, token
        assert "unknown or was already used" in response.content.decode()
    # A real token, but issued to another session: refused too.
    token = _token(_upload(staff_client, good_zip))
    other = django_user_model.objects.create_user("op2", password="op-long-password-2", is_staff=True,
                                                  is_superuser=True)
    other_client = Client()
    other_client.force_login(other)
    assert other_client.post(URL, {"token": token, "action": "Confirm import"}).status_code == 400
    assert not Track.objects.exists() and not BundleImport.objects.exists()
    assert (arena_dirs / "x.zip").exists() and (uploads / f"{unknown}.zip").exists()
    assert (uploads / f"{token}.zip").exists()  # still the uploader's to confirm


@pytest.mark.django_db
def test_only_staff_who_may_import_reach_the_page(researcher, django_user_model, good_zip, arena_dirs):
    anonymous = Client()
    response = anonymous.get(URL)
    assert response.status_code == 302 and response.url.startswith("/admin/login/")
    researcher_client = Client()
    researcher_client.force_login(researcher)
    response = researcher_client.get(URL)
    assert response.status_code == 302 and response.url.startswith("/admin/login/")
    with good_zip.open("rb") as handle:
        response = researcher_client.post(URL, {"bundle": handle})
    assert response.status_code == 302 and _uploads(arena_dirs) == []
    # Staff without the add permission on imports: forbidden; with it: allowed.
    clerk = django_user_model.objects.create_user("clerk", password="clerk-long-password-1", is_staff=True)
    clerk_client = Client()
    clerk_client.force_login(clerk)
    assert clerk_client.get(URL).status_code == 403
    assert "Import a benchmark bundle" not in clerk_client.get("/admin/").content.decode()
    clerk.user_permissions.add(Permission.objects.get(codename="add_bundleimport"),
                               Permission.objects.get(codename="view_bundleimport"))
    clerk_client.force_login(django_user_model.objects.get(pk=clerk.pk))
    assert clerk_client.get(URL).status_code == 200
    assert "Import a benchmark bundle" in clerk_client.get("/admin/bundles/bundleimport/").content.decode()


@pytest.mark.django_db
def test_the_import_record_is_read_only(staff_client, good_zip):
    staff_client.post(URL, {"token": _token(_upload(staff_client, good_zip)), "action": "Confirm import"})
    row = BundleImport.objects.get()
    listing = staff_client.get("/admin/bundles/bundleimport/").content.decode()
    assert "toy-1" in listing and row.digest[:12] in listing and row.digest not in listing
    assert f'href="{URL}"' in listing and "/admin/bundles/bundleimport/add/" not in listing
    assert staff_client.get("/admin/bundles/bundleimport/add/").status_code == 403
    assert staff_client.post(f"/admin/bundles/bundleimport/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert staff_client.post(f"/admin/bundles/bundleimport/{row.pk}/change/", {"imported_by": "x"}).status_code == 403
    row.refresh_from_db()
    assert row.imported_by == "op"


@pytest.mark.django_db
def test_the_upload_is_streamed_to_disk_whatever_the_handlers_setting(staff_client, good_zip, settings,
                                                                      monkeypatch):
    # Settings that would keep any file in memory: the page must replace them before reading the body.
    settings.FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.MemoryFileUploadHandler",
                                     "django.core.files.uploadhandler.TemporaryFileUploadHandler"]
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1 << 40
    received = []
    store = bundle_admin.store_upload

    def spy(upload):
        received.append((type(upload), upload.temporary_file_path()))
        return store(upload)

    monkeypatch.setattr(bundle_admin, "store_upload", spy)
    assert "Confirm import" in _upload(staff_client, good_zip).content.decode()
    ((kind, temporary),) = received
    assert kind is TemporaryUploadedFile and not os.path.exists(temporary)  # removed after the request
    request = RequestFactory().post(URL)
    assert [type(h).__name__ for h in bundle_admin.bundle_upload_handlers(request)] == [
        "BundleSizeLimitHandler", "TemporaryFileUploadHandler"]


@pytest.mark.django_db
def test_a_bundle_over_the_limit_is_refused_before_it_is_stored(staff_client, good_zip, settings, arena_dirs):
    settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES = good_zip.stat().st_size - 1
    response = _upload(staff_client, good_zip)
    html = response.content.decode()
    assert response.status_code == 200 and "The bundle is larger than the limit of" in html
    assert "This field is required" not in html
    assert "Confirm import" not in html and _uploads(arena_dirs) == [] and not BundleImport.objects.exists()


def test_request_size_limits_give_the_import_page_the_bundle_limit(settings):
    """The middleware answers 413 from Content-Length: model-sized elsewhere, bundle-sized on the import page."""
    settings.ARENA_MAX_UPLOAD_BYTES = 1024**2
    settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES = 4 * 1024**3
    middleware = UploadSizeLimitMiddleware(lambda request: HttpResponse("through"))
    factory = RequestFactory()

    def status(path: str, length: int) -> int:
        return middleware(factory.post(path, CONTENT_LENGTH=str(length), content_type="application/zip")).status_code

    assert status(URL, 3 * 1024**3) == 200
    assert status(URL, 5 * 1024**3) == 413
    assert status("/submissions/new/", 3 * 1024**3) == 413
    assert status("/api/v1/submissions/", 3 * 1024**3) == 413


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
def test_staff_import_a_bundle_in_the_browser(live_server, staff, good_zip, chromium):  # noqa: F811
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)

    page.goto(f"{live_server.url}/admin/")
    page.get_by_label("Username").fill("op")
    page.get_by_label("Password").fill("op-long-password-1")
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{live_server.url}/admin/bundles/bundleimport/")
    page.get_by_role("link", name="Import a benchmark bundle").click()
    page.wait_for_url(re.compile(r".*/admin/bundles/bundleimport/import/$"))
    page.get_by_label("Bundle (.zip)").set_input_files(str(good_zip))
    page.get_by_role("button", name="Upload and check").click()
    page.wait_for_selector("#dry-run-report", timeout=60_000)
    assert "track toy-digits: new track, suite version toy-1" in page.locator("#dry-run-report").inner_text()
    assert not Track.objects.filter(slug="toy-digits").exists()
    page.screenshot(path=str(ARTIFACTS / "admin-bundle-dry-run.png"), full_page=True)

    page.get_by_role("button", name="Confirm import").click()
    page.wait_for_selector("#import-report", timeout=60_000)
    assert "Benchmark toy imported: 1 track(s) registered." in page.locator("ul.messagelist").inner_text()
    assert BundleImport.objects.get(track__slug="toy-digits").imported_by == "op"
    page.screenshot(path=str(ARTIFACTS / "admin-bundle-imported.png"), full_page=True)

    page.get_by_role("link", name="toy-digits").click()
    page.wait_for_url(re.compile(r".*/tracks/toy-digits/$"))
    assert page.locator("#set-toy-hidden").inner_text().startswith("toy-hidden")
    assert page.locator("#set-toy-shift").inner_text().startswith("toy-shift")
    assert not errors, errors
    page.close()
