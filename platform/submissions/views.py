"""Web pages for submitting a model and following its evaluation."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.models import Withdrawal
from submissions import services
from submissions.arrival import made_public
from submissions.failures import failure_text
from submissions.forms import SubmissionForm
from submissions.models import Submission
from submissions.quota import QuotaExceeded, quota_rows
from submissions.scheduling import Place, place, places


def visible_submission(request: HttpRequest, public_id, related: tuple[str, ...] = ("track__benchmark", "owner")
                        ) -> Submission:
    submission = get_object_or_404(Submission.objects.select_related(*related), public_id=public_id)
    if not submission.visible_to(request.user):
        raise Http404("No such submission.")
    return submission


@login_required
def submit(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = SubmissionForm(request.POST, request.FILES)
        if form.is_valid():
            data = {k: v for k, v in form.cleaned_data.items() if k not in {"track", "artifact"}}
            try:
                submission = services.create_submission(
                    request.user, form.cleaned_data["track"], form.cleaned_data["artifact"], **data
                )
            except (QuotaExceeded, services.DuplicateSubmission) as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, "Your model was uploaded and queued for evaluation.")
                return redirect(submission)
    else:
        form = SubmissionForm(initial={"track": request.GET.get("track")})
    return render(request, "submissions/submit.html", {"form": form, "quotas": quota_rows(request.user)})


def queue_sentence(where: Place) -> str:
    """A queued job's place in words: how many jobs start before it, and when it may start."""
    ahead = ("Next to start." if where.ahead == 0 else
             f"{where.ahead} job{'s' if where.ahead != 1 else ''} will start before this one.")
    if where.estimated_start is None:
        return ahead
    return f"{ahead} Estimated start: {where.estimated_start:%Y-%m-%d %H:%M} UTC."


def status_payload(submission: Submission) -> dict:
    where = place(submission)
    return {
        "id": str(submission.public_id),
        "state": submission.state,
        "state_display": submission.get_state_display(),
        "progress": round(submission.progress, 4),
        "stage": submission.progress_stage,
        "queue_position": where.ahead + 1 if where is not None else None,
        "jobs_ahead": where.ahead if where is not None else None,
        "estimated_start": where.estimated_start.isoformat() if where and where.estimated_start else None,
        "queue_text": queue_sentence(where) if where is not None else "",
        "failure_reason": failure_text(submission),
        "terminal": submission.is_terminal,
    }


def status(request: HttpRequest, public_id) -> JsonResponse:
    return JsonResponse(status_payload(visible_submission(request, public_id)))


def _owned_submission(request: HttpRequest, public_id) -> Submission:
    submission = visible_submission(request, public_id)
    if not (request.user.is_staff or submission.owner_id == request.user.pk):
        raise Http404("No such submission.")
    return submission


@login_required
@require_POST
def cancel(request: HttpRequest, public_id) -> HttpResponse:
    submission = _owned_submission(request, public_id)
    if services.cancel(submission):
        messages.info(request, "The evaluation was cancelled.")
    return redirect(submission)


@login_required
@require_POST
def rerun(request: HttpRequest, public_id) -> HttpResponse:
    """Queue a settled submission again: staff only.

    A re-run is a new evaluation on the hidden sets, and it is not charged to the quota; open to
    owners it would be an unmetered second look at the scores. Owners upload again instead (charged).
    """
    submission = _owned_submission(request, public_id)
    if not request.user.is_staff:
        messages.error(request, "Only staff can re-run an evaluation; upload the model again to have it evaluated.")
    elif submission.is_terminal:
        try:
            services.rerun(submission)
        except services.ArtifactDeleted:
            messages.error(request, "This submission cannot be re-run: its file was deleted when it was cancelled.")
        else:
            messages.info(request, "The submission was queued again.")
    return redirect(submission)


@login_required
@require_POST
def resume(request: HttpRequest, public_id) -> HttpResponse:
    """Resume an incomplete evaluation (owner or staff): only its unfinished stages run, and it is not charged."""
    submission = _owned_submission(request, public_id)
    try:
        services.resume(submission)
    except services.NotIncomplete:
        messages.error(request, "Only an incomplete evaluation can be resumed.")
    except services.ArtifactDeleted:
        messages.error(request, "This submission cannot be resumed: its file was deleted.")
    else:
        messages.info(request, "The evaluation was queued again; it resumes after its finished stages.")
    return redirect(submission)


@login_required
def mine(request: HttpRequest) -> HttpResponse:
    submissions = list(Submission.objects.filter(owner=request.user).select_related("track", "withdrawal"))
    where = places(submissions)
    for s in submissions:
        s.queue_text = queue_sentence(where[s.pk]) if s.pk in where else ""
    return render(request, "submissions/mine.html", {"submissions": submissions, "quotas": quota_rows(request.user)})


@login_required
@require_POST
def set_visibility(request: HttpRequest, public_id) -> HttpResponse:
    """Make a submission public (listed) or private (seen by its owner and staff only)."""
    submission = _owned_submission(request, public_id)
    public = request.POST.get("public") == "1"
    if public and Withdrawal.objects.filter(submission=submission).exists():
        messages.error(request, "A withdrawn model stays private: restore it to the leaderboards first.")
    else:
        Submission.objects.filter(pk=submission.pk).update(is_public=public)
        if public:
            submission.refresh_from_db()
            made_public.send(sender=Submission, submission=submission)
        messages.info(request, "The model is now public." if public else "The model is now private.")
    return redirect(submission)


@login_required
@require_POST
def withdraw(request: HttpRequest, public_id) -> HttpResponse:
    """Withdraw a submission from the leaderboards (it becomes private), or restore it (it stays private)."""
    submission = _owned_submission(request, public_id)
    if request.POST.get("action") == "restore":
        Withdrawal.objects.filter(submission=submission).delete()
        messages.info(request, "The model is no longer withdrawn; make it public to list it again.")
    else:
        with transaction.atomic():
            Withdrawal.objects.get_or_create(submission=submission, defaults={"withdrawn_by": request.user})
            Submission.objects.filter(pk=submission.pk).update(is_public=False)
        messages.info(request, "The model was withdrawn: it no longer appears on leaderboards or plots.")
    return redirect(submission)
