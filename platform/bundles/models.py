"""What each bundle import registered: the track's content digest, suite version and manifest.

One row per (track, import). The newest row of a track is what the importer compares a new
bundle with: the same digest leaves the track as it is; a different one registers the new sets
under a new suite version whenever the old one has published results, so no published score is
ever silently re-scored. The stored manifest section is what ``export_benchmark`` publishes (less
its hidden data) and what ``import_benchmark --deferred`` completes.
"""

from __future__ import annotations

from django.db import models


class BundleImport(models.Model):
    track = models.ForeignKey("benchmarks.Track", on_delete=models.CASCADE, related_name="bundle_imports")
    digest = models.CharField(max_length=64, help_text="sha256 of what decides the track's scores: its settings "
                                                       "as imported, each set's sha256 (or deferred recipe), each "
                                                       "generator's sha256.")
    suite_version = models.CharField(max_length=40)
    bundle_sha256 = models.CharField(max_length=64, help_text="sha256 of the manifest file as uploaded.")
    manifest = models.JSONField(help_text="The benchmark's and this track's part of the manifest.")
    public_files = models.JSONField(default=dict, blank=True,
                                    help_text="Public parts of splits: name -> {relative_path, sha256, "
                                              "num_examples} under ARENA_DATA_DIR.")
    pending = models.JSONField(default=list, blank=True,
                               help_text="Deferred generated sets not built yet (import_benchmark --deferred).")
    imported_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        get_latest_by = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.track.slug} {self.suite_version} ({self.digest[:8]})"




def public_part(track_slug: str, name: str) -> tuple[str, str] | None:
    """(relative path under ARENA_DATA_DIR, sha256) of a split's public part as its track's newest import wrote it.

    Baseline training and the surrogate detector read the public half from here: a bundle's public
    part is the only data a platform-trained model may see.
    """
    latest = BundleImport.objects.filter(track__slug=track_slug).first()
    entry = (latest.public_files if latest else {}).get(name)
    return None if entry is None else (entry["relative_path"], entry["sha256"])
