"""Benchmarks, their tracks, and the hidden evaluation sets each track scores on.

A track fixes everything that makes scores comparable: the task kind, the input the model is
fed, the evaluation sets (with content hashes) and the suite version. Results are always tagged
with the suite version, so changing what a track measures means bumping that version.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse

from evaluator.attacks.suites import SUITES


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
    threat_models = models.JSONField(
        default=list, blank=True,
        help_text='Attack threat models, e.g. [{"norm": "Linf", "eps": 0.3, "label": "Linf-0.3"}]; empty: no attacks.',
    )
    attack_points = models.PositiveIntegerField(default=1000, help_text="Clean-set points the attack suite attacks.")
    attack_suite = models.CharField(max_length=40, default="attacks-2",
                                    help_text="Registered attack-suite configuration (bump suite_version with it).")
    reliability_points = models.PositiveIntegerField(
        default=200, help_text="Attacked points the reliability checks run on (0: no checks)."
    )
    generator = models.JSONField(
        default=dict, blank=True,
        help_text='Detector tracks: the generator of the in-distribution fakes, {"architecture", "relative_path" '
                  '(under ARENA_DATA_DIR), "sha256", "latent_dim"}; empty: no universal attacks.',
    )
    detector_attacks = models.JSONField(
        default=dict, blank=True,
        help_text="Detector tracks: overrides of the attack suite's parameters (evaluator DetectorAttackSpec); "
                  "empty on a detector track with a generator: the defaults. Set {\"enabled\": false} for none.",
    )
    ladder = models.BooleanField(
        default=False,
        help_text="Release a user's new score only when it beats their best released score on this track by more "
                  "than the noise (the Ladder of Blum and Hardt 2015); other submissions are withheld.",
    )
    ladder_margin = models.FloatField(
        default=0.0, validators=[MinValueValidator(0.0)],
        help_text="The Ladder's margin on the headline metric (e.g. 0.005 for half a point of accuracy); "
                  "0: the new score's own confidence-interval half-width.",
    )
    baseline_min_accuracy = models.FloatField(
        default=0.0, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Standard baselines below this clean accuracy (a fraction, e.g. 0.5) are left out of the "
                  "effective-robustness lines, as the ImageNet testbed fits only models above a floor; baselines "
                  "at 0% or 100% are always left out (their logit is infinite). Applies from the next refit "
                  "(manage.py refit_baselines, or the next baseline result).",
    )
    queue = models.CharField(
        max_length=100, blank=True, validators=[RegexValidator(r"^[A-Za-z0-9_.-]*$", "Letters, digits, _ . - only.")],
        help_text="Celery queue this track's evaluations go to (workers consume the queues they are given with -Q), "
                  "so a heavy track cannot starve a light one; empty: the default queue.",
    )
    queue_priority = models.IntegerField(
        default=0,
        help_text="Raises (positive) or lowers (negative) this track's jobs in the evaluation queue against other "
                  "tracks' on the same Celery queue; within a priority, jobs are served first come, first served "
                  "with fair share between owners (docs/operations.md, 'The evaluation queue').",
    )
    notes = models.TextField(
        blank=True,
        help_text="What this installation's track lacks or does differently, shown on the track page (for example a "
                  "shift set whose data is not in the data mirror); written by the builder.",
    )
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

    def clean(self) -> None:
        """Refuse threat models the evaluator cannot run, before a job is ever built from them."""
        from django.core.exceptions import ValidationError

        if not isinstance(self.threat_models, list):
            raise ValidationError({"threat_models": "A list of threat models."})
        labels = set()
        for threat in self.threat_models:
            if not isinstance(threat, dict) or set(threat) != {"norm", "eps", "label"}:
                raise ValidationError({"threat_models": 'Each entry needs exactly "norm", "eps" and "label".'})
            if threat["norm"] not in {"Linf", "L2"} or not isinstance(threat["eps"], int | float) or threat["eps"] <= 0:
                raise ValidationError({"threat_models": f"Bad threat model {threat}: norm Linf or L2, eps > 0."})
            if threat["label"] in labels:
                raise ValidationError({"threat_models": f"Duplicate label {threat['label']}."})
            labels.add(threat["label"])
        if self.attack_suite not in SUITES:
            raise ValidationError({"attack_suite": f"Unknown attack suite {self.attack_suite!r}; registered: "
                                                   f"{', '.join(sorted(SUITES))}."})

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
        #: Inputs crafted against another model and only then scored by the submission (black box).
        ADVERSARIAL = "adversarial", "adversarial (transfer)"

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
    metadata = models.JSONField(
        default=dict, blank=True,
        help_text='Provenance for the track page, e.g. a corruption set\'s {"definition", "reference", "constants", '
                  '"per_cell", "cells"}; the set\'s file carries the same in its header.',
    )

    class Meta:
        ordering = ["track", "role", "name"]
        constraints = [models.UniqueConstraint(fields=["track", "name"], name="unique_set_name_per_track")]

    def __str__(self) -> str:
        return f"{self.track.slug}:{self.name} v{self.version}"

    @property
    def path(self) -> Path:
        return Path(settings.ARENA_DATA_DIR) / self.relative_path


class BaselineFit(models.Model):
    """The effective-robustness line of one (track, shift set, transform), as a versioned artifact.

    It is refitted whenever the set of standard baselines with results changes; ``fit_version``
    is a content hash of the points, the transform and the bootstrap seed, so every effective
    robustness number can say which line it was measured against.
    """

    class Transform(models.TextChoices):
        LOGIT = "logit", "logit (Taori et al. 2020)"
        PROBIT = "probit", "probit (Recht et al. 2019)"

    track = models.ForeignKey(Track, on_delete=models.CASCADE, related_name="baseline_fits")
    clean_set = models.ForeignKey(EvaluationSet, on_delete=models.CASCADE, related_name="+")
    shift_set = models.ForeignKey(EvaluationSet, on_delete=models.CASCADE, related_name="baseline_fits")
    transform = models.CharField(max_length=10, choices=Transform.choices)
    suite_version = models.CharField(max_length=40)
    fit_version = models.CharField(max_length=64)
    slope = models.FloatField()
    intercept = models.FloatField()
    n_models = models.PositiveIntegerField()
    fit = models.JSONField(help_text="The full fit: points, left-out points, bootstrap sample, r2, content hash "
                               "(evaluator LineFit.to_dict()).")
    is_current = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["shift_set", "transform", "fit_version"], name="one_row_per_fit_version"),
        ]

    def __str__(self) -> str:
        return f"{self.shift_set} {self.transform} fit over {self.n_models} models ({self.fit_version[:8]})"
