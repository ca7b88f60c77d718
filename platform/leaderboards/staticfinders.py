"""Serve the plotly.js bundle that ships inside the plotly Python package as a static file.

Pages draw their figures with plotly.js; taking it from the installed package (instead of a CDN
or a copy in the repository) keeps an offline install working and the JS in step with the
Python side that builds the figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

#: The URL path under STATIC_URL the bundle is served at.
PLOTLY_STATIC_PATH = "arena/vendor/plotly.min.js"


def _bundle_dir() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data"


class PlotlyJsFinder(BaseFinder):
    """Exposes exactly one file, ``arena/vendor/plotly.min.js``, for runserver, tests and collectstatic."""

    def check(self, **kwargs: Any) -> list:
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> str | list[str]:
        if path != PLOTLY_STATIC_PATH:
            return [] if (find_all or kwargs.get("all")) else ""
        found = str(_bundle_dir() / "plotly.min.js")
        return [found] if (find_all or kwargs.get("all")) else found

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        storage = FileSystemStorage(location=str(_bundle_dir()))
        storage.prefix = str(Path(PLOTLY_STATIC_PATH).parent)  # collectstatic writes to prefix/path
        yield "plotly.min.js", storage
