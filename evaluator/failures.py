"""Every way an evaluation can fail, once: the code, the headline a researcher reads, and whose fault it is.

The codes are stable and machine-readable (the platform stores them, the API returns them). The
headline is the platform's own sentence, shown before (or instead of) the evaluator's detail: the
page never shows text a model could have chosen. ``platform_fault`` marks failures caused by the
platform (bad hidden data, a broken sandbox, its own bug) rather than by the submitted model; only
those are refunded to the researcher's quota.

The platform adds the few codes only it can produce (a worker lost mid-job) in
``submissions.failures``; a test checks that every code either side can produce has a row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Failure:
    """One row of the failure table."""

    code: str
    headline: str
    platform_fault: bool = False


#: The headline of a code the table does not know (a stored row from an older version, say).
UNKNOWN_HEADLINE = "The evaluation failed."


def failure_table(*rows: Failure) -> Mapping[str, Failure]:
    """A read-only code -> row mapping; a code given twice is a programming error, refused at import."""
    table: dict[str, Failure] = {}
    for row in rows:
        if row.code in table:
            raise ValueError(f"failure code {row.code!r} is defined twice")
        table[row.code] = row
    return MappingProxyType(table)


_PLATFORM_FAULT = "(a platform fault; it does not count)"

#: The codes an attack submission's run can end with (evaluator.adversary.runner).
ATTACK_CODES = ("attack_error", "attack_crashed", "attack_timeout", "over_budget", "protocol", "wrong_output",
                "wrong_shape", "non_finite", "out_of_box", "out_of_ball", "bad_query")

#: Codes the evaluator (the scorer, the model process and the sandbox around them) can end a job with.
FAILURES: Mapping[str, Failure] = failure_table(
    # The uploaded file.
    Failure("corrupt_artifact", "The uploaded file could not be read as a model."),
    Failure("unsupported_format", "The uploaded file is not in a supported format (.pt2 or safetensors)."),
    Failure("unsafe_format", "The uploaded file is in a format that runs code when loaded, which is refused."),
    Failure("format_mismatch", "The file's content does not match the format declared with it."),
    Failure("unknown_architecture", "The safetensors weights name an architecture the model zoo does not have."),
    Failure("weights_mismatch", "The safetensors weights do not fit the chosen zoo architecture."),
    Failure("export_failed", "The model could not be exported to a .pt2 program with a dynamic batch size."),
    Failure("model_too_large", "The model's program is larger than the platform accepts."),
    # The model's behaviour.
    Failure("wrong_input_shape", "The model does not accept the track's input shape."),
    Failure("wrong_output_shape", "The model's output has the wrong shape."),
    Failure("wrong_dtype", "The model's output is not a floating-point tensor."),
    Failure("non_finite_output", "The model returned NaN or infinite values."),
    Failure("nondeterministic", "The model gave different outputs for identical inputs."),
    Failure("batch_dependent", "The model's output for an image depended on the other images in its batch."),
    Failure("model_error", "The model raised an error during evaluation."),
    Failure("model_crashed", "The model's process ended unexpectedly."),
    Failure("too_slow", "The model is slower than the track's time budget."),
    # Limits the sandbox enforces.
    Failure("timeout", "The evaluation ran past its time limit."),
    # The budget is the platform's estimate of its own work (evaluator.scoring.budget): running out of it is
    # not the model's fault. The finished stages are kept and a re-run resumes after them.
    Failure("out_of_time", f"The evaluation ran out of its time budget before every stage finished {_PLATFORM_FAULT}.",
            True),
    Failure("out_of_memory", "The model ran out of memory."),
    Failure("cpu_time_exceeded", "The evaluation used more CPU time than the sandbox allows."),
    Failure("file_size_exceeded", "The model tried to write a file larger than the sandbox allows."),
    Failure("disk_full", "The evaluation ran out of scratch disk space in the sandbox."),
    Failure("too_many_processes", "The model started more processes or threads than the sandbox allows."),
    Failure("crashed", "The evaluation process died from a signal."),
    Failure("killed", "The evaluation process was killed."),
    Failure("cancelled", "The evaluation was cancelled."),
    # An attack submission's run (evaluator.adversary): the attack's faults, never the target model's.
    Failure("attack_error", "The attack raised an exception."),
    Failure("attack_crashed", "The attack's process ended before it returned its images (a crash or a sandbox limit)."),
    Failure("attack_timeout", "The attack did not return its images within its time limit."),
    Failure("over_budget", "The attack asked for more model passes than its budget allows."),
    Failure("protocol", "The attack's process broke the protocol with the platform."),
    Failure("wrong_output", "The attack did not return a tensor of images."),
    Failure("wrong_shape", "The attack returned images of the wrong shape."),
    Failure("non_finite", "The attack returned images with NaN or infinite values."),
    Failure("out_of_box", "The attack returned images outside the [0, 1] pixel range."),
    Failure("out_of_ball", "The attack returned images outside the threat model's ball around the originals."),
    Failure("bad_query", "The attack asked the model about images outside the [0, 1] pixel range or of a wrong shape."),
    # The platform's own faults.
    Failure("data_integrity", f"A hidden evaluation set failed its integrity check {_PLATFORM_FAULT}.", True),
    Failure("data_unavailable", f"A hidden evaluation set could not be found {_PLATFORM_FAULT}.", True),
    Failure("internal", f"The platform failed while evaluating {_PLATFORM_FAULT}.", True),
    Failure("sandbox_unavailable", f"No sandbox was available to run the model {_PLATFORM_FAULT}.", True),
)


def is_platform_fault(code: str, table: Mapping[str, Failure] = FAILURES) -> bool:
    """Whether ``code`` is the platform's fault; an unknown code is not (nothing is refunded on a guess)."""
    row = table.get(code)
    return row is not None and row.platform_fault


def headline(code: str, table: Mapping[str, Failure] = FAILURES) -> str:
    """The platform's sentence for ``code`` (:data:`UNKNOWN_HEADLINE` for a code the table lacks)."""
    row = table.get(code)
    return row.headline if row is not None else UNKNOWN_HEADLINE
