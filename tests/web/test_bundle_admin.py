"""Importing a benchmark bundle from the admin: the page stores the zip, workers check and import it.

bundles/admin.py stores the upload in the media storage and queues ``bundles.check``; the upload's page
shows the dry run's report and queues ``bundles.import`` on "Confirm import" (bundles/tasks.py).

Most client tests run the tasks inline: Celery's eager mode, with the on-commit sends executed
(``inline``), so each request's tasks run in the test process right after it. One test records the
sends instead and shows that the web request itself writes nothing under ``ARENA_DATA_DIR``. The
tasks' own edges (claims, redeliveries, failures) are called directly. Two tests go through a real
``celery -A arena worker`` process: a client one and the headless-Chromium one, where the page reloads
itself until the worker's report appears.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.utils import timezone

import bundles.admin as bundle_admin
import bundles.dispatch as bundle_dispatch
import bundles.tasks as bundle_tasks  # registers the tasks in this process, for the inline (eager) runs
from benchmarks.models import Track
from bundles.importer import Importer
from bundles.models import BundleImport, BundleUpload
from submissions.uploads import UploadSizeLimitMiddleware
from tests.web.bundle_factory import manifest, write_bundle
from tests.web.test_browser import ARTIFACTS, CHROMIUM
from tests.web.test_browser_leaderboard import chromium  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
URL = "/admin/bundles/bundleimport/import/"
STATUS = re.compile(r"^/admin/bundles/bundleupload/([0-9a-f]{32})/$")
REFRESH = '<meta http-equiv="refresh" content="3">'


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("op", password="op-long-password-1", is_staff=True,
                                                 is_superuser=True)


@pytest.fixture
def staff_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def clerk(django_user_model):
    """Staff who may import (the add permission on imports) without being a superuser."""
    user = django_user_model.objects.create_user("clerk", password="clerk-long-password-1", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="add_bundleimport"))
    return django_user_model.objects.get(pk=user.pk)


def _zip(folder: Path) -> Path:
    """The bundle folder zipped the way an author would (members at the archive's root)."""
    return Path(shutil.make_archive(str(folder), "zip", root_dir=folder))


@pytest.fixture
def good_zip(arena_dirs) -> Path:
    return _zip(write_bundle(arena_dirs / "bundle"))


@pytest.fixture
def inline(django_capture_on_commit_callbacks):
    """Run the tasks in place (Celery's eager mode) once each request's transaction 'commits'.

    Returns ``run(call)``: ``call()`` with its on-commit callbacks executed, which send the tasks, which run.
    """
    from arena.celery import app

    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True

    def run(call):
        with django_capture_on_commit_callbacks(execute=True):
            return call()

    yield run
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, tuple, str]]:
    """Stands in for the broker: (task name, args, queue) of each task sent; nothing runs."""
    calls: list[tuple[str, tuple, str]] = []
    monkeypatch.setattr(bundle_dispatch, "publish", lambda task, upload_id, queue: calls.append(
        (task, (upload_id,), queue)))
    return calls


def _upload(client: Client, archive: Path):
    with archive.open("rb") as handle:
        return client.post(URL, {"bundle": handle})


def _uploaded(response) -> BundleUpload:
    """The upload a successful POST redirected to."""
    assert response.status_code == 303, response.content.decode()[:2000]
    match = STATUS.match(response["Location"])
    assert match, response["Location"]
    return BundleUpload.objects.get(token=match.group(1))


def _confirm(client: Client, upload: BundleUpload, action: str = "confirm"):
    return client.post(f"/admin/bundles/bundleupload/{upload.token}/", {"action": action})


