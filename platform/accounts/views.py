"""Sign-up, the API token page, and the owner's actions on a submission (visibility, withdrawal)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from rest_framework.authtoken.models import Token

from accounts.models import Withdrawal
from submissions.models import Submission


def signup(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = UserCreationForm(request.POST)
        if form.is_valid():
            user = form.save()
            login(request, user)
            return redirect("home")
    else:
        form = UserCreationForm()
    return render(request, "registration/signup.html", {"form": form})


@login_required
def api_token(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":  # rotate
        Token.objects.filter(user=request.user).delete()
    token, _ = Token.objects.get_or_create(user=request.user)
    return render(request, "accounts/token.html", {"token": token})


def _owned(request: HttpRequest, public_id) -> Submission:
    """The submission if the user owns it or is staff; anyone else gets a 404 (no existence leak)."""
    submission = get_object_or_404(Submission, public_id=public_id)
    if not (request.user.is_staff or submission.owner_id == request.user.pk):
        raise Http404("No such submission.")
    return submission


@login_required
@require_POST
def set_visibility(request: HttpRequest, public_id) -> HttpResponse:
    """Make a submission public (listed) or private (seen by its owner and staff only)."""
    submission = _owned(request, public_id)
    public = request.POST.get("public") == "1"
    if public and Withdrawal.objects.filter(submission=submission).exists():
        messages.error(request, "A withdrawn model stays private: restore it to the leaderboards first.")
    else:
        Submission.objects.filter(pk=submission.pk).update(is_public=public)
        messages.info(request, "The model is now public." if public else "The model is now private.")
    return redirect(submission)


@login_required
@require_POST
def withdraw(request: HttpRequest, public_id) -> HttpResponse:
    """Withdraw a submission from the leaderboards (it becomes private), or restore it (it stays private)."""
    submission = _owned(request, public_id)
    if request.POST.get("action") == "restore":
        Withdrawal.objects.filter(submission=submission).delete()
        messages.info(request, "The model is no longer withdrawn; make it public to list it again.")
    else:
        with transaction.atomic():
            Withdrawal.objects.get_or_create(submission=submission, defaults={"withdrawn_by": request.user})
            Submission.objects.filter(pk=submission.pk).update(is_public=False)
        messages.info(request, "The model was withdrawn: it no longer appears on leaderboards or plots.")
    return redirect(submission)
