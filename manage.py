#!/usr/bin/env python
"""Django's command-line utility. Puts platform/ on the path; nothing else.

platform/ is a plain folder (no __init__.py), so ``import platform`` keeps meaning the
standard-library module; the Django project and apps inside it are imported by their own names.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "platform"))

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arena.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
