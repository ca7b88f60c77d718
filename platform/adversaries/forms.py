"""The attack upload form (the web side of :func:`adversaries.services.create_attack`)."""

from __future__ import annotations

from django import forms
from django.conf import settings

from adversaries.checks import PACKAGE_LIMITS
from adversaries.targets import takes_attacks
from benchmarks.models import Track


def attackable_tracks():
    """The public tracks that take attacks (a classifier's threat models, a detector's Linf budgets)."""
    public = Track.objects.filter(is_public=True).select_related("benchmark")
    return public.filter(pk__in=[t.pk for t in public if takes_attacks(t)])


class AttackForm(forms.Form):
    track = forms.ModelChoiceField(queryset=Track.objects.none())
    name = forms.CharField(max_length=200)
    source = forms.FileField(help_text="One Python file defining attack(model, x, y, threat, budget, generator), or a "
                                       "zip with that file as attack.py beside the modules it imports; see the "
                                       "documentation.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    paper_url = forms.URLField(required=False, assume_scheme="https", label="Paper URL")
    code_url = forms.URLField(required=False, assume_scheme="https", label="Code URL")

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - a Form's own signature
        super().__init__(*args, **kwargs)
        self.fields["track"].queryset = attackable_tracks()

    def clean_source(self) -> bytes:
        upload = self.cleaned_data["source"]
        limit = max(settings.ARENA_ATTACK_MAX_SOURCE_BYTES, PACKAGE_LIMITS.max_total_bytes)
        if upload.size > limit:
            raise forms.ValidationError(
                f"The attack's source is {upload.size:,} bytes; at most {limit:,} are accepted.")
        return upload.read()
