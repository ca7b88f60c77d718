"""accounts.read_memo and the session, user and token reads built on it (issue 19): fewer queries, never a stale answer.

Outside a transaction (as every request in production runs), a signed-in request reads its session and user
once per change to the database; these tests make the changes a log-out, a deactivated account, a revoked
token or an expired session are, from another connection (another process's worker or web server) and from
this one, and check that the very next request sees each of them.
"""

from __future__ import annotations

import datetime
import itertools
import threading
from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from accounts import read_memo
from tests.web.quiet_database import when_quiet

pytestmark = pytest.mark.django_db(transaction=True)
QUOTA = "/api/v1/quota/"  # any signed-in reader gets 200; anyone else 401/403


def _elsewhere(change: Callable[[], object]) -> None:
    """Run ``change`` on another database connection, committed (as another process would)."""
    def run() -> None:
        try:
            change()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


def _queries(client: Client, **headers: str) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(QUOTA, **headers)
    return response.status_code, [q["sql"] for q in captured]


def _reads(sql: list[str], table: str) -> int:
    return sum(f'FROM "{table}"' in q or f"FROM {table}" in q for q in sql)


@pytest.fixture
def reader():
    return get_user_model().objects.create_user("reader", password="a-long-password-1")


def test_remembered_asks_once_per_change_and_never_inside_a_transaction(reader):
    asked: list[int] = []

    def ask() -> int:
        asked.append(1)
        return get_user_model().objects.filter(pk=reader.pk).values_list("is_active", flat=True).get()

    names = itertools.count()

    def anew() -> None:  # before each try: a write of this connection's own, so the first use must ask
        asked.clear()
        get_user_model().objects.filter(pk=reader.pk).update(first_name=f"Ada {next(names)}")

    # Three uses with no commit anywhere between them: one question (see tests/web/quiet_database.py).
    assert when_quiet(lambda: [read_memo.remembered("k", ask) for _ in range(3)], prepare=anew) == [True] * 3
    assert len(asked) == 1
    _elsewhere(lambda: get_user_model().objects.filter(pk=reader.pk).update(is_active=False))
    assert read_memo.remembered("k", ask) is False and len(asked) == 2
    get_user_model().objects.filter(pk=reader.pk).update(is_active=True)  # this connection's own write
    assert read_memo.remembered("k", ask) is True and len(asked) == 3
    with transaction.atomic():
        assert read_memo.remembered("k", ask) is True and read_memo.remembered("k", ask) is True
    assert len(asked) == 5  # asked every time inside the transaction
    with pytest.raises(RuntimeError), transaction.atomic():
        get_user_model().objects.filter(pk=reader.pk).update(is_active=False)
        assert read_memo.remembered("k", ask) is False
        raise RuntimeError("roll back")
    assert read_memo.remembered("k", ask) is True  # the rolled-back write is not remembered


def test_a_signed_in_request_reads_its_session_and_user_once_per_change(reader):
    client = Client()
    client.force_login(reader)
    token = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=reader).key}"}
    names = itertools.count()
    for headers, tables in (({}, ("django_session", "auth_user")), (token, ("authtoken_token", "auth_user"))):
        def change() -> None:  # a change since the last read, made again before each try
            get_user_model().objects.filter(pk=reader.pk).update(last_name=f"Lovelace {next(names)}")

        def twice(h: dict[str, str] = headers) -> tuple[tuple[int, list[str]], ...]:
            return _queries(client, **h), _queries(client, **h)

        (status, first), (status_again, again) = when_quiet(twice, prepare=change)
        assert status == 200 and all(_reads(first, t) == 1 for t in tables), first
        assert status_again == 200 and not any(_reads(again, t) for t in tables), again
        get_user_model().objects.filter(pk=reader.pk).update(first_name="Ada")  # any write: asked again
        status, changed = _queries(client, **headers)
        assert status == 200 and all(_reads(changed, t) == 1 for t in tables), changed


