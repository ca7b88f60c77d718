"""Baselines are submitted through the same path as any researcher's upload, once per artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files import File
from django.db import transaction

from benchmarks.models import Track
from submissions.models import Submission
from submissions.services import create_submission, sha256_of

BASELINE_USER = "arena-baselines"


def baseline_owner():
    """The account that owns every baseline: no usable password, exempt from submission quotas."""
    user, created = get_user_model().objects.get_or_create(username=BASELINE_USER)
    if created:
        user.set_unusable_password()
        user.save()
    exempt_group = getattr(settings, "ARENA_QUOTA_EXEMPT_GROUP", "")
    if exempt_group:
        group, _ = Group.objects.get_or_create(name=exempt_group)
        user.groups.add(group)
    return user


def submit_baseline(track: Track, path: Path, **metadata: Any) -> Submission | None:
    """Submit ``path`` as a public standard baseline of ``track``; None if that artifact already is one."""
    with path.open("rb") as handle:
        upload = File(handle, name=path.name)
        if Submission.objects.filter(track=track, artifact_sha256=sha256_of(upload), is_baseline=True).exists():
            return None
        metadata = {"model_type": Submission.ModelType.STANDARD, "is_public": True, **metadata, "is_baseline": True}
        with transaction.atomic():
            return create_submission(baseline_owner(), track, upload, **metadata)
