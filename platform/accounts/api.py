"""API: where the caller stands with their submission quota on each public track; the token endpoint."""

from __future__ import annotations

from typing import Any

from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle


@method_decorator(never_cache, name="dispatch")
class ObtainTokenView(ObtainAuthToken):
    """DRF's username/password -> token endpoint, throttled per client address; never cached.

    Its answer is a credential, so it carries ``Cache-Control: no-store`` like the token page.
    It takes a password, so it is a login form too. django-axes already locks a username from one
    address after repeated failures (DRF passes the request to ``authenticate``); DRF's own class
    turns throttling off, and the ``login`` rate bounds guesses spread over many usernames.
    """

    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "login"

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().post(request, *args, **kwargs)
        finally:
            # Axes flags the request it was handed, here DRF's wrapper; its middleware looks at
            # Django's request, so pass the flag on and the caller gets the 429 lockout answer
            # rather than a 400 that looks like a mistyped password.
            if getattr(request, "axes_locked_out", False):
                request._request.axes_locked_out = True
