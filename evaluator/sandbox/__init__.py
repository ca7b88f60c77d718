"""Running one job in an isolated child process; see :mod:`evaluator.sandbox.runner`."""

from evaluator.sandbox.runner import SandboxLimits, SandboxUnavailable, bubblewrap_path, run_sandboxed

__all__ = ["SandboxLimits", "SandboxUnavailable", "bubblewrap_path", "run_sandboxed"]
