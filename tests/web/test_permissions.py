"""Who may open what: every URL pattern of the site, for an anonymous visitor, the owner of a private
submission, another user, and staff.

The table below is checked against the URL resolver, so a new page or endpoint without a row here
fails ``test_every_url_pattern_has_a_permission_row``. Every answer is also checked for what must
never leave the platform (hidden evaluation files, stored artifact names), and every HTML page for
the content security policy and the absence of inline scripts.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.exceptions import Resolver404
from rest_framework.authtoken.models import Token

from adversaries.models import Attack
from benchmarks.models import Benchmark, EvaluationSet, Track
from submissions.models import Submission

pytestmark = pytest.mark.django_db

ROLES = ("anon", "owner", "other", "staff")
LOGIN = "/accounts/login/"


@dataclass
class World:
    """The objects every row is checked against; ``private(state)`` makes a fresh one per request,
    so that an action one role performs does not change what the next role sees."""

    users: dict[str, Any]
    track: Track
    hidden_track: Track
    evaluation_set: EvaluationSet
    public: Submission
    made: list[Submission | Attack] = field(default_factory=list)

    def attack(self, hidden: bool = False) -> Attack:
        track = self.hidden_track if hidden else self.track
        attack = Attack(owner=self.users["owner"], track=track, name=f"attack-{len(self.made)}",
                        source_sha256=f"{len(self.made):064x}", passes_per_point=10)
        source = b"def attack(model, x, y, threat, budget, generator):\n    return x\n"
        attack.source.save("attack.py", ContentFile(source), save=False)
        attack.save()
        self.made.append(attack)
        return attack

    def private(self, state: str = "queued") -> Submission:
        submission = _submission(self.track, self.users["owner"], f"private-{len(self.made)}", is_public=False)
        Submission.objects.filter(pk=submission.pk).update(state=state)
        submission.refresh_from_db()
        self.made.append(submission)
        return submission


def _submission(track: Track, owner: Any, name: str, is_public: bool) -> Submission:
    submission = Submission(track=track, owner=owner, name=name, artifact_format="pt2", is_public=is_public,
                            artifact_sha256=f"{abs(hash(name)):064x}"[:64])
    submission.artifact.save("upload", ContentFile(b"PK\x03\x04"), save=False)
    submission.save()
    return submission


@pytest.fixture
def world(arena_dirs) -> World:
    user_model = get_user_model()
    users = {  # no passwords: force_login needs none, and hashing would cost most of this file's time
        "owner": user_model.objects.create_user("perm-owner"),
        "other": user_model.objects.create_user("perm-other"),
        "staff": user_model.objects.create_user("perm-staff", is_staff=True),
    }
    benchmark = Benchmark.objects.create(slug="perm", name="Permissions")
    shape = {"task_kind": "classifier", "input_channels": 1, "input_height": 28, "input_width": 28, "num_classes": 10}
    track = Track.objects.create(benchmark=benchmark, slug="perm-digits", name="Digits", **shape)
    hidden_track = Track.objects.create(benchmark=benchmark, slug="perm-hidden", name="Unreleased", is_public=False,
                                        **shape)
    evaluation_set = EvaluationSet.objects.create(track=track, name="perm-hidden-set", role="clean",
                                                  relative_path="evalsets/perm-digits/secret-0123.safetensors",
                                                  sha256="f" * 64, num_examples=10)
    public = _submission(track, users["owner"], "public-model", is_public=True)
    return World(users=users, track=track, hidden_track=hidden_track, evaluation_set=evaluation_set, public=public)


@dataclass(frozen=True)
class Check:
    """One request made by each role: ``path`` builds the URL (it may create a fresh object)."""

    path: Callable[[World], str]
    expect: dict[str, int]
    method: str = "get"
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        assert set(self.expect) == set(ROLES), self.expect


def same(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def logged_in(status: int, anon: int = 302) -> dict[str, int]:
    return {"anon": anon, "owner": status, "other": status, "staff": status}


#: Owner and staff may; another user is told the object does not exist; anonymous must log in.
OWNER_ONLY = {"anon": 302, "owner": 302, "other": 404, "staff": 302}
PRIVATE_PAGE = {"anon": 404, "owner": 200, "other": 404, "staff": 200}


def _detail(w: World) -> str:
    return f"/submissions/{w.private().public_id}/"


def _api_detail(w: World) -> str:
    return f"/api/v1/submissions/{w.private().public_id}/"


#: URL pattern (as the resolver spells it) -> the checks made on it.
PERMISSIONS: dict[str, list[Check]] = {
    "": [Check(lambda w: "/", same(200))],
    "tracks/<slug:slug>/": [Check(lambda w: w.track.get_absolute_url(), same(200)),
                            Check(lambda w: f"/tracks/{w.hidden_track.slug}/", same(404))],
    "tracks/<slug:slug>/leaderboard.csv": [Check(lambda w: f"/tracks/{w.track.slug}/leaderboard.csv", same(200)),
                                           Check(lambda w: f"/tracks/{w.hidden_track.slug}/leaderboard.csv",
                                                 same(404))],
    "tracks/<slug:slug>/leaderboard.json": [Check(lambda w: f"/tracks/{w.track.slug}/leaderboard.json", same(200)),
                                            Check(lambda w: f"/tracks/{w.hidden_track.slug}/leaderboard.json",
                                                  same(404))],
    "submissions/<uuid:public_id>/": [Check(_detail, PRIVATE_PAGE),
                                      Check(lambda w: f"/submissions/{w.public.public_id}/", same(200))],
    "submissions/<uuid:public_id>/status.json": [Check(lambda w: _detail(w) + "status.json", PRIVATE_PAGE)],
    "submissions/<uuid:public_id>/cancel/": [
        Check(lambda w: _detail(w) + "cancel/", OWNER_ONLY, "post"),
        Check(lambda w: _detail(w) + "cancel/", logged_in(405)),
    ],
    "submissions/<uuid:public_id>/resume/": [
        Check(lambda w: f"/submissions/{w.private('incomplete').public_id}/resume/", OWNER_ONLY, "post"),
        Check(lambda w: _detail(w) + "resume/", logged_in(405)),
    ],
    "submissions/<uuid:public_id>/rerun/": [
        Check(lambda w: f"/submissions/{w.private('failed').public_id}/rerun/", OWNER_ONLY, "post"),
        Check(lambda w: _detail(w) + "rerun/", logged_in(405)),
    ],
    "submissions/<uuid:public_id>/visibility/": [
        Check(lambda w: _detail(w) + "visibility/", OWNER_ONLY, "post", {"public": "1"}),
        Check(lambda w: _detail(w) + "visibility/", logged_in(405)),
    ],
    "submissions/<uuid:public_id>/withdraw/": [
        Check(lambda w: _detail(w) + "withdraw/", OWNER_ONLY, "post", {"action": "withdraw"}),
        Check(lambda w: _detail(w) + "withdraw/", logged_in(405)),
    ],
    "submissions/submit/": [Check(lambda w: "/submissions/submit/", logged_in(200)),
                            Check(lambda w: "/submissions/submit/", logged_in(200), "post", {"name": "x"})],
    "submissions/mine/": [Check(lambda w: "/submissions/mine/", logged_in(200))],
    "accounts/login/": [Check(lambda w: LOGIN, same(200)),
                        Check(lambda w: LOGIN, same(200), "post", {"username": "perm-owner", "password": "x"})],
    "accounts/logout/": [Check(lambda w: "/accounts/logout/", same(302), "post"),
                         Check(lambda w: "/accounts/logout/", same(405))],
    "accounts/signup/": [Check(lambda w: "/accounts/signup/", same(200))],
    "accounts/token/": [Check(lambda w: "/accounts/token/", logged_in(200)),
                        Check(lambda w: "/accounts/token/", logged_in(200), "post")],
    "api/v1/": [Check(lambda w: "/api/v1/", same(200))],
    "api/v1/quota/": [Check(lambda w: "/api/v1/quota/", logged_in(200, anon=401))],
    "api/v1/token/": [Check(lambda w: "/api/v1/token/", same(400), "post", {"username": "perm-owner", "password": "x"}),
                      Check(lambda w: "/api/v1/token/", same(405))],
    "api/v1/submissions/": [Check(lambda w: "/api/v1/submissions/", same(200)),
                            Check(lambda w: "/api/v1/submissions/", logged_in(400, anon=401), "post", {})],
    "api/v1/submissions/<id>/": [
        Check(_api_detail, PRIVATE_PAGE),
        Check(lambda w: f"/api/v1/submissions/{w.public.public_id}/", same(200)),
        Check(_api_detail, logged_in(405, anon=401), "delete"),
        Check(_api_detail, logged_in(405, anon=401), "patch", {"is_public": True}),
    ],
    "api/v1/submissions/<id>/cancel/": [
        Check(lambda w: _api_detail(w) + "cancel/", {"anon": 401, "owner": 200, "other": 404, "staff": 200}, "post"),
        Check(lambda w: _api_detail(w).rstrip("/") + "/cancel.json", {"anon": 401, "owner": 200, "other": 404,
                                                                      "staff": 200}, "post"),
    ],
    "api/v1/submissions/<id>/resume/": [
        # A queued submission cannot be resumed (409); only its owner and staff learn that much.
        Check(lambda w: _api_detail(w) + "resume/", {"anon": 401, "owner": 409, "other": 404, "staff": 409}, "post"),
        Check(lambda w: f"/api/v1/submissions/{w.private('incomplete').public_id}/resume/",
              {"anon": 401, "owner": 200, "other": 404, "staff": 200}, "post"),
    ],
    "api/v1/attacks/": [Check(lambda w: "/api/v1/attacks/", same(200)),
                        Check(lambda w: "/api/v1/attacks/", logged_in(400, anon=401), "post", {})],
    "api/v1/attacks/<public_id>/": [
        Check(lambda w: f"/api/v1/attacks/{w.attack().public_id}/", same(200)),
        Check(lambda w: f"/api/v1/attacks/{w.attack().public_id}/", logged_in(405, anon=401), "delete"),
        # An attack on a track that is not public is nobody's to see through the API.
        Check(lambda w: f"/api/v1/attacks/{w.attack(hidden=True).public_id}/", same(404)),
    ],
    "attacks/submit/": [Check(lambda w: "/attacks/submit/", logged_in(200, anon=302)),
                        Check(lambda w: "/attacks/submit/", logged_in(200, anon=302), "post", {})],
    "attacks/<uuid:public_id>/": [Check(lambda w: f"/attacks/{w.attack().public_id}/", same(200)),
                                  Check(lambda w: f"/attacks/{w.attack(hidden=True).public_id}/", same(404))],
    "tracks/<slug:slug>/attacks/": [Check(lambda w: f"/tracks/{w.track.slug}/attacks/", same(200)),
                                    Check(lambda w: f"/tracks/{w.hidden_track.slug}/attacks/", same(404))],
    "api/v1/tracks/": [Check(lambda w: "/api/v1/tracks/", same(200))],
    "api/v1/tracks/<slug>/": [Check(lambda w: f"/api/v1/tracks/{w.track.slug}/", same(200)),
                              Check(lambda w: f"/api/v1/tracks/{w.hidden_track.slug}/", same(404)),
                              Check(lambda w: f"/api/v1/tracks/{w.track.slug}/", logged_in(405, anon=401), "delete")],
    "api/v1/tracks/<slug>/leaderboard/": [
        Check(lambda w: f"/api/v1/tracks/{w.track.slug}/leaderboard/", same(200)),
        Check(lambda w: f"/api/v1/tracks/{w.hidden_track.slug}/leaderboard/", same(404)),
    ],
    "api/schema/": [Check(lambda w: "/api/schema/", same(200))],
    "api/docs/": [Check(lambda w: "/api/docs/", same(200)), Check(lambda w: "/api/docs/?script=", same(200))],
    "api/redoc/": [Check(lambda w: "/api/redoc/", same(200))],
}

#: DRF's router adds a format-suffix twin to each API route; it must answer exactly as the route does.
SUFFIXED = re.compile(r"\\\.\(\?P<format>\[a-z0-9\]\+\)/\?\$$|<drf_format_suffix:format>$")


def _route(pattern: Any) -> str:
    """A readable route: DRF's regex patterns ``^tracks/(?P<slug>[^/.]+)/$`` become ``tracks/<slug>/``."""
    text = str(pattern)
    text = re.sub(r"\(\?P<(\w+)>\[\^/\.\]\+\)", r"<\1>", text)
    return text.replace("^", "").replace("$", "")


