"""django-axes hooks (whom a failed login counts against, what a locked-out login gets back), and the
per-address rates of the login and sign-up forms."""

from __future__ import annotations

import math
from typing import Any

from axes.helpers import get_cool_off, get_failure_limit
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle

from accounts.forms import ApprovalAwareAuthenticationForm


def client_address(request: HttpRequest) -> str:
    """The client's address exactly as the API throttles see it (DRF's ``NUM_PROXIES``).

    One rule for both: behind ``ARENA_PROXY_COUNT`` proxies it is that many entries from the right
    of X-Forwarded-For (the part a client cannot forge), else REMOTE_ADDR.
    """
    return BaseThrottle().get_ident(request)


def lockout_response(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict[str, Any] | None = None) -> HttpResponse:
    """What a locked-out login gets: 429, a message saying why and for how long, and Retry-After.

    Axes' own page names no waiting time, and the token endpoint's callers are scripts that want
    JSON; both get the same message here.
    """
    cool_off = get_cool_off(request)
    minutes = math.ceil(cool_off.total_seconds() / 60) if cool_off else None
    message = (f"Too many failed logins for this account from your address ({get_failure_limit(request, credentials)}"
               " in a row): logging in is blocked" + (f" for {minutes} minutes" if minutes else "")
               + ", even with the right password.")
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse({"detail": message, "code": "login_locked_out"}, status=429)
    else:
        response = render(request, "registration/locked_out.html", {"message": message}, status=429)
    if cool_off:
        response["Retry-After"] = str(int(cool_off.total_seconds()))
    return response


class AddressThrottleMixin:
    """Puts a view's POSTs under a per-address DRF rate (``throttle_scope``), answering 429 past it.

    The API's throttles work on any request, so the HTML forms that need a per-address budget
    (login, sign-up) reuse DRF's ``ScopedRateThrottle`` and its cache counters rather than a
    counter of their own; the address is :func:`client_address`'s, the same as the API's.
    Only POSTs count: showing the form is free.
    """

    throttle_scope: str
    #: The 429 page's sentence; ``{wait}`` becomes " for N seconds" (or nothing when unknown).
    throttled_message: str
    throttled_title: str = "Too many attempts"
    #: URL name of the form to come back to.
    retry_url_name: str

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        throttle = ScopedRateThrottle()
        if not throttle.allow_request(request, self):
            return self.throttled_response(request, throttle.wait())
        return super().post(request, *args, **kwargs)  # type: ignore[misc]

    def throttled_response(self, request: HttpRequest, wait: float | None) -> HttpResponse:
        seconds = max(1, math.ceil(wait)) if wait is not None else None
        message = self.throttled_message.format(wait=f" for {seconds} seconds" if seconds else "")
        response = render(request, "registration/locked_out.html",
                          {"message": message, "title": self.throttled_title,
                           "retry_url": reverse(self.retry_url_name)}, status=429)
        if seconds:
            response["Retry-After"] = str(seconds)
        return response


class AddressThrottledLoginView(AddressThrottleMixin, LoginView):
    """Django's login form under the token endpoint's per-address rate (the ``login`` scope).

    Axes locks one username at one address; a password spray tries one or two passwords on many
    usernames and never trips it. The rate caps all login attempts from an address, whatever the
    usernames, and the form and the token endpoint draw on the same budget (one cache key), so
    alternating between them gains nothing.
    """

    authentication_form = ApprovalAwareAuthenticationForm
    throttle_scope = "login"
    retry_url_name = "login"
    throttled_title = "Too many login attempts"
    throttled_message = "Too many login attempts from your address: logging in is paused{wait}, whatever the account."
