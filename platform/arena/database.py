"""The inverse of dj_database_url: a DATABASE_URL for the database Django is connected to.

Tests and benchmarks start worker and server processes on the test database this process
created; those processes read their database from DATABASE_URL, as in deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def database_url(settings_dict: Mapping[str, Any], application_name: str = "") -> str:
    """A URL naming ``settings_dict``'s database; on PostgreSQL, connections can carry ``application_name``."""
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    auth = settings_dict["USER"] + (f":{settings_dict['PASSWORD']}" if settings_dict["PASSWORD"] else "")
    host = f"{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}"
    query = f"?application_name={application_name}" if application_name else ""
    return f"postgres://{auth}@{host}/{settings_dict['NAME']}{query}"