def _walk(patterns: list, prefix: str = "") -> list[tuple[str, str | None]]:
    """Every (route, namespace) reachable from ``patterns``."""
    found: list[tuple[str, str | None]] = []
    for entry in patterns:
        if isinstance(entry, URLResolver):
            if entry.namespace == "admin":
                found.append((prefix + str(entry.pattern), "admin"))
                continue
            found += _walk(entry.url_patterns, prefix + _route(entry.pattern))
        elif isinstance(entry, URLPattern):
            found.append((prefix + (str(entry.pattern) if SUFFIXED.search(str(entry.pattern))
                                    else _route(entry.pattern)), None))
    return found


def _base_route(route: str) -> str | None:
    """The route a format-suffixed twin belongs to, or None for a plain route."""
    if not SUFFIXED.search(route):
        return None
    base = SUFFIXED.sub("", route)
    base = _route(base)
    return base if base.endswith("/") else base + "/"


@functools.cache
def _router_routes() -> frozenset[str]:
    """Routes that have a format-suffixed twin (DRF's router adds them)."""
    return frozenset(filter(None, (_base_route(route) for route, _ in _walk(get_resolver().url_patterns))))


def test_every_url_pattern_has_a_permission_row():
    routes = _walk(get_resolver().url_patterns)
    plain = {route for route, namespace in routes if namespace is None and _base_route(route) is None}
    twins = {_base_route(route) for route, namespace in routes if namespace is None} - {None}
    assert plain == set(PERMISSIONS), "add a row to PERMISSIONS for each new URL (and drop removed ones)"
    assert twins <= plain
    assert [route for route, namespace in routes if namespace == "admin"] == ["admin/"]  # test_admin_matrix
    for never_routed in ("/media/artifacts/x.pt2", "/data/evalsets/x.safetensors", "/var/secret_key"):
        with pytest.raises(Resolver404):
            resolve(never_routed)


