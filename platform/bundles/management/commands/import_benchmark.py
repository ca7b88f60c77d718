"""``manage.py import_benchmark PATH_OR_ZIP``: register a benchmark from a bundle (docs/bundles.md)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from bundles.importer import Importer, complete_deferred
from bundles.loading import opened_bundle
from bundles.manifest import BundleInvalid


class Command(BaseCommand):
    help = ("Import a benchmark bundle (a folder or a zip with benchmark.yaml and data): check everything, write "
            "every set, then register the benchmark, its tracks, sets and baselines at once. Nothing is "
            "registered when anything is refused.")

    def add_arguments(self, parser):
        parser.add_argument("bundle", nargs="?", help="bundle folder or .zip")
        parser.add_argument("--dry-run", action="store_true",
                            help="check and compute everything, print the report, register and keep nothing")
        parser.add_argument("--retire-missing", action="store_true",
                            help="remove registered sets the bundle no longer describes (and their scores)")
        parser.add_argument("--keep-missing", action="store_true",
                            help="keep registered sets the bundle no longer describes (the demo: a data set the "
                                 "mirror lost)")
        parser.add_argument("--deferred", action="store_true",
                            help="build the deferred generated sets (e.g. a transfer attack) of imported tracks; "
                                 "with a bundle: build them during the import instead of deferring them")
        parser.add_argument("--track", action="append", dest="tracks",
                            help="with --deferred and no bundle: only this track (repeatable)")

    def handle(self, bundle, dry_run, retire_missing, deferred, keep_missing=False, tracks=None, **options):
        if bundle is None:
            if not deferred:
                raise CommandError("give a bundle folder or zip, or --deferred")
            made = complete_deferred(tracks, log=self.stdout.write)
            self.stdout.write(f"{len(made)} deferred set(s) built")
            return
        try:
            with opened_bundle(bundle) as root:
                report = Importer(root, log=self.stdout.write, retire_missing=retire_missing, keep_missing=keep_missing,
                                  include_deferred=deferred, imported_by="manage.py import_benchmark").run(dry_run)
        except BundleInvalid as exc:
            for problem in exc.problems:
                self.stderr.write(f"  {problem}")
            raise CommandError(f"bundle refused ({len(exc.problems)} problem(s)); nothing was registered") from None
        for line in report.lines():
            self.stdout.write(line)
        self.stdout.write(self.style.SUCCESS("dry run: nothing registered" if dry_run else "imported"))
