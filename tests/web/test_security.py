"""Web security: headers and the content security policy, failed-login lockout, API throttling,
CSRF on every form and owner action (and none needed with a token), and `check --deploy` clean
under the production settings."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from benchmarks.models import Benchmark, Track
from submissions.models import Submission

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a-long-password-1"


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    """Failed logins are the subject here: hash with MD5 so that each one costs microseconds."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def ada(fast_hashing):
    return get_user_model().objects.create_user("ada-sec", password=PASSWORD)


@pytest.fixture
def bob(fast_hashing):
    return get_user_model().objects.create_user("bob-sec", password=PASSWORD)


@pytest.fixture
def queued(arena_dirs, ada) -> Submission:
    track = Track.objects.create(benchmark=Benchmark.objects.create(slug="sec", name="Sec"), slug="sec-digits",
                                 name="Digits", task_kind="classifier", input_channels=1, input_height=28,
                                 input_width=28, num_classes=10)
    submission = Submission(track=track, owner=ada, name="mine", artifact_format="pt2", artifact_sha256="0" * 64)
    submission.artifact.save("x", ContentFile(b"PK"), save=False)
    submission.save()
    return submission


# --- Headers and the content security policy ---


def test_pages_send_security_headers_and_a_strict_script_policy():
    response = Client().get("/")
    assert response.status_code == 200
    policy = dict(part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["object-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert policy["base-uri"] == "'self'" and policy["form-action"] == "'self'"
    assert "'unsafe-inline'" in policy["style-src"]  # plotly.js and the API docs style elements at run time
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"


def test_api_docs_load_their_start_up_code_as_a_script_file():
    html = Client().get("/api/docs/").content.decode()
    assert '<script src="/api/docs/?script="' in html
    script = Client().get("/api/docs/", {"script": ""})
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in script.content.decode()
    assert "fonts.googleapis.com" not in Client().get("/api/redoc/").content.decode()


def test_pages_showing_a_token_are_never_stored_by_a_cache(ada):
    """The token page and the token endpoint answer with a credential: no browser or proxy may keep it."""
    client = Client()
    client.force_login(ada)

    def shown(response) -> bool:
        return Token.objects.get(user=ada).key in response.content.decode()

    answers = {"page": client.get("/accounts/token/")}
    assert shown(answers["page"])
    answers["rotated"] = client.post("/accounts/token/")
    assert shown(answers["rotated"])
    answers["endpoint"] = APIClient().post("/api/v1/token/", {"username": "ada-sec", "password": PASSWORD})
    assert shown(answers["endpoint"])
    for label, response in answers.items():
        assert response.status_code == 200, label
        directives = {part.strip() for part in response["Cache-Control"].split(",")}
        assert {"no-store", "no-cache", "must-revalidate", "private"} <= directives, (label, directives)


# --- Failed logins (django-axes) ---


def _login(username: str, password: str, address: str = "127.0.0.1", **headers: str):
    client = Client(REMOTE_ADDR=address, **headers)
    return client, client.post("/accounts/login/", {"username": username, "password": password})


def test_login_locks_a_username_from_an_address_after_repeated_failures(settings, ada, bob):
    statuses = [_login("ada-sec", "wrong-password")[1].status_code for _ in range(settings.AXES_FAILURE_LIMIT)]
    assert statuses == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]  # the form again, then the lockout
    client, response = _login("ada-sec", PASSWORD)  # the right password, too late
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode() and "15 minutes" in response.content.decode()
    assert int(response["Retry-After"]) == 15 * 60
    assert "_auth_user_id" not in client.session
    assert _login("ada-sec", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.9")[1].status_code == 429  # forged: same
    # Someone else on the same address, and the same person from elsewhere, still log in.
    client, response = _login("bob-sec", PASSWORD)
    assert response.status_code == 302 and client.session["_auth_user_id"] == str(bob.pk)
    client, response = _login("ada-sec", PASSWORD, address="10.1.2.3")
    assert response.status_code == 302 and client.session["_auth_user_id"] == str(ada.pk)


def test_a_successful_login_clears_earlier_failures(settings, ada):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _login("ada-sec", "wrong-password")
    assert _login("ada-sec", PASSWORD)[1].status_code == 302
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _login("ada-sec", "wrong-password")
    assert _login("ada-sec", PASSWORD)[1].status_code == 302


def test_token_endpoint_locks_out_the_same_way(settings, ada):
    api = APIClient(REMOTE_ADDR="127.0.0.1")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert api.post("/api/v1/token/", {"username": "ada-sec", "password": "nope"}).status_code == 400
    assert api.post("/api/v1/token/", {"username": "ada-sec", "password": "nope"}).status_code == 429
    response = api.post("/api/v1/token/", {"username": "ada-sec", "password": PASSWORD})
    assert response.status_code == 429
    assert response.json()["code"] == "login_locked_out" and "Too many failed logins" in response.json()["detail"]
    assert not Token.objects.filter(user=ada).exists()


# --- API throttling (DRF) ---


@pytest.fixture
def low_rates(monkeypatch):
    """DRF binds the rates when it imports its throttles; tests swap them in like this."""
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"anon": "3/minute", "user": "5/minute",
                                                               "login": "2/minute"})


