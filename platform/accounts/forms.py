"""The login form, telling an account that awaits approval why it cannot log in yet."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm

PENDING_MESSAGE = ("This account awaits approval: a staff member activates new accounts before they can log in. "
                   "Try again once you have been told it is active.")


class ApprovalAwareAuthenticationForm(AuthenticationForm):
    """Django's login form; for an inactive account given its right password it says so.

    The model backend refuses inactive users outright, so under ``ARENA_SIGNUP_MODE=approval`` a
    new user would read "enter a correct username and password" and try again until axes locks
    them out. Only someone who knows the password learns that the account is pending.
    """

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()
        except forms.ValidationError as error:
            if error.code == "invalid_login" and self._pending_account_with_this_password():
                raise forms.ValidationError(PENDING_MESSAGE, code="inactive") from None
            raise

    def _pending_account_with_this_password(self) -> bool:
        username, password = self.cleaned_data.get("username"), self.cleaned_data.get("password")
        if not username or not password:
            return False
        user = get_user_model()._default_manager.filter(is_active=False, **{
            get_user_model().USERNAME_FIELD: username}).first()
        return user is not None and user.check_password(password)
