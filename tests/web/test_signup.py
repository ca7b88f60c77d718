"""Sign-up: it works and logs the new user in (open), creates an inactive account that a staff member
approves in the admin (approval), is refused (closed), and is capped per client address."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.throttling import SimpleRateThrottle

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-password-9"


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _signup(username: str, address: str = "127.0.0.1", password: str = PASSWORD) -> tuple[Client, object]:
    client = Client(REMOTE_ADDR=address)
    response = client.post("/accounts/signup/", {"username": username, "password1": password,
                                                 "password2": password})
    return client, response


def test_open_signup_creates_the_account_and_logs_in(settings):
    settings.ARENA_SIGNUP_MODE = "open"
    assert Client().get("/accounts/signup/").status_code == 200
    client, response = _signup("newcomer")
    assert response.status_code == 302 and response["Location"] == "/"  # was a 500 after creating the account
    user = get_user_model().objects.get(username="newcomer")
    assert user.is_active and client.session["_auth_user_id"] == str(user.pk)
    assert client.get("/submissions/submit/").status_code == 200  # the session works on a login-only page


def test_approval_signup_waits_for_staff(settings):
    settings.ARENA_SIGNUP_MODE = "approval"
    assert "activated by a staff member" in Client().get("/accounts/signup/").content.decode()
    client, response = _signup("pending")
    assert response.status_code == 200 and "awaits approval" in response.content.decode()
    user = get_user_model().objects.get(username="pending")
    assert not user.is_active and "_auth_user_id" not in client.session

    login = Client().post("/accounts/login/", {"username": "pending", "password": PASSWORD})
    assert login.status_code == 200 and "This account awaits approval" in login.content.decode()
    assert "_auth_user_id" not in login.wsgi_request.session
    wrong = Client().post("/accounts/login/", {"username": "pending", "password": "not-the-password"})
    assert "awaits approval" not in wrong.content.decode()  # only the password's owner learns it is pending

    staff = get_user_model().objects.create_user("approver", is_staff=True, is_superuser=True)
    admin = Client()
    admin.force_login(staff)
    listing = admin.get("/admin/auth/user/", {"is_active__exact": "0"}).content.decode()
    assert f"/admin/auth/user/{user.pk}/change/" in listing and f"/admin/auth/user/{staff.pk}/change/" not in listing
    admin.post("/admin/auth/user/", {"action": "approve_selected", "_selected_action": [user.pk]})
    user.refresh_from_db()
    assert user.is_active
    approved = Client()
    assert approved.post("/accounts/login/", {"username": "pending", "password": PASSWORD}).status_code == 302
    assert approved.session["_auth_user_id"] == str(user.pk)


def test_closed_signup_creates_nothing(settings):
    settings.ARENA_SIGNUP_MODE = "closed"
    page = Client().get("/accounts/signup/")
    assert page.status_code == 403 and "Sign-up is closed" in page.content.decode()
    assert _signup("intruder")[1].status_code == 403
    assert not get_user_model().objects.filter(username="intruder").exists()


def test_signups_are_capped_per_address(settings, monkeypatch):
    settings.ARENA_SIGNUP_MODE = "open"
    monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "signup", "3/hour")
    statuses = [_signup(f"farm-{i}", address="198.51.100.7")[1].status_code for i in range(3)]
    assert statuses == [302, 302, 302]
    _, refused = _signup("farm-3", address="198.51.100.7")
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 3600
    assert "Too many sign-up attempts from your address" in refused.content.decode()
    assert not get_user_model().objects.filter(username="farm-3").exists()
    # Failed attempts count too (each one may probe a username), and a forged X-Forwarded-For is no new address.
    client = Client(REMOTE_ADDR="198.51.100.7", HTTP_X_FORWARDED_FOR="203.0.113.1")
    assert client.post("/accounts/signup/", {"username": "farm-4"}).status_code == 429
    # Another address is not affected.
    assert _signup("elsewhere", address="192.0.2.44")[1].status_code == 302
    assert get_user_model().objects.filter(username__startswith="farm-").count() == 3


def test_default_signup_rate_is_configured():
    SimpleRateThrottle.parse_rate(SimpleRateThrottle, SimpleRateThrottle.THROTTLE_RATES["signup"])