def test_a_log_out_elsewhere_a_deactivation_and_an_expiry_show_on_the_next_request(reader):
    client = Client()
    client.force_login(reader)
    key = client.cookies["sessionid"].value
    assert _queries(client)[0] == 200
    _elsewhere(lambda: Session.objects.filter(session_key=key).delete())  # logged out in another process
    assert _queries(client)[0] in (401, 403)

    client.force_login(reader)
    assert _queries(client)[0] == 200
    _elsewhere(lambda: get_user_model().objects.filter(pk=reader.pk).update(is_active=False))
    assert _queries(client)[0] in (401, 403)
    get_user_model().objects.filter(pk=reader.pk).update(is_active=True)

    client.force_login(reader)
    assert _queries(client)[0] == 200
    key = client.cookies["sessionid"].value
    Session.objects.filter(session_key=key).update(expire_date=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
    assert _queries(client)[0] in (401, 403)


def test_a_token_is_refused_as_drf_refuses_it_once_revoked_or_its_user_deactivated(reader):
    token = Token.objects.create(user=reader)
    headers = {"HTTP_AUTHORIZATION": f"Token {token.key}"}
    client = Client()
    for _ in range(2):
        response = client.get(QUOTA, **headers)
        assert response.status_code == 200
    _elsewhere(lambda: get_user_model().objects.filter(pk=reader.pk).update(is_active=False))
    response = client.get(QUOTA, **headers)
    assert response.status_code == 401 and response.json()["detail"] == "User inactive or deleted."
    get_user_model().objects.filter(pk=reader.pk).update(is_active=True)
    assert client.get(QUOTA, **headers).status_code == 200
    _elsewhere(lambda: Token.objects.filter(key=token.key).delete())
    response = client.get(QUOTA, **headers)
    assert response.status_code == 401 and response.json()["detail"] == "Invalid token."
    response = client.get(QUOTA, HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert response.status_code == 401 and response.json()["detail"] == "Invalid token."


def _version_reads(sql: list[str]) -> int:
    return sum("pg_current_snapshot" in q or "pragma_data_version" in q for q in sql)


def test_a_request_reads_the_version_once_until_it_writes_itself(reader):
    users = get_user_model().objects

    def name() -> str:
        return users.filter(pk=reader.pk).values_list("first_name", flat=True).get()

    with read_memo.request_scope(), CaptureQueriesContext(connection) as captured:
        assert read_memo.remembered("a", name) == "" and read_memo.remembered("b", name) == ""
        assert read_memo.remembered("a", lambda: "never asked") == ""
        assert _version_reads([q["sql"] for q in captured]) == 1  # one version read for three uses
        users.filter(pk=reader.pk).update(first_name="Ada")  # this request's own write
        assert read_memo.remembered("a", name) == "Ada"  # seen at once: the version is read again
        assert _version_reads([q["sql"] for q in captured]) == 2
        _elsewhere(lambda: users.filter(pk=reader.pk).update(first_name="Grace"))
        assert read_memo.remembered("a", name) == "Ada"  # another process's commit: not inside this request...
        with transaction.atomic():
            assert read_memo.remembered("a", name) == "Grace"  # (a transaction is never served from the memo)
    with read_memo.request_scope():  # the next request's scope (RequestScopeMiddleware)
        assert read_memo.remembered("a", name) == "Grace"  # ...but on the next one
    # Outside a request every use reads the version, as before.
    with CaptureQueriesContext(connection) as captured:
        assert read_memo.remembered("a", name) == "Grace" and read_memo.remembered("a", name) == "Grace"
    assert _version_reads([q["sql"] for q in captured]) == 2


def test_a_signed_in_request_reads_the_database_version_once(reader):
    client = Client()
    client.force_login(reader)
    get_user_model().objects.filter(pk=reader.pk).update(last_name="Lovelace")
    status, sql = _queries(client)
    assert status == 200 and _reads(sql, "django_session") == 1 and _reads(sql, "auth_user") == 1
    assert _version_reads(sql) == 1, sql  # session and user under one version read (before: one per read)


def test_the_write_watch_stays_first_so_execute_wrapper_blocks_unwind_cleanly(reader):
    def count(execute, sql, params, many, context):  # noqa: ANN001, ANN202 (Django's wrapper signature)
        return execute(sql, params, many, context)

    if read_memo._forget_on_write in connection.execute_wrappers:  # as on a wrapper not yet watched
        connection.execute_wrappers.remove(read_memo._forget_on_write)
    before = list(connection.execute_wrappers)
    with connection.execute_wrapper(count):
        read_memo.remembered("w", lambda: 1)
    assert count not in connection.execute_wrappers
    assert read_memo._forget_on_write in connection.execute_wrappers
    assert connection.execute_wrappers[0] is read_memo._forget_on_write
    assert [w for w in connection.execute_wrappers if w is not read_memo._forget_on_write] == \
        [w for w in before if w is not read_memo._forget_on_write]


def test_a_request_s_scope_never_outlives_it_whatever_the_caller_does_with_the_response(reader):
    """A WSGI caller that never closes the response sends no ``request_finished``: the scope must still be gone."""
    import io
    import sys

    from django.core.handlers.wsgi import WSGIHandler

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": QUOTA, "SERVER_NAME": "testserver", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}
    WSGIHandler()(environ, lambda status, headers, exc_info=None: None)  # the response is never closed
    assert getattr(read_memo._request, "versions", None) is None

    def active() -> bool:
        return get_user_model().objects.filter(pk=reader.pk).values_list("is_active", flat=True).get()

    assert read_memo.remembered("after", active) is True
    _elsewhere(lambda: get_user_model().objects.filter(pk=reader.pk).update(is_active=False))
    assert read_memo.remembered("after", active) is False  # outside a request: the version read every time
