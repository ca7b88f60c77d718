"""Open a bundle given as a folder or a zip: the one entry point of the command and the admin page.

A zip is extracted (with :func:`evaluator.data.archives.extract_bundle`'s checks against zip-slip
names, links, bombs and the rest) into a private folder under ``ARENA_DATA_DIR``, which is removed
again when the import ends; a folder is checked in place (no links, no special files) and read
where it is.
"""

from __future__ import annotations

import shutil
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from bundles.manifest import BundleInvalid, Problem
from evaluator.data.archives import ArchiveError, check_bundle_folder, extract_bundle

UNPACKED = ".bundle-unpacked"


@contextmanager
def opened_bundle(source: str | Path) -> Iterator[Path]:
    """The bundle's root folder, for the duration of the ``with`` block; BundleInvalid when refused."""
    source = Path(source)
    if source.is_dir():
        try:
            yield check_bundle_folder(source)
        except ArchiveError as exc:
            raise BundleInvalid([Problem("", str(exc))]) from None
        return
    if not source.is_file():
        raise BundleInvalid([Problem("", f"{source} is neither a bundle folder nor a zip file")])
    if not zipfile.is_zipfile(source):
        raise BundleInvalid([Problem("", f"{source.name} is not a zip archive")])
    dest = Path(settings.ARENA_DATA_DIR) / UNPACKED / uuid.uuid4().hex
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            root = extract_bundle(source, dest)
        except ArchiveError as exc:
            raise BundleInvalid([Problem("", str(exc))]) from None
        yield root
    finally:
        shutil.rmtree(dest, ignore_errors=True)
