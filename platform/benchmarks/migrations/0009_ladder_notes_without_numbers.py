"""Rewrite stored Ladder notes of withheld submissions to the note without numbers.

Until now a withheld submission's note printed the margin it missed, and with a track margin of 0
that margin is the withheld score's own interval half-width, from which the score follows. The
API returns the stored note as it is, so rewriting the code that writes new notes is not enough:
the old rows are rewritten here. The Ladder is a track rule (``Track.ladder``), kept with the
benchmarks app; the notes it writes live on the submissions.
"""

from django.db import migrations

#: A frozen copy of submissions.ladder.WITHHELD_NOTE (a migration must not change with the code).
WITHHELD_NOTE = ("Withheld: this score did not beat your best release on this track by more than the track's "
                 "margin, so it is not released (the track's Ladder rule).")


def rewrite_withheld_notes(apps, schema_editor) -> None:
    """Every withheld submission gets the note that says why in words, and nothing from its score."""
    Submission = apps.get_model("submissions", "Submission")
    Submission.objects.filter(released=False).exclude(ladder_note=WITHHELD_NOTE).update(ladder_note=WITHHELD_NOTE)


class Migration(migrations.Migration):

    dependencies = [
        ("benchmarks", "0008_track_queue"),
        ("submissions", "0003_ladder"),
    ]

    operations = [
        migrations.RunPython(rewrite_withheld_notes, migrations.RunPython.noop),
    ]
