"""Benchmarks, their tracks, and the hidden evaluation sets each track scores on.

A track fixes everything that makes scores comparable: the task kind, the input the model is
fed, the evaluation sets (with content hashes) and the suite version. Results are always tagged
with the suite version, so changing what a track measures means bumping that version.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.urls import reverse


class Benchmark(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Track(models.Model):
    class TaskKind(models.TextChoices):
        CLASSIFIER = "classifier", "Image classifier"
        DETECTOR = "detector", "Synthetic-image detector"

    benchmark = models.ForeignKey(Benchmark, on_delete=models.CASCADE, related_name="tracks")
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    task_kind = models.CharField(max_length=20, choices=TaskKind.choices)
    # The input spec: the evaluator always feeds float images in [value_min, value_max].
    input_channels = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    input_height = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    input_width = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    value_min = models.FloatField(default=0.0)
    value_max = models.FloatField(default=1.0)
    num_classes = models.PositiveIntegerField(default=10, help_text="Classes (classifiers); 2 for detectors.")
    class_names = models.JSONField(default=list, blank=True)
    suite_version = models.CharField(
        max_length=40, default="clean-1", help_text="Version of the evaluation and attack suite; tags every result."
    )
    seed = models.PositiveIntegerField(default=0, help_text="Seed of every random choice in the suite.")
    batch_size = models.PositiveIntegerField(default=256)
    time_budget_seconds = models.FloatField(default=60.0, help_text="Seconds a model may take for one batch.")
    is_public = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["benchmark__name", "name"]

    def __str__(self) -> str:
        return f"{self.benchmark.name} / {self.name}"

    def get_absolute_url(self) -> str:
        return reverse("leaderboard", args=[self.slug])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_channels, self.input_height, self.input_width)

    @property
    def headline_metric(self) -> str:
        return "accuracy" if self.task_kind == self.TaskKind.CLASSIFIER else "auc"

    def clean_set(self) -> EvaluationSet | None:
        return self.evaluation_sets.filter(role=EvaluationSet.Role.CLEAN).order_by("id").first()


class EvaluationSet(models.Model):
    """One hidden (or public) evaluation set: a materialised safetensors file and its provenance."""

    class Role(models.TextChoices):
        CLEAN = "clean", "Clean (headline score)"
        SHIFT = "shift", "Distribution shift"

    class ShiftKind(models.TextChoices):
        NONE = "", "None"
        NATURAL = "natural", "Natural shift"
        SYNTHETIC = "synthetic", "Synthetic shift (corruption)"

    track = models.ForeignKey(Track, on_delete=models.CASCADE, related_name="evaluation_sets")
    name = models.SlugField(max_length=80)
    version = models.CharField(max_length=20, default="1")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.CLEAN)
    shift_kind = models.CharField(max_length=12, choices=ShiftKind.choices, blank=True, default="")
    is_hidden = models.BooleanField(default=True, help_text="Hidden sets are never served by the site.")
    relative_path = models.CharField(max_length=300, help_text="Path of the materialised file under ARENA_DATA_DIR.")
    sha256 = models.CharField(max_length=64)
    num_examples = models.PositiveIntegerField()
    source = models.TextField(blank=True, help_text="Where the images come from and how the split was made.")
    license = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["track", "role", "name"]
        constraints = [models.UniqueConstraint(fields=["track", "name"], name="unique_set_name_per_track")]

    def __str__(self) -> str:
        return f"{self.track.slug}:{self.name} v{self.version}"

    @property
    def path(self) -> Path:
        return Path(settings.ARENA_DATA_DIR) / self.relative_path
