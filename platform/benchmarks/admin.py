"""Admin: operators manage benchmarks, tracks and the evaluation sets behind them."""

from django.contrib import admin

from benchmarks.models import Benchmark, EvaluationSet, Track


class TrackInline(admin.TabularInline):
    model = Track
    extra = 0
    fields = ["slug", "name", "task_kind", "suite_version", "is_public"]
    show_change_link = True


class EvaluationSetInline(admin.TabularInline):
    model = EvaluationSet
    extra = 0
    fields = ["name", "version", "role", "shift_kind", "is_hidden", "relative_path", "sha256", "num_examples"]


@admin.register(Benchmark)
class BenchmarkAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [TrackInline]


@admin.register(Track)
class TrackAdmin(admin.ModelAdmin):
    list_display = ["name", "benchmark", "task_kind", "input_channels", "input_height", "input_width",
                    "suite_version", "is_public"]
    list_filter = ["benchmark", "task_kind", "is_public"]
    inlines = [EvaluationSetInline]


@admin.register(EvaluationSet)
class EvaluationSetAdmin(admin.ModelAdmin):
    list_display = ["name", "track", "version", "role", "shift_kind", "num_examples", "is_hidden"]
    list_filter = ["track", "role", "is_hidden"]
