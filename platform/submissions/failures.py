"""The failure table as the platform uses it: the evaluator's rows plus the codes only the platform produces.

One table (:data:`FAILURES`) answers, for every stored ``failure_code``, the headline the pages and
the API show and whether the failure is the platform's fault (refunded to the quota). The evaluator
owns the codes it can produce (:mod:`evaluator.failures`); this module adds the platform's own.
"""

from __future__ import annotations

from collections.abc import Mapping

from evaluator import failures as evaluator_failures
from evaluator.failures import Failure, failure_table
from submissions.models import Submission

#: A job that ran out of its time budget: its finished stages are kept, the submission is left incomplete.
OUT_OF_TIME = "out_of_time"

#: A job given up after its workers vanished ``ARENA_MAX_ATTEMPTS`` times (written by submissions.recovery).
WORKER_LOST = "worker_lost"

#: Every failure code the platform stores, with its headline and whether it is the platform's fault.
FAILURES: Mapping[str, Failure] = failure_table(
    *evaluator_failures.FAILURES.values(),
    Failure(WORKER_LOST, "The worker evaluating this model stopped responding, so the evaluation was given up.",
            platform_fault=True),
)


def is_platform_fault(code: str) -> bool:
    """Whether a stored failure code is the platform's fault (its charge is refunded)."""
    return evaluator_failures.is_platform_fault(code, FAILURES)


def headline(code: str) -> str:
    return evaluator_failures.headline(code, FAILURES)


def failure_message(code: str, detail: str) -> str:
    """The sentence stored with a failure: the code's headline, then the detail the platform or evaluator wrote."""
    first = headline(code)
    return f"{first} {detail}".strip() if detail and detail != first else first


def failure_text(submission: Submission) -> str:
    """The failure sentence pages and the API show: the headline, and the stored sentence only when the
    platform composed it.

    :func:`failure_message` writes the code's headline followed by the evaluator's sentence (written
    by platform code; the evaluator keeps model text out of it), and a cancellation writes
    "Cancelled.". A stored reason that is neither is replaced by the headline alone.
    """
    reason = submission.failure_reason or ""
    if submission.state == Submission.State.CANCELLED:
        return headline("cancelled") if reason != "Cancelled." else reason
    if submission.state not in (Submission.State.FAILED, Submission.State.INCOMPLETE):
        return ""
    first = headline(submission.failure_code)
    return reason if reason.startswith(first) and first != evaluator_failures.UNKNOWN_HEADLINE else first