def _stored(upload: BundleUpload) -> Path:
    return Path(default_storage.path(f"bundles/{upload.token}.zip"))


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.django_db
def test_a_worker_checks_the_upload_and_confirm_imports_it(staff_client, good_zip, arena_dirs, inline):
    upload = _uploaded(inline(lambda: _upload(staff_client, good_zip)))
    # Checked, not registered: no track, no import record; the zip waits in the media storage.
    assert upload.state == "checked" and upload.uploaded_by.username == "op" and upload.name == "bundle.zip"
    assert "track toy-digits: new track, suite version toy-1" in upload.report
    assert "  public part toy-public: 30 images, sha256 " in "\n".join(upload.report)
    assert not Track.objects.filter(slug="toy-digits").exists() and not BundleImport.objects.exists()
    assert upload.archive.name == f"bundles/{upload.token}.zip" and upload.size == good_zip.stat().st_size
    assert _stored(upload).read_bytes() == good_zip.read_bytes()
    assert upload.sha256 == hashlib.sha256(good_zip.read_bytes()).hexdigest()

    page = staff_client.get(f"/admin/bundles/bundleupload/{upload.token}/")
    html = page.content.decode()
    assert page.status_code == 200 and "passed every check" in html and "Confirm import" in html
    assert "track toy-digits: new track, suite version toy-1" in html and REFRESH not in html

    response = inline(lambda: _confirm(staff_client, upload))
    assert response.status_code == 303 and response["Location"] == f"/admin/bundles/bundleupload/{upload.token}/"
    upload.refresh_from_db()
    assert upload.state == "imported" and upload.confirmed_by.username == "op"
    assert upload.tracks == ["toy-digits"] and upload.benchmark == "toy"
    track = Track.objects.get(slug="toy-digits")
    assert set(track.evaluation_sets.values_list("name", flat=True)) == {"toy-hidden", "toy-shift"}
    assert BundleImport.objects.get(track=track).imported_by == "op"
    # Imported: the zip is deleted from the storage and forgotten.
    assert upload.archive.name == "" and not _stored(upload).exists()
    html = staff_client.get(f"/admin/bundles/bundleupload/{upload.token}/").content.decode()
    assert "Benchmark toy imported: 1 track(s) registered." in html and 'href="/tracks/toy-digits/"' in html
    assert "track toy-digits: new track, suite version toy-1" in html and REFRESH not in html

    # Confirming again imports nothing twice.
    again = inline(lambda: _confirm(staff_client, upload))
    assert again.status_code == 409 and "cannot be imported now: it is imported" in again.content.decode()
    assert BundleImport.objects.count() == 1


@pytest.mark.django_db
def test_a_refused_bundle_lists_its_problems_and_keeps_nothing(staff_client, arena_dirs, inline):
    spec = manifest()
    spec["tracks"][0]["evaluation_sets"][0]["split"]["data"]["path"] = "missing.npz"
    upload = _uploaded(inline(lambda: _upload(staff_client, _zip(write_bundle(arena_dirs / "bad", spec)))))
    assert upload.state == "refused"
    assert upload.problems == ["tracks[0].evaluation_sets[0].split.data: missing.npz is missing"]
    assert not Track.objects.exists() and not BundleImport.objects.exists()
    assert upload.archive.name == "" and _files_under(arena_dirs / "media" / "bundles") == []
    html = staff_client.get(f"/admin/bundles/bundleupload/{upload.token}/").content.decode()
    problems = re.search(r'<ul class="errorlist" id="bundle-problems">(.*?)</ul>', html, re.S)
    assert problems, html
    items = [re.sub(r"<[^>]+>", "", item) for item in re.findall(r"<li>(.*?)</li>", problems.group(1), re.S)]
    assert items == ["tracks[0].evaluation_sets[0].split.data: missing.npz is missing"]
    assert "Nothing was registered" in html and "Confirm import" not in html and REFRESH not in html
    # A refused upload cannot be confirmed.
    assert inline(lambda: _confirm(staff_client, upload)).status_code == 409
    assert not Track.objects.exists()


@pytest.mark.django_db
def test_a_file_that_is_not_a_zip_is_refused(staff_client, arena_dirs, inline):
    fake = arena_dirs / "bundle.zip"
    fake.write_bytes(b"not a zip at all")
    upload = _uploaded(inline(lambda: _upload(staff_client, fake)))
    assert upload.state == "refused" and upload.problems == ["bundle.zip is not a zip archive"]
    assert upload.archive.name == "" and not BundleImport.objects.exists()


