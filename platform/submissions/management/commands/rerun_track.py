"""``manage.py rerun_track``: rotate a track's suite version and evaluate its submissions again under it.

Results are keyed by suite version, so after a change to what a track measures (new hidden data, a new
attack suite) the version is bumped and every finished submission is queued again; the leaderboard
shows the new version's scores as the evaluations finish. Submissions that already have a successful
evaluation under the track's current version are left alone, so the command can be run again (for
example after jobs that were running during the bump have finished) without evaluating anything twice.
Re-runs are not charged to anyone's quota.

``--attack-suite attacks-2`` moves the track to another registered attack suite at the same time; it
needs a new suite version (``--bump`` or ``--suite-version``), because results are keyed by suite
version: the old runs, with their numbers and provenance, stay stored under the old version.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from benchmarks.models import Track
from evaluator.attacks.suites import SUITES
from submissions import services
from submissions.models import EvaluationRun, IllegalTransition, Submission


def bumped(version: str) -> str:
    """The next suite version: the trailing number plus one ("demo-1" -> "demo-2"), else "-2" appended."""
    match = re.fullmatch(r"(.*?)(\d+)", version)
    if match is None:
        return f"{version}-2"
    prefix, number = match.groups()
    return f"{prefix}{int(number) + 1}"


class Command(BaseCommand):
    help = ("Set or bump a track's suite version and queue every finished submission of the track again "
            "(those without a successful evaluation under the current version).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("track", help="the track's slug")
        version = parser.add_mutually_exclusive_group()
        version.add_argument("--suite-version", help="set the track's suite version to this first")
        version.add_argument("--bump", action="store_true",
                             help="increase the trailing number of the suite version first (clean-1 -> clean-2)")
        parser.add_argument("--attack-suite", choices=sorted(SUITES),
                            help="move the track to this attack suite too (needs --bump or --suite-version)")
        parser.add_argument("--include-failed", action="store_true",
                            help="queue failed submissions again too (default: finished ones only)")
        parser.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            track = Track.objects.get(slug=options["track"])
        except Track.DoesNotExist:
            raise CommandError(f"No track {options['track']!r}.") from None
        old = track.suite_version
        new = options["suite_version"] or (bumped(old) if options["bump"] else old)
        if len(new) > Track._meta.get_field("suite_version").max_length:
            raise CommandError(f"Suite version {new!r} is too long.")
        suite = options["attack_suite"]
        if suite is not None and suite != track.attack_suite and new == old:
            raise CommandError(f"Moving {track.slug} to attack suite {suite} needs a new suite version (--bump or "
                               f"--suite-version): results are keyed by it, and {old} already holds "
                               f"{track.attack_suite} numbers.")
        dry = options["dry_run"]
        states = [Submission.State.FINISHED] + ([Submission.State.FAILED] if options["include_failed"] else [])
        current = EvaluationRun.objects.filter(suite_version=new, ok=True).values("submission")
        todo = list(
            Submission.objects.filter(track=track, state__in=states).exclude(pk__in=current)
            .order_by("-is_baseline", "created_at", "id")  # baselines first: the refits follow them
        )
        busy = Submission.objects.filter(track=track, state__in=[Submission.State.QUEUED, Submission.State.RUNNING])
        prefix = "[dry run] " if dry else ""
        if new != old:
            self.stdout.write(f"{prefix}{track.slug}: suite version {old} -> {new}")
            if not dry:
                Track.objects.filter(pk=track.pk).update(suite_version=new)
        if suite is not None and suite != track.attack_suite:
            self.stdout.write(f"{prefix}{track.slug}: attack suite {track.attack_suite} -> {suite}")
            if not dry:
                Track.objects.filter(pk=track.pk).update(attack_suite=suite)
        queued = 0
        for submission in todo:
            if dry:
                self.stdout.write(f"{prefix}would queue {submission.public_id} {submission.name}")
                continue
            try:
                services.rerun(submission)
            except IllegalTransition:  # its state changed meanwhile (cancelled, requeued by its owner)
                state = Submission.objects.get(pk=submission.pk).state
                self.stderr.write(f"skipped {submission.public_id}: it is {state}")
                continue
            queued += 1
            if options["verbosity"] >= 2:
                self.stdout.write(f"queued {submission.public_id} {submission.name}")
        count = len(todo) if dry else queued
        self.stdout.write(f"{prefix}{track.slug}: {count} submission(s) {'to queue' if dry else 'queued'} "
                          f"under suite {new}")
        if busy.exists():
            self.stdout.write(f"{busy.count()} submission(s) of {track.slug} are queued or running now; those that "
                              f"started under the old version can be queued by running this command again "
                              f"(without --bump) once they have finished.")
