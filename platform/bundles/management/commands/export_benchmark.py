"""``manage.py export_benchmark SLUG DEST``: the public part of a benchmark (bundles.exporter)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from benchmarks.models import Benchmark
from bundles.exporter import export_benchmark


class Command(BaseCommand):
    help = ("Write a benchmark's public part (manifest without secrets or hidden data, public splits, baseline "
            "scores with intervals and provenance) to a new folder or DEST.zip.")

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("dest")

    def handle(self, slug, dest, **options):
        if not Benchmark.objects.filter(slug=slug).exists():
            raise CommandError(f"no benchmark {slug!r}")
        try:
            path = export_benchmark(slug, dest)
        except FileExistsError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"exported {slug} to {path}"))