@pytest.mark.django_db
def test_discard_deletes_the_upload(staff_client, good_zip, arena_dirs, inline):
    upload = _uploaded(inline(lambda: _upload(staff_client, good_zip)))
    response = inline(lambda: _confirm(staff_client, upload, "discard"))
    assert response.status_code == 303
    upload.refresh_from_db()
    assert upload.state == "discarded" and upload.archive.name == "" and not _stored(upload).exists()
    assert "discarded" in staff_client.get(response["Location"]).content.decode().lower()
    assert inline(lambda: _confirm(staff_client, upload)).status_code == 409
    assert not Track.objects.exists()


@pytest.mark.django_db
def test_the_web_request_never_touches_the_data_dir(staff_client, good_zip, arena_dirs, settings, sent,
                                                    django_capture_on_commit_callbacks):
    """The upload and the confirmation only store the zip and send a task; the worker writes ARENA_DATA_DIR."""
    data = arena_dirs / "data"
    assert not data.exists()
    with django_capture_on_commit_callbacks(execute=True):
        upload = _uploaded(_upload(staff_client, good_zip))
    # Sent once committed, on the bundle queue (not the evaluation workers'); nothing ran.
    assert settings.ARENA_BUNDLE_QUEUE == "bundles" != settings.CELERY_TASK_DEFAULT_QUEUE
    assert sent == [("bundles.check", (upload.pk,), settings.ARENA_BUNDLE_QUEUE)]
    assert upload.state == "checking" and _stored(upload).exists()
    assert not data.exists(), _files_under(data)
    html = staff_client.get(f"/admin/bundles/bundleupload/{upload.token}/").content.decode()
    assert "Checking…" in html and REFRESH in html
    assert f"Waiting for a worker of the queue <code>{settings.ARENA_BUNDLE_QUEUE}</code>" in html

    # A worker checked it (stood in for here): the confirmation, too, only sends a task.
    BundleUpload.objects.filter(pk=upload.pk).update(state="checked", started_at=timezone.now(),
                                                     report=["benchmark toy: manifest sha256 0123456789ab"])
    assert "Confirm import" in staff_client.get(f"/admin/bundles/bundleupload/{upload.token}/").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        assert _confirm(staff_client, upload).status_code == 303
    # A double click: confirmed (and sent) once.
    with django_capture_on_commit_callbacks(execute=True):
        assert _confirm(staff_client, upload).status_code == 409
    assert sent[1:] == [("bundles.import", (upload.pk,), settings.ARENA_BUNDLE_QUEUE)]
    upload.refresh_from_db()
    assert upload.state == "checked" and upload.confirmed_at is not None and not data.exists()
    html = staff_client.get(f"/admin/bundles/bundleupload/{upload.token}/").content.decode()
    assert "Import queued…" in html and REFRESH in html and "Confirm import" not in html


