"""Django's database sessions, model backend and DRF's token authentication, each reading through
:mod:`accounts.read_memo`.

A signed-in page or API request reads its session row and its user row (a token request: its token
and its user) before anything else; between two writes to the database those answers do not change,
and building the ORM queries for them cost more than the rest of a cached request (session 0.5 ms,
user 0.4 ms, token with its user 0.8 ms on SQLite, more on PostgreSQL). These classes keep the
libraries' behaviour (what is refused, with which message, and when) and only read the rows through
the memo, as plain values: every request still gets a user instance of its own.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import backends, get_user_model
from django.contrib.sessions.backends import db as db_sessions
from django.db import router
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions

from accounts.read_memo import remembered


def _user_row(user_id: Any) -> tuple[tuple[str, ...], tuple[Any, ...]] | None:
    """The user's row (field names, values) or None, through the memo."""
    model = get_user_model()
    using = router.db_for_read(model)
    names = tuple(f.attname for f in model._meta.concrete_fields)

    def ask() -> tuple[tuple[str, ...], tuple[Any, ...]] | None:
        values = model._default_manager.db_manager(using).filter(pk=user_id).values_list(*names).first()
        return None if values is None else (names, tuple(values))

    return remembered(("user", model._meta.label, str(user_id)), ask, using=using)


def load_user(user_id: Any) -> Any | None:
    """A fresh instance of the user ``user_id`` (None when there is none), read through the memo."""
    model = get_user_model()
    row = _user_row(user_id)
    if row is None:
        return None
    return model.from_db(router.db_for_read(model), list(row[0]), list(row[1]))


class ModelBackend(backends.ModelBackend):
    """Django's ``ModelBackend`` whose ``get_user`` (run on every signed-in request) reads through the memo."""

    def get_user(self, user_id: Any) -> Any | None:
        user = load_user(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None


class SessionStore(db_sessions.SessionStore):
    """Django's database sessions whose load reads the row through the memo.

    The original asks for the row with ``expire_date`` after now; here the row is read without the
    time (so that the answer depends on the database alone) and its expiry compared in Python, with the
    same outcome: an expired or missing session is empty and forgets its key.
    """

    def _get_session_from_db(self) -> Any | None:
        key = self.session_key
        using = router.db_for_read(self.model)

        def ask() -> tuple[str, Any] | None:
            return self.model.objects.db_manager(using).filter(session_key=key).values_list(
                "session_data", "expire_date").first()

        row = remembered(("session", key), ask, using=using) if key else None
        if row is None or row[1] <= timezone.now():
            self._session_key = None
            return None
        return self.model(session_key=key, session_data=row[0], expire_date=row[1])


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token authentication whose token and user are read through the memo (same refusals, same words)."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        model = self.get_model()
        using = router.db_for_read(model)

        def ask() -> tuple[Any, Any] | None:
            return model.objects.db_manager(using).filter(key=key).values_list("user_id", "created").first()

        row = remembered(("token", key), ask, using=using)
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user = load_user(row[0])
        if user is None or not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = model(key=key, user=user, created=row[1])
        token._state.adding, token._state.db = False, using
        return user, token
