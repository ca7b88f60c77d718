"""``python -m arena_client``: see :mod:`arena_client.cli`."""

import sys

from arena_client.cli import main

sys.exit(main())