def test_the_web_server_never_loads_the_importer():
    """The pages send the tasks by name: a web process imports neither the tasks nor the importer (nor torch)."""
    code = ("import os, sys; sys.path[:0] = ['platform', '.']; os.environ['DJANGO_SETTINGS_MODULE'] = 'arena.settings';"
            "import django; django.setup(); import arena.urls, bundles.admin;"
            "print(*(name in sys.modules for name in ('bundles.tasks', 'bundles.importer', 'bundles.loading')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]


@pytest.mark.django_db
def test_forged_unknown_and_foreign_tokens_are_refused(staff_client, clerk, good_zip, arena_dirs, inline,
                                                       django_user_model):
    upload = _uploaded(inline(lambda: _upload(staff_client, good_zip)))
    assert upload.state == "checked"
    unknown = "0123456789abcdef" * 2
    for token in (unknown, unknown.upper(), upload.token.upper(), f"{upload.token}0", upload.token[:-1],
                  "..%2F..%2Fx", "%2Fetc%2Fpasswd"):
        for response in (staff_client.get(f"/admin/bundles/bundleupload/{token}/"),
                         inline(lambda t=token: staff_client.post(f"/admin/bundles/bundleupload/{t}/",
                                                                  {"action": "confirm"}))):
            # An unknown token is a 404; anything that is no token at all goes to the admin's own object URL,
            # which finds nothing either (a redirect to the admin's index).
            assert response.status_code in (404, 302), (token, response.status_code)
            if response.status_code == 302:
                assert not STATUS.match(response["Location"]), token
    # A real token, but another user's upload: a 404 as if it did not exist, and the upload stays as it was.
    clerk_client = Client()
    clerk_client.force_login(clerk)
    assert clerk_client.get(f"/admin/bundles/bundleupload/{upload.token}/").status_code == 404
    assert inline(lambda: _confirm(clerk_client, upload)).status_code == 404
    assert inline(lambda: _confirm(clerk_client, upload, "discard")).status_code == 404
    listing = clerk_client.get("/admin/bundles/bundleupload/").content.decode()
    assert upload.token not in listing  # nor listed
    assert clerk_client.get(f"/admin/bundles/bundleupload/{upload.pk}/change/").status_code in (302, 404)
    upload.refresh_from_db()
    assert upload.state == "checked" and upload.confirmed_at is None and _stored(upload).exists()
    assert not Track.objects.exists() and not BundleImport.objects.exists()
    # The clerk's own upload is theirs to see; a superuser sees everyone's.
    own = _uploaded(inline(lambda: _upload(clerk_client, good_zip)))
    assert clerk_client.get(f"/admin/bundles/bundleupload/{own.token}/").status_code == 200
    assert staff_client.get(f"/admin/bundles/bundleupload/{own.token}/").status_code == 200
    assert own.token in staff_client.get("/admin/bundles/bundleupload/").content.decode()


@pytest.mark.django_db
def test_only_staff_who_may_import_reach_the_pages(researcher, staff_client, django_user_model, good_zip,
                                                    arena_dirs, inline):
    upload = _uploaded(inline(lambda: _upload(staff_client, good_zip)))
    status = f"/admin/bundles/bundleupload/{upload.token}/"
    anonymous = Client()
    for url in (URL, status):
        response = anonymous.get(url)
        assert response.status_code == 302 and response.url.startswith("/admin/login/")
    researcher_client = Client()
    researcher_client.force_login(researcher)
    for url in (URL, status):
        response = researcher_client.get(url)
        assert response.status_code == 302 and response.url.startswith("/admin/login/")
    with good_zip.open("rb") as handle:
        response = inline(lambda: researcher_client.post(URL, {"bundle": handle}))
    assert response.status_code == 302 and BundleUpload.objects.count() == 1
    assert inline(lambda: researcher_client.post(status, {"action": "confirm"})).status_code == 302
    # Staff without the add permission on imports: forbidden; with it: allowed.
    clerk = django_user_model.objects.create_user("clerk", password="clerk-long-password-1", is_staff=True)
    clerk_client = Client()
    clerk_client.force_login(clerk)
    assert clerk_client.get(URL).status_code == 403
    with good_zip.open("rb") as handle:
        assert inline(lambda: clerk_client.post(URL, {"bundle": handle})).status_code == 403
    assert inline(lambda: _confirm(clerk_client, upload)).status_code == 403
    assert clerk_client.get("/admin/bundles/bundleupload/").status_code == 403
    assert "Import a benchmark bundle" not in clerk_client.get("/admin/").content.decode()
    assert BundleUpload.objects.count() == 1 and not Track.objects.exists()
    clerk.user_permissions.add(Permission.objects.get(codename="add_bundleimport"),
                               Permission.objects.get(codename="view_bundleimport"))
    clerk_client.force_login(django_user_model.objects.get(pk=clerk.pk))
    assert clerk_client.get(URL).status_code == 200
    assert clerk_client.get("/admin/bundles/bundleupload/").status_code == 200
    assert "Import a benchmark bundle" in clerk_client.get("/admin/bundles/bundleimport/").content.decode()


@pytest.mark.django_db
def test_the_import_record_and_the_uploads_are_read_only(staff_client, good_zip, inline):
    upload = _uploaded(inline(lambda: _upload(staff_client, good_zip)))
    inline(lambda: _confirm(staff_client, upload))
    row = BundleImport.objects.get()
    listing = staff_client.get("/admin/bundles/bundleimport/").content.decode()
    assert "toy-1" in listing and row.digest[:12] in listing and row.digest not in listing
    assert f'href="{URL}"' in listing and "/admin/bundles/bundleimport/add/" not in listing
    assert staff_client.get("/admin/bundles/bundleimport/add/").status_code == 403
    assert staff_client.post(f"/admin/bundles/bundleimport/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert staff_client.post(f"/admin/bundles/bundleimport/{row.pk}/change/", {"imported_by": "x"}).status_code == 403
    row.refresh_from_db()
    assert row.imported_by == "op"
    # The uploads: listed with a link to each one's page, and nobody edits them.
    uploads = staff_client.get("/admin/bundles/bundleupload/").content.decode()
    assert f'href="/admin/bundles/bundleupload/{upload.token}/"' in uploads and "imported" in uploads
    assert staff_client.get("/admin/bundles/bundleupload/add/").status_code == 403
    assert staff_client.get(f"/admin/bundles/bundleupload/{upload.pk}/change/").status_code == 200  # a view
    change = f"/admin/bundles/bundleupload/{upload.pk}/change/"
    assert staff_client.post(change, {"state": "checked"}).status_code == 403
    assert staff_client.post(f"/admin/bundles/bundleupload/{upload.pk}/delete/", {"post": "yes"}).status_code == 403
    upload.refresh_from_db()
    assert upload.state == "imported"
    # The import page lists the user's recent uploads.
    page = staff_client.get(URL).content.decode()
    assert 'id="recent-uploads"' in page and f"/admin/bundles/bundleupload/{upload.token}/" in page


@pytest.mark.django_db
def test_the_upload_is_streamed_to_disk_whatever_the_handlers_setting(staff_client, good_zip, settings, sent,
                                                                      monkeypatch):
    # Settings that would keep any file in memory: the page must replace them before reading the body.
    settings.FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.MemoryFileUploadHandler",
                                     "django.core.files.uploadhandler.TemporaryFileUploadHandler"]
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1 << 40
    received = []
    store = bundle_admin.store_archive

    def spy(upload, file):
        received.append((type(file), file.temporary_file_path()))
        return store(upload, file)

    monkeypatch.setattr(bundle_admin, "store_archive", spy)
    upload = _uploaded(_upload(staff_client, good_zip))
    ((kind, temporary),) = received
    assert kind is TemporaryUploadedFile and not os.path.exists(temporary)  # moved into the storage
    # The sha256 was taken while the bytes arrived, and is the zip's.
    assert upload.sha256 == hashlib.sha256(good_zip.read_bytes()).hexdigest()
    assert _stored(upload).read_bytes() == good_zip.read_bytes()
    request = RequestFactory().post(URL)
    assert [type(h).__name__ for h in bundle_admin.bundle_upload_handlers(request)] == [
        "BundleSizeLimitHandler", "TemporaryFileUploadHandler"]


@pytest.mark.django_db
def test_a_bundle_over_the_limit_is_refused_before_it_is_stored(staff_client, good_zip, settings, arena_dirs,
                                                                sent):
    settings.ARENA_BUNDLE_MAX_UPLOAD_BYTES = good_zip.stat().st_size - 1
    response = _upload(staff_client, good_zip)
    html = response.content.decode()
    assert response.status_code == 200 and "The bundle is larger than the limit of" in html
    assert "This field is required" not in html
    assert not BundleUpload.objects.exists() and sent == []
    assert _files_under(arena_dirs / "media") == []


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
    assert status("/admin/bundles/bundleupload/" + "0" * 32 + "/", 3 * 1024**3) == 413  # confirmations are small


# --- The tasks' edges ------------------------------------------------------------------------------

@pytest.fixture
def stored_upload(staff, good_zip, arena_dirs, sent):
    """An upload as the page leaves it (zip stored, state checking), its tasks not run."""
    client = Client()
    client.force_login(staff)
    return _uploaded(_upload(client, good_zip))


@pytest.mark.django_db
def test_import_runs_only_from_checked_and_once(stored_upload):
    upload = stored_upload
    assert bundle_tasks.import_upload(upload.pk) == "nothing to do: the upload is checking"
    assert bundle_tasks.check_upload(upload.pk) == "checked"
    assert bundle_tasks.check_upload(upload.pk) == "nothing to do: the upload is checked"  # a duplicate
    assert bundle_tasks.import_upload(upload.pk) == "imported"
    assert bundle_tasks.import_upload(upload.pk) == "nothing to do: the upload is imported"
    assert BundleImport.objects.count() == 1 and Track.objects.filter(slug="toy-digits").exists()
    assert bundle_tasks.import_upload(upload.pk + 1000) == "missing"


@pytest.mark.django_db
def test_a_redelivered_step_finds_it_interrupted_or_alive(stored_upload, monkeypatch):
    """A delivery whose step is already running watches the heartbeat: still -> failed for staff; moving -> drop."""
    upload = stored_upload
    assert bundle_tasks.check_upload(upload.pk) == "checked"
    monkeypatch.setattr(bundle_tasks, "STALE_SECONDS", 0.3)
    # The import's worker died after claiming it: the heartbeat stands still.
    BundleUpload.objects.filter(pk=upload.pk).update(state="importing", started_at=timezone.now(),
                                                     updated_at=timezone.now() - timedelta(minutes=5))
    assert bundle_tasks.import_upload(upload.pk) == "interrupted"
    upload.refresh_from_db()
    assert upload.state == "failed" and "interrupted" in upload.message and "upload it again" in upload.message
    assert upload.archive.name == "" and not _stored(upload).exists()
    assert not Track.objects.exists() and not BundleImport.objects.exists()

    # Another import still running elsewhere (its heartbeat moves): this delivery leaves it alone.
    BundleUpload.objects.filter(pk=upload.pk).update(state="importing", message="", updated_at=timezone.now())

    def beat(seconds: float) -> None:
        BundleUpload.objects.filter(pk=upload.pk).update(updated_at=timezone.now())

    monkeypatch.setattr(bundle_tasks.time, "sleep", beat)
    assert bundle_tasks.import_upload(upload.pk).startswith("duplicate")
    assert BundleUpload.objects.get(pk=upload.pk).state == "importing"
    # The same for a check cut off with its worker.
    monkeypatch.undo()
    monkeypatch.setattr(bundle_tasks, "STALE_SECONDS", 0.3)
    BundleUpload.objects.filter(pk=upload.pk).update(state="checking", updated_at=timezone.now())
    assert bundle_tasks.check_upload(upload.pk) == "interrupted"
    assert "The check was interrupted" in BundleUpload.objects.get(pk=upload.pk).message


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_stamps_the_row_and_shows_the_latest_lines(staff, monkeypatch):
    """From its own thread and connection (as on a worker): the row's updated_at moves, the log follows."""
    monkeypatch.setattr(bundle_tasks, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(bundle_tasks, "PROGRESS_LINES", 2)
    before = timezone.now() - timedelta(minutes=1)
    upload = BundleUpload.objects.create(uploaded_by=staff, state="importing", sha256="0" * 64)
    BundleUpload.objects.filter(pk=upload.pk).update(updated_at=before)
    lines = ["one"]
    with bundle_tasks._Heartbeat(upload.pk, "importing", lines):
        lines += ["two", "three"]
        deadline = time.monotonic() + 10
        while BundleUpload.objects.get(pk=upload.pk).log != ["two", "three"] and time.monotonic() < deadline:
            time.sleep(0.05)
    upload.refresh_from_db()
    assert upload.log == ["two", "three"] and upload.updated_at > before
    # Only while the step is the one it beats for: a row in another state is left alone.
    BundleUpload.objects.filter(pk=upload.pk).update(state="imported", updated_at=before, log=[])
    with bundle_tasks._Heartbeat(upload.pk, "importing", ["late"]):
        time.sleep(0.3)
    upload.refresh_from_db()
    assert upload.updated_at == before and upload.log == []


@pytest.mark.django_db
def test_failures_are_sentences_not_tracebacks(stored_upload, staff_client, monkeypatch, good_zip, settings):
    upload = stored_upload

    def broken(self, dry_run=False):
        raise RuntimeError("something deep inside broke")

    monkeypatch.setattr(Importer, "run", broken)
    assert bundle_tasks.check_upload(upload.pk) == "failed"
    upload.refresh_from_db()
    assert upload.message == ("The check failed inside the platform (RuntimeError: something deep inside broke); "
                              "the worker's log has the details. Nothing was registered.")
    assert upload.archive.name == "" and not _stored(upload).exists()
    html = staff_client.get(f"/admin/bundles/bundleupload/{upload.token}/").content.decode()
    assert "The check failed" in html and "something deep inside broke" in html and "Traceback" not in html

    def read_only(self, dry_run=False):
        raise OSError(errno.EROFS, "Read-only file system", "/srv/arena/var/data/.staging")

    monkeypatch.setattr(Importer, "run", read_only)
    again = _uploaded(_upload(staff_client, good_zip))
    assert bundle_tasks.check_upload(again.pk) == "failed"
    message = BundleUpload.objects.get(pk=again.pk).message
    assert "may not write /srv/arena/var/data/.staging (Read-only file system)" in message
    assert "ARENA_DATA_DIR writable" in message and "import_benchmark" in message
    assert f"bundle queue ({settings.ARENA_BUNDLE_QUEUE})" in message


@pytest.mark.django_db
def test_a_missing_or_changed_zip_fails_the_step(stored_upload, staff_client, good_zip):
    upload = stored_upload
    _stored(upload).write_bytes(b"PK\x03\x04 not what was uploaded")
    assert bundle_tasks.check_upload(upload.pk) == "failed"
    message = BundleUpload.objects.get(pk=upload.pk).message
    assert "does not match the sha256 taken at upload" in message and "Upload the bundle again" in message
    other = _uploaded(_upload(staff_client, good_zip))
    _stored(other).unlink()
    assert bundle_tasks.check_upload(other.pk) == "failed"
    assert "is missing" in BundleUpload.objects.get(pk=other.pk).message
    assert not BundleImport.objects.exists()


@pytest.mark.django_db
def test_an_unreachable_broker_is_said_on_the_page(staff_client, good_zip, monkeypatch,
                                                   django_capture_on_commit_callbacks):
    def down(task, upload_id, queue):
        raise ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(bundle_dispatch, "publish", down)
    with django_capture_on_commit_callbacks(execute=True):
        upload = _uploaded(_upload(staff_client, good_zip))
    upload.refresh_from_db()
    assert upload.state == "failed" and "could not be queued" in upload.message and upload.archive.name == ""
    # The import: the confirmation is undone, so that staff can confirm again.
    BundleUpload.objects.filter(pk=upload.pk).update(state="checked", message="")
    with django_capture_on_commit_callbacks(execute=True):
        assert _confirm(staff_client, upload).status_code == 303
    upload.refresh_from_db()
    assert upload.state == "checked" and upload.confirmed_at is None and "could not be queued" in upload.message
    assert "Confirm import" in staff_client.get(f"/admin/bundles/bundleupload/{upload.token}/").content.decode()


@pytest.mark.django_db
def test_a_new_upload_sweeps_old_ones(staff_client, good_zip, sent):
    forgotten = _uploaded(_upload(staff_client, good_zip))
    BundleUpload.objects.filter(pk=forgotten.pk).update(state="checked",
                                                        updated_at=timezone.now() - timedelta(hours=25))
    leftover = _uploaded(_upload(staff_client, good_zip))  # final, its zip not deleted by a read-only worker
    BundleUpload.objects.filter(pk=leftover.pk).update(state="imported")
    recent = _uploaded(_upload(staff_client, good_zip))
    BundleUpload.objects.filter(pk=recent.pk).update(state="checked")
    _uploaded(_upload(staff_client, good_zip))
    forgotten.refresh_from_db()
    leftover.refresh_from_db()
    assert forgotten.state == "discarded" and forgotten.archive.name == "" and not _stored(forgotten).exists()
    assert leftover.archive.name == "" and not _stored(leftover).exists()
    assert BundleUpload.objects.get(pk=recent.pk).state == "checked" and _stored(recent).exists()


# --- Through a real worker -------------------------------------------------------------------------

def _wait_state(upload: BundleUpload, states: set[str], timeout: float = 180.0) -> BundleUpload:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        upload.refresh_from_db()
        if upload.state in states:
            return upload
        time.sleep(0.3)
    raise AssertionError(f"upload {upload.token} still {upload.state} after {timeout} s")


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_checks_and_imports_through_the_page(staff, good_zip, arena_dirs, live_worker):
    client = Client()
    client.force_login(staff)
    upload = _uploaded(_upload(client, good_zip))
    assert not (arena_dirs / "data" / "evalsets").exists()
    upload = _wait_state(upload, {"checked", "refused", "failed"})
    assert upload.state == "checked", (upload.problems, upload.message)
    assert "track toy-digits: new track, suite version toy-1" in upload.report
    assert not Track.objects.exists()
    assert "Confirm import" in client.get(f"/admin/bundles/bundleupload/{upload.token}/").content.decode()
    assert _confirm(client, upload).status_code == 303
    upload = _wait_state(upload, {"imported", "refused", "failed"})
    assert upload.state == "imported", (upload.problems, upload.message)
    track = Track.objects.get(slug="toy-digits")
    assert BundleImport.objects.get(track=track).imported_by == "op"
    # The worker wrote the sets, and deleted the zip.
    for evaluation_set in track.evaluation_sets.all():
        assert (arena_dirs / "data" / evaluation_set.relative_path).is_file()
    assert upload.archive.name == "" and not _stored(upload).exists()
    html = client.get(f"/admin/bundles/bundleupload/{upload.token}/").content.decode()
    assert "Benchmark toy imported: 1 track(s) registered." in html and REFRESH not in html


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
def test_staff_import_a_bundle_in_the_browser(live_server, live_worker, staff, good_zip, chromium):  # noqa: F811
    """Against a real worker: the status page reloads itself until the worker's report appears."""
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
    page.wait_for_url(re.compile(r".*/admin/bundles/bundleupload/[0-9a-f]{32}/$"))
    page.locator("#dry-run-report").wait_for(timeout=180_000)  # through the page's own reloads
    assert "track toy-digits: new track, suite version toy-1" in page.locator("#dry-run-report").inner_text()
    assert page.locator('meta[http-equiv="refresh"]').count() == 0
    assert not Track.objects.filter(slug="toy-digits").exists()
    page.screenshot(path=str(ARTIFACTS / "admin-bundle-dry-run.png"), full_page=True)

    page.get_by_role("button", name="Confirm import").click()
    page.locator("#import-report").wait_for(timeout=180_000)
    assert page.locator("#import-summary").inner_text() == "Benchmark toy imported: 1 track(s) registered."
    assert BundleImport.objects.get(track__slug="toy-digits").imported_by == "op"
    page.screenshot(path=str(ARTIFACTS / "admin-bundle-imported.png"), full_page=True)

    page.get_by_role("link", name="toy-digits").click()
    page.wait_for_url(re.compile(r".*/tracks/toy-digits/$"))
    assert page.locator("#set-toy-hidden").inner_text().startswith("toy-hidden")
    assert page.locator("#set-toy-shift").inner_text().startswith("toy-shift")
    assert not errors, errors
    page.close()
