"""Sign-up, the API token page, and the owner's actions on a submission (visibility, withdrawal)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.generic import FormView
from rest_framework.authtoken.models import Token

from accounts.lockout import AddressThrottleMixin

#: The backend a new account is logged in with: axes' backend only screens ``authenticate`` calls,
#: and with several backends configured ``login`` must be told which one vouches for the user.
SIGNUP_LOGIN_BACKEND = "accounts.backends.ModelBackend"


class SignupView(AddressThrottleMixin, FormView):
    """Create an account, as ``ARENA_SIGNUP_MODE`` allows: at once, pending a staff member's approval, or not.

    Quotas are per account, so free accounts would make them unbounded: sign-ups are capped per
    client address (the ``signup`` rate, counted on every POST), and a public site can require
    approval (the account is created inactive and a staff member activates it in the admin).
    """

    template_name = "registration/signup.html"
    form_class = UserCreationForm
    throttle_scope = "signup"
    retry_url_name = "signup"
    throttled_title = "Too many sign-ups"
    throttled_message = "Too many sign-up attempts from your address: signing up is paused{wait}."

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if settings.ARENA_SIGNUP_MODE == "closed":
            return render(request, self.template_name, {"mode": "closed"}, status=403)
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), "mode": settings.ARENA_SIGNUP_MODE}

    def form_valid(self, form: UserCreationForm) -> HttpResponse:
        approval = settings.ARENA_SIGNUP_MODE == "approval"
        form.instance.is_active = not approval
        user = form.save()
        if approval:
            return render(self.request, self.template_name, {"mode": "pending", "pending_username": user.username})
        login(self.request, user, backend=SIGNUP_LOGIN_BACKEND)
        return redirect("home")


@never_cache
@login_required
def api_token(request: HttpRequest) -> HttpResponse:
    """Show (and on POST replace) the user's API token; never stored by a browser or proxy cache."""
    if request.method == "POST":  # rotate
        Token.objects.filter(user=request.user).delete()
    token, _ = Token.objects.get_or_create(user=request.user)
    return render(request, "accounts/token.html", {"token": token})
