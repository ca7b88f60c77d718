"""The model process's entry point (``python -m evaluator.remote``): priority first, then torch.

The model process runs in a session of its own (bubblewrap's ``--new-session``), and with scheduler
autogroups a new session starts at full weight against every other session on the host, whatever
the process's own niceness. Importing torch and the evaluator costs about 0.9 s of CPU per job: at
full weight, on a host that also serves the site, that second took half of two cores from the web
server at each job's start. So the session gets the niceness the process inherited from the scorer
here, before :mod:`evaluator.remote.server` (and torch) is imported, and before any byte of the
submission is read: submitted code cannot take it back (raising priority needs a capability).
"""

import os
import sys

from evaluator.sandbox.limits import lower_session_priority

lower_session_priority(os.nice(0))

from evaluator.remote.server import main  # noqa: E402 (after the priority, on purpose)

sys.exit(main())
