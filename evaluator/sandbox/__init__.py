"""Running one job in an isolated child process; see :mod:`evaluator.sandbox.launch`.

``availability`` (can this host sandbox), ``limits`` (what a job may use), ``environment`` (what a
job's processes inherit), ``bubblewrap`` (the sandbox's command line), ``supervision`` (starting
and watching a child), ``exit_reasons`` (why a child ended) and ``launch`` (one job, end to end).
"""

from evaluator.sandbox.availability import SandboxUnavailable, bubblewrap_path
from evaluator.sandbox.launch import run_sandboxed
from evaluator.sandbox.limits import SandboxLimits

__all__ = ["SandboxLimits", "SandboxUnavailable", "bubblewrap_path", "run_sandboxed"]
