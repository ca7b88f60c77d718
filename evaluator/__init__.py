"""Robustness Arena's evaluator: a plain Python package (torch, numpy, no Django).

The platform hands it a :class:`evaluator.spec.JobSpec` and reads back a
:class:`evaluator.spec.JobResult`; see ``python -m evaluator --help``.
"""

__version__ = "0.1.0"
