"""The web upload form."""

from __future__ import annotations

from django import forms
from django.conf import settings

from benchmarks.models import Track
from submissions.models import Submission


class SubmissionForm(forms.ModelForm):
    track = forms.ModelChoiceField(queryset=Track.objects.filter(is_public=True).select_related("benchmark"))
    artifact = forms.FileField(
        help_text="A .pt2 archive from torch.export.save (recommended), or safetensors weights for a zoo architecture."
    )
    paper_url = forms.URLField(required=False, assume_scheme="https", label="Paper URL")
    code_url = forms.URLField(required=False, assume_scheme="https", label="Code URL")
    artifact_format = forms.ChoiceField(
        choices=[("", "Detect from the file"), *Submission.Format.choices], required=False, label="Format"
    )

    class Meta:
        model = Submission
        fields = [
            "track", "name", "artifact", "artifact_format", "zoo_architecture", "architecture", "paper_url",
            "code_url", "training_data", "extra_data", "license", "is_public",
        ]
        labels = {"zoo_architecture": "Zoo architecture (safetensors only)", "is_public": "Show on the leaderboard"}

    def clean_artifact(self):
        artifact = self.cleaned_data["artifact"]
        if artifact.size > settings.ARENA_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(
                f"The file is larger than the limit of {settings.ARENA_MAX_UPLOAD_BYTES // 1024**2} MiB."
            )
        return artifact

    def clean(self):
        data = super().clean()
        fmt = data.get("artifact_format")
        if fmt == Submission.Format.SAFETENSORS and not data.get("zoo_architecture"):
            self.add_error("zoo_architecture", "Safetensors weights need the zoo architecture they belong to.")
        return data