def _client(world: World, role: str) -> Client:
    client = Client()
    if role != "anon":
        client.force_login(world.users[role])
    return client


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"\son[a-z]+\s*=|javascript:", re.I)


def _assert_nothing_leaks(world: World, response: Any, where: str, staff_tools: bool = False) -> None:
    """No hidden-set or artifact file names outside the admin; CSP and no inline script on HTML."""
    body = response.content.decode(errors="replace")
    if not staff_tools:
        assert world.evaluation_set.relative_path not in body, where
        assert "secret-0123" not in body, where
        for made in [world.public, *world.made]:
            stored = made.artifact if isinstance(made, Submission) else made.source
            assert stored.name not in body, where  # the stored file's name never leaves the site
    if response.status_code == 200 and response["Content-Type"].startswith("text/html"):
        assert "script-src 'self'" in response["Content-Security-Policy"], where
        assert not INLINE_SCRIPT.search(body), (where, INLINE_SCRIPT.search(body))
        assert not INLINE_HANDLER.search(body), (where, INLINE_HANDLER.search(body))


@pytest.mark.parametrize("route", sorted(PERMISSIONS))
def test_permission_matrix(world, route):
    for check in PERMISSIONS[route]:
        for role in ROLES:
            path = check.path(world)
            where = f"{check.method.upper()} {path} as {role}"
            client = _client(world, role)
            send = getattr(client, check.method)
            kwargs = {"content_type": "application/json"} if check.method in {"patch", "put"} else {}
            response = send(path, check.data or {}, **kwargs)
            assert response.status_code == check.expect[role], (where, response.status_code)
            if response.status_code == 302 and route != "accounts/logout/":
                # Anonymous visitors are sent to log in; users back to the page they acted on.
                assert response["Location"].startswith(LOGIN) is (role == "anon"), (where, response["Location"])
            _assert_nothing_leaks(world, response, where)
            if route in _router_routes() and check.method == "get":
                twin = send(path + ".json" if path.endswith("/v1/") else path.rstrip("/") + ".json")
                assert twin.status_code == response.status_code, (where, "format suffix", twin.status_code)


