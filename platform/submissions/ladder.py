"""The Ladder (Blum and Hardt, ICML 2015): release a new score only when it is a real improvement.

A researcher who may submit many times and sees every hidden-set score can climb the
leaderboard by noise alone: keep whatever scored well by chance, and the hidden set turns into
a training signal. The Ladder closes that route. On a track that turns it on, each user's
released best moves only when a new submission beats it by more than a margin (the track's
``ladder_margin``, or the new score's own confidence-interval half-width when that is 0);
otherwise the new submission's scores are withheld from everyone but staff, and its owner learns
only that it was not a significant improvement. Baselines are not subject to it.

The note its owner reads says that in words, with no number: the margin, when it is the withheld
score's own half-width, gives the score away (a Clopper-Pearson half-width and the set's size
determine the accuracy), and any other number taken from the withheld score would leak a part
of it. The notes are a fixed set (:data:`NOTES`), so a page can check that what it shows is one.
"""

from __future__ import annotations

from submissions.models import Result, Submission

#: The note of a first released score on a track.
FIRST_NOTE = "First released score on this track."
#: The note of a released improvement.
RELEASED_NOTE = "Released: a significant improvement on your previous best on this track."
#: The note of a withheld score: why, in words only.
WITHHELD_NOTE = ("Withheld: this score did not beat your best release on this track by more than the track's "
                 "margin, so it is not released (the track's Ladder rule).")
#: Every note the Ladder writes; nothing else is ever a Ladder note.
NOTES = frozenset({FIRST_NOTE, RELEASED_NOTE, WITHHELD_NOTE})


def shown_note(submission: Submission) -> str:
    """The Ladder note a page may show for ``submission``: one of :data:`NOTES`, or nothing.

    Chosen by the release state, not copied from the stored text: a note stored before the notes
    lost their numbers ("... margin (0.01253 in accuracy) ...") is never shown again, and a
    submission staff released by hand does not say it was withheld.
    """
    if not submission.released:
        return WITHHELD_NOTE
    return submission.ladder_note if submission.ladder_note in (FIRST_NOTE, RELEASED_NOTE) else ""


def _headline(submission: Submission) -> Result | None:
    track = submission.track
    clean = track.clean_set()
    if clean is None:
        return None
    return Result.objects.filter(submission=submission, evaluation_set=clean, metric=track.headline_metric,
                                 suite_version=track.suite_version).first()


def best_released(submission: Submission) -> float | None:
    """The owner's best released headline score on the track (current suite), other than this one."""
    track = submission.track
    clean = track.clean_set()
    if clean is None:
        return None
    values = Result.objects.filter(
        submission__owner=submission.owner, submission__track=track, submission__released=True,
        submission__state=Submission.State.FINISHED, evaluation_set=clean, metric=track.headline_metric,
        suite_version=track.suite_version,
    ).exclude(submission=submission).values_list("value", flat=True)
    return max(values, default=None)


def apply_ladder(submission: Submission) -> None:
    """Decide, once the results are written, whether this submission's scores are released."""
    track = submission.track
    if not track.ladder or submission.is_baseline:
        released, note = True, ""
    else:
        headline = _headline(submission)
        best = best_released(submission)
        if headline is None or best is None:
            released, note = True, FIRST_NOTE
        else:
            half_width = ((headline.ci_high - headline.ci_low) / 2
                          if headline.ci_low is not None and headline.ci_high is not None else 0.0)
            margin = track.ladder_margin or half_width
            released = headline.value > best + margin
            # No number in either note: the margin may be the withheld score's own half-width.
            note = RELEASED_NOTE if released else WITHHELD_NOTE
    Submission.objects.filter(pk=submission.pk).update(released=released, ladder_note=note)
    submission.released, submission.ladder_note = released, note
