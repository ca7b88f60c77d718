"""The web upload form."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.core.files import File

from benchmarks.models import Track
from submissions.models import Submission
from submissions.uploads import check_artifact, check_zoo_architecture, repeated_field_errors


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

    def clean_artifact(self) -> File:
        artifact = self.cleaned_data["artifact"]
        if artifact.size > settings.ARENA_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(
                f"The file is larger than the limit of {settings.ARENA_MAX_UPLOAD_BYTES // 1024**2} MiB."
            )
        return artifact

    def clean_zoo_architecture(self) -> str:
        return check_zoo_architecture(self.cleaned_data["zoo_architecture"])

    def clean(self) -> dict[str, Any]:
        """The same checks as the API's serializer: no repeated field, a file whose content fits what is declared."""
        data = super().clean()
        for name, message in repeated_field_errors(self.data, self.files).items():
            self.add_error(name if name in self.fields else None, message)
        if data.get("artifact") is not None and not self.errors:
            try:
                data["artifact_format"] = check_artifact(data["artifact"], data.get("artifact_format", ""),
                                                         data.get("zoo_architecture", ""))
            except forms.ValidationError as error:
                self.add_error(None, error)
        return data
