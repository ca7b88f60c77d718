"""Property-based testing of the API: schemathesis generates requests, valid and invalid, from the
OpenAPI schema the site publishes (drf-spectacular, /api/schema/) and sends them through the WSGI
app with a researcher's token; no answer may be a server error. The leaderboard pages take the same
filters outside the API, so Hypothesis sends them arbitrary query strings too.

The database holds a populated leaderboard (baselines, fits, robust and private models), and
generated path parameters and upload fields are steered towards objects that exist most of the
time, so that the code behind the 404s and 400s runs too. Examples per operation are bounded by
``ARENA_SCHEMATHESIS_EXAMPLES`` (default 20) to keep the run under half a minute.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.web.test_leaderboards_helpers import THREAT, populate

pytestmark = pytest.mark.django_db
EXAMPLES = int(os.environ.get("ARENA_SCHEMATHESIS_EXAMPLES", 20))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])

#: Loaded through the WSGI app when this module is collected: the schema endpoint reads no database.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())
#: Objects of the running test's world that generated requests are steered to (see ``fuzz_world``).
REAL: dict[str, str] = {}
_steer = random.Random(0)


@schema.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    """Most of the time, point {slug} and {id} at a track and a submission that exist."""
    if path_parameters and REAL and _steer.random() < 0.8:
        return {name: REAL.get(name, value) for name, value in path_parameters.items()}
    return path_parameters


@schema.hook
def map_body(context: Any, body: Any) -> Any:
    """Most of the time, upload to a track that exists, so that uploads get past the track lookup."""
    if isinstance(body, dict) and "track" in body and REAL and _steer.random() < 0.8:
        return {**body, "track": REAL["slug"]}
    return body


@pytest.fixture
def fuzz_world(digits_track, researcher, other_user) -> Iterator[dict[str, str]]:
    """A populated leaderboard, the researcher's token, and direct WSGI calls kept inside the test."""
    models = populate(digits_track, researcher, other_user)
    REAL.update(slug=digits_track.slug, id=str(models["Ada's private"].public_id))
    # Django closes the database connection when a request ends; called straight through WSGI (not
    # through django.test.Client, which does the same), that would close the test's transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield {"token": Token.objects.create(user=researcher).key, **REAL}
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
        REAL.clear()


@schema.parametrize()
@SETTINGS
def test_api_answers_generated_requests_without_server_errors(case, fuzz_world):
    case.call_and_validate(headers={"Authorization": f"Token {fuzz_world['token']}"}, checks=[not_a_server_error])


_leaderboard = schema["/api/v1/tracks/{slug}/leaderboard/"]["GET"]


@given(case=st.one_of(*(_leaderboard.as_strategy(mode, path_parameters={"slug": "digits"})
                        for mode in GenerationMode)))
@settings(SETTINGS, max_examples=3 * EXAMPLES)
def test_leaderboard_api_filters_never_fail(case, fuzz_world):
    """The leaderboard's filters drive most of the query code: more examples there, always on a real track."""
    case.call_and_validate(headers={"Authorization": f"Token {fuzz_world['token']}"}, checks=[not_a_server_error])


FILTER_NAMES = ["view", "sort", "order", "model_type", "extra_data", "verified", "scale", "shift", "threat",
                "transform"]
KNOWN_VALUES = ["overview", f"threat:{THREAT}", "shift:usps", "set:usps", "usps:accuracy", "asc", "desc", "robust",
                "yes", "no", "1", "logit", "probit", "usps", THREAT, ""]


@given(query=st.dictionaries(st.sampled_from(FILTER_NAMES),
                             st.one_of(st.sampled_from(KNOWN_VALUES), st.text(max_size=30)), max_size=5),
       page=st.sampled_from(["/tracks/digits/", "/tracks/digits/leaderboard.csv", "/tracks/digits/leaderboard.json",
                             "model"]))
@SETTINGS
def test_leaderboard_pages_take_any_query_string(query, page, fuzz_world):
    client = Client()
    path = f"/submissions/{fuzz_world['id']}/" if page == "model" else page
    if page == "model":
        client.force_login(Token.objects.get(key=fuzz_world["token"]).user)
    response = client.get(path, query)
    assert response.status_code < 500, (path, query, response.status_code)


def test_nul_bytes_are_a_client_error(token):
    """PostgreSQL refuses NUL in text: a NUL that reaches a query is a 500 there (SQLite lets it by)."""
    client = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Token {token}")
    for path in ("/api/v1/submissions/?track=%00", "/api/v1/submissions/?track=a%00b&mine=%00",
                 "/api/v1/tracks/a%00b/", "/api/v1/tracks/a%00b/leaderboard/?view=%00&sort=%00",
                 "/api/v1/submissions/a%00b/"):
        assert 400 <= client.get(path).status_code < 500, path