def test_api_throttles_anonymous_clients_and_users_separately(low_rates, ada):
    anonymous = APIClient()
    assert [anonymous.get("/api/v1/tracks/").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert int(anonymous.get("/api/v1/tracks/")["Retry-After"]) > 0
    # A forged X-Forwarded-For is not a new client (no proxies are configured, ARENA_PROXY_COUNT=0).
    assert anonymous.get("/api/v1/tracks/", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 429
    user = APIClient()
    user.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=ada).key}")
    assert [user.get("/api/v1/tracks/").status_code for _ in range(6)] == [200] * 5 + [429]


def test_token_endpoint_is_throttled_per_address(low_rates, ada, bob):
    api = APIClient()
    assert api.post("/api/v1/token/", {"username": "ada-sec", "password": "nope"}).status_code == 400
    assert api.post("/api/v1/token/", {"username": "bob-sec", "password": "nope"}).status_code == 400
    assert api.post("/api/v1/token/", {"username": "ada-sec", "password": PASSWORD}).status_code == 429


def test_login_form_is_throttled_per_address_across_usernames(low_rates, ada, bob):
    """A password spray (one guess for each of many usernames) meets the address's rate, not axes' lockout."""
    assert _login("ada-sec", "guess-1")[1].status_code == 200
    assert _login("bob-sec", "guess-1")[1].status_code == 200
    client, response = _login("bob-sec", PASSWORD)  # the third attempt from this address in a minute
    assert response.status_code == 429 and "_auth_user_id" not in client.session
    assert "Too many login attempts from your address" in response.content.decode()
    assert 0 < int(response["Retry-After"]) <= 60
    # The same person from another address logs in; the form and the token endpoint share the budget.
    client, response = _login("bob-sec", PASSWORD, address="10.9.8.7")
    assert response.status_code == 302 and client.session["_auth_user_id"] == str(bob.pk)
    api = APIClient(REMOTE_ADDR="10.9.8.7")
    assert api.post("/api/v1/token/", {"username": "bob-sec", "password": PASSWORD}).status_code == 200
    assert api.post("/api/v1/token/", {"username": "bob-sec", "password": PASSWORD}).status_code == 429
    # Showing the form is not an attempt.
    assert Client(REMOTE_ADDR="127.0.0.1").get("/accounts/login/").status_code == 200


def test_default_rates_are_configured():
    rates = SimpleRateThrottle.THROTTLE_RATES
    assert {"anon", "user", "login"} <= set(rates)
    for rate in rates.values():
        SimpleRateThrottle.parse_rate(SimpleRateThrottle, rate)  # "N/period", as DRF reads it


# --- CSRF ---


def _csrf_client(user=None) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def test_login_and_signup_forms_refuse_a_post_without_csrf_token(ada):
    client = _csrf_client()
    assert client.post("/accounts/login/", {"username": "ada-sec", "password": PASSWORD}).status_code == 403
    assert client.post("/accounts/signup/", {"username": "eve", "password1": "x-long-password-9",
                                             "password2": "x-long-password-9"}).status_code == 403
    client.get("/accounts/login/")  # sets the CSRF cookie, as a browser would
    token = client.cookies["csrftoken"].value
    response = client.post("/accounts/login/", {"username": "ada-sec", "password": PASSWORD,
                                                "csrfmiddlewaretoken": token})
    assert response.status_code == 302


def test_owner_actions_and_logout_refuse_a_post_without_csrf_token(queued, ada):
    client = _csrf_client(ada)
    public_id = queued.public_id
    posts = {
        f"/submissions/{public_id}/cancel/": {},
        f"/submissions/{public_id}/rerun/": {},
        f"/submissions/{public_id}/visibility/": {"public": "0"},
        f"/submissions/{public_id}/withdraw/": {"action": "withdraw"},
        "/submissions/submit/": {"name": "x"},
        "/accounts/token/": {},
        "/accounts/logout/": {},
    }
    for url, data in posts.items():
        assert client.post(url, data).status_code == 403, url
    queued.refresh_from_db()
    assert queued.state == "queued" and queued.is_public
    assert "_auth_user_id" in client.session  # still logged in
    client.get(queued.get_absolute_url())
    token = client.cookies["csrftoken"].value
    assert client.post(f"/submissions/{public_id}/cancel/", {"csrfmiddlewaretoken": token}).status_code == 302
    queued.refresh_from_db()
    assert queued.state == "cancelled"


def test_api_needs_csrf_with_a_session_but_not_with_a_token(queued, ada):
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(ada)
    response = session.post(f"/api/v1/submissions/{queued.public_id}/cancel/")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    token = APIClient(enforce_csrf_checks=True)
    token.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=ada).key}")
    assert token.post(f"/api/v1/submissions/{queued.public_id}/cancel/").status_code == 200
    queued.refresh_from_db()
    assert queued.state == "cancelled"


# --- Production settings ---


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_under_production_settings(tmp_path):
    result = _manage("check", "--deploy", "--fail-level", "WARNING", ARENA_PRODUCTION="1",
                     SECRET_KEY=secrets.token_urlsafe(60), ALLOWED_HOSTS="arena.example.org",
                     ARENA_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_production_refuses_missing_secret_key_and_debug(tmp_path):
    missing = _manage("check", ARENA_PRODUCTION="1", ALLOWED_HOSTS="arena.example.org", ARENA_VAR_DIR=str(tmp_path))
    assert missing.returncode != 0 and "needs SECRET_KEY" in missing.stderr
    debug = _manage("check", ARENA_PRODUCTION="1", DEBUG="1", SECRET_KEY=secrets.token_urlsafe(60),
                    ALLOWED_HOSTS="arena.example.org", ARENA_VAR_DIR=str(tmp_path))
    assert debug.returncode != 0 and "DEBUG=1" in debug.stderr
