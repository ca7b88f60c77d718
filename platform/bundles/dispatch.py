"""Sending a bundle upload's check or import to the workers: the web side of :mod:`bundles.tasks`.

The tasks are addressed by name, so the web server never imports the importer (which loads torch
through the evaluation-set code: hundreds of MB in every gunicorn worker) nor anything else of the
worker side. Celery's autodiscovery registers :mod:`bundles.tasks` in every worker, and the tests
import it to run the tasks in place.

Messages go to a queue of their own, ``ARENA_BUNDLE_QUEUE`` (``bundles``), not to the evaluation
queue: the tasks write ``ARENA_DATA_DIR`` (staging, the sets) and the media (baselines, the zip's
deletion), which the evaluation workers of the shipped Compose and Kubernetes deployments mount
read-only so that no evaluation can alter hidden data. A worker of the bundle queue mounts both
writable: Compose's ``bundle-worker``, Kubernetes' ``arena-worker-bundles``, systemd's
``arena-worker@bundles``; ``scripts/demo``'s one worker consumes both queues. Each message is sent once
its row change commits (the callers use ``transaction.on_commit``), so a worker never looks for a row
it cannot see yet.
"""

from __future__ import annotations

import logging

from celery import signature
from django.conf import settings
from django.utils import timezone

from bundles.models import BundleUpload, discard_archive

logger = logging.getLogger(__name__)

#: The Celery names of :func:`bundles.tasks.check_upload` and :func:`bundles.tasks.import_upload`.
CHECK_TASK = "bundles.check"
IMPORT_TASK = "bundles.import"


def bundle_queue() -> str:
    """The queue the tasks go to (``ARENA_BUNDLE_QUEUE``): the bundle worker's, which may write the data volume."""
    return settings.ARENA_BUNDLE_QUEUE


def publish(task: str, upload_id: int, queue: str) -> None:
    """Hand one message to the broker (what the tests stand in for)."""
    signature(task, args=(upload_id,)).apply_async(queue=queue)


def send_check(upload_id: int) -> None:
    """Queue the dry run of a new upload. When the broker does not take it, the upload fails with a sentence
    (and its zip goes) rather than showing "Checking…" forever."""
    try:
        publish(CHECK_TASK, upload_id, bundle_queue())
    except Exception as exc:  # the broker is down or refuses
        logger.exception("bundle upload %s: the check could not be queued", upload_id)
        BundleUpload.objects.filter(pk=upload_id, state=BundleUpload.State.CHECKING).update(
            state=BundleUpload.State.FAILED, updated_at=timezone.now(),
            message=f"The check could not be queued for a worker ({type(exc).__name__}: {short(exc)}); "
                    "upload the bundle again.")
        discard_archive(upload_id)


def send_import(upload_id: int) -> None:
    """Queue the import of a confirmed upload. When the broker does not take it, the confirmation is undone,
    so that staff can confirm again."""
    try:
        publish(IMPORT_TASK, upload_id, bundle_queue())
    except Exception as exc:  # the broker is down or refuses
        logger.exception("bundle upload %s: the import could not be queued", upload_id)
        BundleUpload.objects.filter(pk=upload_id, state=BundleUpload.State.CHECKED).update(
            confirmed_at=None, confirmed_by=None, updated_at=timezone.now(),
            message=f"The import could not be queued for a worker ({type(exc).__name__}: {short(exc)}); "
                    "nothing was imported. Confirm again.")


def short(exc: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, cut to ``limit`` characters: for a sentence on a page, not a log."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