def test_api_lists_show_private_submissions_only_to_owner_and_staff(world):
    private = world.private()
    for role, sees in {"anon": False, "owner": True, "other": False, "staff": True}.items():
        ids = {row["id"] for row in _client(world, role).get("/api/v1/submissions/", {"limit": 500}).json()["results"]}
        assert str(world.public.public_id) in ids, role
        assert (str(private.public_id) in ids) is sees, role
    token = Token.objects.create(user=world.users["other"]).key
    other = Client(HTTP_AUTHORIZATION=f"Token {token}")
    assert other.get(f"/api/v1/submissions/{private.public_id}/").status_code == 404
    assert other.post(f"/api/v1/submissions/{private.public_id}/cancel/").status_code == 404
    private.refresh_from_db()
    assert private.state == "queued"


def test_owner_actions_by_another_user_change_nothing(world):
    private = world.private()
    other = _client(world, "other")
    for action, data in (("cancel", {}), ("visibility", {"public": "1"}), ("withdraw", {"action": "withdraw"})):
        assert other.post(f"/submissions/{private.public_id}/{action}/", data).status_code == 404
    private.refresh_from_db()
    assert private.state == "queued" and not private.is_public and not hasattr(private, "withdrawal")


def test_admin_matrix(world):
    """The admin: staff only, and then only what their permissions allow; superusers see every model."""
    superuser = get_user_model().objects.create_user("perm-root", is_staff=True, is_superuser=True)
    clients = {role: _client(world, role) for role in ROLES}
    clients["superuser"] = Client()
    clients["superuser"].force_login(superuser)
    pages = ["/admin/"] + [f"/admin/{model._meta.app_label}/" for model in admin.site._registry]
    for model in admin.site._registry:
        pages += [f"/admin/{model._meta.app_label}/{model._meta.model_name}/",
                  f"/admin/{model._meta.app_label}/{model._meta.model_name}/add/"]
    pages += [f"/admin/submissions/submission/{world.public.pk}/change/",
              f"/admin/benchmarks/evaluationset/{world.evaluation_set.pk}/change/"]
    for page in dict.fromkeys(pages):
        for role in ("anon", "owner", "other"):
            response = clients[role].get(page)
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), (page, role)
        staff = clients["staff"].get(page).status_code  # staff without any model permission
        app_index = page.count("/") == 3
        assert staff == (200 if page == "/admin/" else 404 if app_index else 403), (page, staff)
        response = clients["superuser"].get(page)
        model_admin = next((ma for m, ma in admin.site._registry.items()
                            if page.startswith(f"/admin/{m._meta.app_label}/{m._meta.model_name}/add/")), None)
        allowed = model_admin is None or model_admin.has_add_permission(response.wsgi_request)
        assert response.status_code == (200 if allowed else 403), (page, response.status_code)
        _assert_nothing_leaks(world, response, f"{page} as superuser", staff_tools=True)
