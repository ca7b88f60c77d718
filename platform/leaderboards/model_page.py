"""What a model page shows beyond its status: scores, attack cascade, corruption heatmaps, per-class.

Kept out of the submissions app so that the page can grow (new result kinds) without touching
the upload and evaluation code; ``leaderboards.views.model_page`` merges this context in.

The page shows only text the platform wrote. An evaluation's provenance, per-class table and
reliability flags come back from the sandbox, where the model ran next to the hidden data, so any
free text in them could carry what the model saw (a forged provenance once carried the hidden
labels). So nothing from them is shown as stored: a fixed set of known fields is read, numbers
as numbers and strings only when they belong to a known set (:func:`provenance_rows`,
:func:`reliability_flags`), and each flag's sentence is the platform's, built from its numbers.
The Ladder note and the failure sentence are likewise chosen by the platform (:func:`failure_text`,
``submissions.ladder.shown_note``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.cache import cache
from django.utils.safestring import SafeString, mark_safe

from accounts.models import Withdrawal
from adversaries.models import AttackRun
from adversaries.scores import Found, runs_of
from adversaries.targets import lowered_metric
from benchmarks.models import EvaluationSet
from leaderboards.cache import cache_seconds
from leaderboards.fits import TRANSFORMS, current_fits, robustness_rows
from leaderboards.plots import corruption_heatmap, figure_json
from leaderboards.queries import ROBUST, STAGE_LABELS, STAGE_ORDER, _flagged, _threats, attack_order
from submissions.failures import failure_text
from submissions.ladder import shown_note
from submissions.models import EvaluationRun, Result, Submission

if TYPE_CHECKING:
    from leaderboards.fits import ShiftRobustness

logger = logging.getLogger(__name__)


def _number(value: Any) -> float | None:
    """A finite int or float from a stored record, else None (strings, booleans, NaN are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    """A non-negative whole number from a stored record, else None."""
    number = _number(value)
    return int(number) if number is not None and number >= 0 and number == int(number) else None


@dataclass(frozen=True)
class Flag:
    """One reliability check as the page shows it: the platform's label and sentence, never stored text."""

    check: str
    label: str
    flagged: bool
    explanation: str


def _share(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _flag_sentence(check: str, flagged: bool, value: float | None, threshold: float | None) -> str:
    """The platform's words for a check, from its two numbers (evaluator.attacks.reliability defines them)."""
    limit = f" (the limit is {_share(threshold, 0)})" if threshold is not None else ""
    if check == "gradients":
        sentence = f"{_share(value, 0)} of the points have a zero or non-finite input gradient{limit}."
        return sentence + (" Gradient attacks cannot work here: the model masks or breaks its gradients."
                           if flagged else "")
    if check == "eps_monotonic":
        if value is None:
            return "No correctly classified point to attack."
        if flagged:
            return (f"Robust accuracy under APGD-CE rises by {_share(value)} as eps grows (the tolerance is "
                    f"{_share(threshold, 0)}), which no model can do: the attack is failing.")
        return "Robust accuracy under APGD-CE does not rise with eps."
    if check == "eps_large":
        sentence = f"At the largest multiple of eps APGD-CE leaves {_share(value)} robust accuracy{limit}."
        return sentence + (" An attack that cannot break a model with a much larger budget is probably being fooled."
                           if flagged else "")
    if check == "black_box":
        sentence = (f"The black-box Square attack broke {_share(value)} of the points on which the white-box attacks "
                    f"failed{limit}.")
        return sentence + (" A gradient-free attack beating the white-box ones points to gradient masking."
                           if flagged else "")
    # random_noise
    sentence = (f"Random perturbations of norm eps broke {_share(value)} of the attacked points, points on which "
                f"APGD had failed{limit}.")
    return sentence + (" Random noise should never beat an optimised attack: the attack is being misled."
                       if flagged else "")


#: The evaluator's reliability checks (evaluator.attacks.reliability), with the page's name for each.
CHECK_LABELS = {
    "gradients": "input gradients",
    "eps_monotonic": "robust accuracy falls as eps grows",
    "eps_large": "a much larger eps breaks the model",
    "black_box": "black-box attack",
    "random_noise": "random noise",
}


def reliability_flags(stored: Any) -> list[Flag]:
    """The known checks of a stored flag list, in the platform's words; unknown checks are left out."""
    flags = []
    for item in stored if isinstance(stored, list) else []:
        if not isinstance(item, dict) or item.get("check") not in CHECK_LABELS:
            continue
        check, flagged = str(item["check"]), item.get("flagged") is True
        sentence = _flag_sentence(check, flagged, _number(item.get("value")), _number(item.get("threshold")))
        flags.append(Flag(check, CHECK_LABELS[check], flagged, sentence))
    return flags


#: Sandbox modes the worker records (evaluator.sandbox.launch), as the page words them.
SANDBOX_MODES = {"bubblewrap": "bubblewrap sandbox", "unsandboxed": "no sandbox (development only)"}
#: Machine architectures ``platform.processor()`` / ``platform.machine()`` report on the platforms we run.
PROCESSORS = frozenset({"x86_64", "amd64", "AMD64", "aarch64", "arm64", "i386", "i686", "ppc64le", "s390x",
                        "riscv64"})
_DEVICE = re.compile(r"(cpu|cuda(:\d{1,2})?|mps)")
#: A release version: short numeric parts, and for torch one of its build tags.
_VERSION = re.compile(r"\d{1,3}\.\d{1,3}(\.\d{1,3})?((a|b|rc|\.dev|\.post)\d{1,3})?(\+(cpu|cu\d{3}|rocm\d\.\d{1,2}))?")


def _known(value: Any, pattern: re.Pattern[str] | frozenset[str] | dict[str, str]) -> str | None:
    """``value`` if it is a string of the known set (or wholly matches the pattern), else None."""
    if not isinstance(value, str):
        return None
    if isinstance(pattern, re.Pattern):
        return value if pattern.fullmatch(value) else None
    return value if value in pattern else None


@dataclass(frozen=True)
class Provenance:
    """What the page says about where and how a score was computed: known fields only."""

    seconds: float | None
    device: str | None
    processor: str | None
    torch: str | None
    evaluator: str | None
    sandbox: str | None
    #: The job's time budget (evaluator.scoring.budget) and the part of its time the model's answers took.
    budget_seconds: float | None = None
    model_seconds: float | None = None


def provenance_view(run: EvaluationRun | None) -> Provenance | None:
    """The run's provenance reduced to its known fields: numbers, and strings from known sets.

    Anything else the record holds (unknown keys, a string that is not a device, an architecture,
    a version or a sandbox mode) is not shown, whatever it says.
    """
    if run is None:
        return None
    stored = run.provenance if isinstance(run.provenance, dict) else {}
    seconds = _number(stored.get("seconds"))
    mode = _known(stored.get("sandbox"), SANDBOX_MODES)
    return Provenance(
        seconds=seconds if seconds is not None and seconds >= 0 else None,
        device=_known(stored.get("device"), _DEVICE),
        processor=_known(stored.get("processor"), PROCESSORS),
        torch=_known(stored.get("torch"), _VERSION),
        evaluator=_known(stored.get("evaluator"), _VERSION),
        sandbox=SANDBOX_MODES[mode] if mode else None,
        budget_seconds=_seconds((stored.get("time_budget") or {}).get("seconds")
                                if isinstance(stored.get("time_budget"), dict) else None),
        model_seconds=_seconds(stored.get("model_seconds")),
    )


def _seconds(value: Any) -> float | None:
    """A stored duration, if it is a non-negative number."""
    number = _number(value)
    return number if number is not None and number >= 0 else None


@dataclass
class Stage:
    label: str
    result: Any  # Result or Score


@dataclass
class Cascade:
    """Robust accuracy after each stage of the attack cascade for one threat model."""

    threat: str
    clean: Result | None
    stages: list[Stage]
    final: Result | None
    forward_passes: int | None = None
    backward_passes: int | None = None
    seconds: float | None = None
    flags: list[Flag] = field(default_factory=list)
    #: The page's names of the checks that made the suite run its escalation stages (empty: none ran).
    escalated_for: list[str] = field(default_factory=list)
    #: Submitted attacks' robust accuracies under this threat model (adversaries), and the lowest below the suite's.
    attacks: list[Found] = field(default_factory=list)
    lowest: Found | None = None

    @property
    def flagged(self) -> bool:
        return any(f.flagged for f in self.flags)


@dataclass
class Heatmap:
    evaluation_set: EvaluationSet
    figure: SafeString
    overall: Result | None
    severities: list[int]
    rows: list[tuple[str, list[float | None], float | None]]  # corruption, per severity, mean


@dataclass
class PerClass:
    sets: list[str]
    rows: list[tuple[str, list[float | None]]]


def _stage_key(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def cascades(submission: Submission, results: list[Result], run: EvaluationRun | None) -> list[Cascade]:
    clean_set = next((r.evaluation_set for r in results if r.evaluation_set.role == EvaluationSet.Role.CLEAN), None)
    clean = next((r for r in results if r.evaluation_set == clean_set and r.metric == "accuracy"), None)
    found: dict[str, dict[str, Result]] = {}
    for r in results:
        if r.metric.startswith(ROBUST):
            threat, _, stage = r.metric[len(ROBUST):].partition(">")
            found.setdefault(threat, {})[stage] = r
    provenance = run.provenance if run is not None and isinstance(run.provenance, dict) else {}
    attacks = provenance.get("attacks") if isinstance(provenance.get("attacks"), dict) else {}
    out = []
    for threat in _threats(submission.track, set(found)):
        if threat not in found:
            continue
        stages = found[threat]
        info = attacks.get(threat)
        info = info if isinstance(info, dict) else {}
        out.append(Cascade(
            threat=threat,
            clean=clean,
            stages=[Stage(STAGE_LABELS.get(s, s), stages[s]) for s in sorted((s for s in stages if s), key=_stage_key)],
            final=stages.get(""),
            forward_passes=_count(info.get("forward_passes")),
            backward_passes=_count(info.get("backward_passes")),
            seconds=_number(info.get("seconds")),
            flags=reliability_flags(info.get("flags")),
            escalated_for=escalation_reasons(info.get("escalated_for")),
        ))
    return out


def _found_by_label(submission: Submission, suite_version: str, metric: str) -> dict[str, list[Found]]:
    """Per threat label, every finished submitted attack's number on this model (one query)."""
    found: dict[str, list[Found]] = {}
    for run in runs_of(submission.pk, suite_version):
        if run.state != AttackRun.State.FINISHED:
            continue
        for label, number in (run.robust or {}).items():
            try:
                found.setdefault(label, []).append(Found(float(number["value"]), int(number["num_examples"]),
                                                         number.get("ci_low"), number.get("ci_high"),
                                                         run.attack.name, str(run.attack.public_id), metric))
            except (KeyError, TypeError, ValueError):
                continue
    return found


@dataclass
class AttackedBudget:
    """A detector's AUC under one Linf budget: the built-in suite's, each submitted attack's, the lowest below it."""

    label: str
    suite: Result | None
    attacks: list[Found]
    lowest: Found | None = None


def detector_attacks(submission: Submission, results: list[Result], suite_version: str) -> list[AttackedBudget]:
    """The submitted attacks' AUCs on a detector, per Linf budget they ran under (empty when none ran)."""
    found = _found_by_label(submission, suite_version, "auc")
    clean = {r.metric: r for r in results if r.evaluation_set.role == EvaluationSet.Role.CLEAN}
    out = []
    for label in sorted(found, key=attack_order):
        suite = clean.get(f"auc@{label}")
        out.append(AttackedBudget(label, suite, found[label], _lowest_below(found[label], suite)))
    return out


def _lowest_below(attacks: list[Found], suite: Result | None) -> Found | None:
    """The submitted attack with the lowest number, when it is below the built-in suite's (else None)."""
    best = min(attacks, key=lambda f: f.value, default=None)
    return best if best is not None and suite is not None and best.value < suite.value else None


def _add_attacks(shown: list[Cascade], submission: Submission, suite_version: str) -> None:
    """Each cascade's submitted attacks (one query), and the lowest one when it is below the suite's final number."""
    found = _found_by_label(submission, suite_version, "robust_accuracy")
    for cascade in shown:
        cascade.attacks = found.get(cascade.threat, [])
        cascade.lowest = _lowest_below(cascade.attacks, cascade.final)


def escalation_reasons(stored: Any) -> list[str]:
    """The known checks among a stored escalation list, in the page's words (anything else is left out)."""
    names = stored if isinstance(stored, list) else []
    return [CHECK_LABELS[name] for name in dict.fromkeys(n for n in names if isinstance(n, str) and n in CHECK_LABELS)]


def _heatmap_figure(cells: dict[tuple[str, int], float]) -> tuple[SafeString, list[str], list[list[float | None]]]:
    """The heatmap's figure JSON with its rows (names, and accuracies in percent), cached by content.

    Building the plotly figure is most of a model page's time (~20 ms for 15 corruptions x 5
    severities), for a figure that is a pure function of the cells. The key is a digest of the cells
    themselves, so an entry can never be stale and needs no invalidation: new results are new cells.
    """
    key = f"arena:heatmap:{hashlib.sha256(repr(sorted(cells.items())).encode()).hexdigest()[:40]}"
    seconds = cache_seconds()
    try:
        stored = cache.get(key) if seconds > 0 else None
    except Exception:  # a cache server that is down costs the figure's time, not the page
        stored = None
    if stored is None:
        figure = corruption_heatmap(cells)
        trace = figure.data[0]
        stored = (str(figure_json(figure)), list(trace.y), [list(row) for row in trace.z])
        if seconds > 0:
            try:
                cache.set(key, stored, timeout=seconds)
            except Exception:
                logger.warning("cache unavailable; heatmap not stored", exc_info=True)
    text, names, z = stored
    return mark_safe(text), names, z  # noqa: S308 - figure_json's output, escaped for a script element


def heatmaps(results: list[Result]) -> list[Heatmap]:
    """One heatmap per synthetic-shift set that has per-cell accuracies ``accuracy@<corruption>:<severity>``."""
    by_set: dict[int, dict[tuple[str, int], float]] = {}
    sets: dict[int, EvaluationSet] = {}
    overall: dict[int, Result] = {}
    for r in results:
        if r.metric == "accuracy":
            overall[r.evaluation_set_id] = r
        if not r.metric.startswith("accuracy@"):
            continue
        corruption, _, severity = r.metric[len("accuracy@"):].rpartition(":")
        if not corruption or not severity.isdigit():
            continue
        by_set.setdefault(r.evaluation_set_id, {})[(corruption, int(severity))] = r.value
        sets[r.evaluation_set_id] = r.evaluation_set
    out = []
    for set_id, cells in by_set.items():
        figure, names, zs = _heatmap_figure(cells)
        severities = sorted({s for _, s in cells})
        rows = []
        for name, row in zip(names, zs, strict=True):
            values = [None if v is None else v / 100 for v in row]
            present = [v for v in values if v is not None]
            rows.append((name, values, sum(present) / len(present) if present else None))
        out.append(Heatmap(sets[set_id], figure, overall.get(set_id), severities, rows))
    return out


def per_class(track: Any, run: EvaluationRun | None, set_names: Collection[str] | None = None) -> PerClass | None:
    """Per-class accuracy on each evaluation set, with the track's class names when it has them.

    Only the track's own sets (``set_names``, when given) and class indices below its number of
    classes are read, and only accuracies (numbers in [0, 1]): the table comes from the sandbox,
    and a key or value of any other kind is not shown.
    """
    stored = (run.per_class or {}) if run is not None else {}
    if not isinstance(stored, dict):
        return None
    valid = {str(k) for k in range(int(track.num_classes or 0))}
    table: dict[str, dict[str, float]] = {}
    for name, accs in stored.items():
        if (set_names is not None and name not in set_names) or not isinstance(accs, dict):
            continue
        table[name] = {key: number for key, value in accs.items()
                       if key in valid and (number := _number(value)) is not None and 0.0 <= number <= 1.0}
    if not table:
        return None
    sets = list(table)
    classes: list[str] = []
    for accs in table.values():
        for key in accs:
            if key not in classes:
                classes.append(key)
    classes.sort(key=int)
    names = list(track.class_names or [])

    def label(key: str) -> str:
        if int(key) < len(names) and names[int(key)] != key:
            return f"{key} ({names[int(key)]})"
        return key

    return PerClass(sets, [(label(c), [table[s].get(c) for s in sets]) for c in classes])


#: What the model page reads through its submission's relations, joined into the query that loads it.
MODEL_PAGE_RELATED = ("track__benchmark", "owner", "withdrawal", "relative_to")


def _withdrawn(submission: Submission) -> bool:
    """Whether the submission has a Withdrawal row: from the joined relation when loaded with MODEL_PAGE_RELATED."""
    try:
        return submission.withdrawal is not None
    except Withdrawal.DoesNotExist:
        return False


def model_page_context(submission: Submission, user: Any, transform: str | None = "logit") -> dict[str, Any]:
    """Context for the model page: scores, cascades, heatmaps, per-class results, robustness, badges.

    It costs a fixed number of queries whatever the track holds (many shift sets, corruption
    cells, attack stages): the track's evaluation sets (one query, reused for every result), the
    submission's current results (one), its run (one), the current lines of the track's shift sets
    (one) and, only for a model with a ``relative_to`` reference, that model's accuracies (one).
    The effective robustness comes from the accuracies among the results already loaded, not from a
    second reading of them; load ``submission`` with :data:`MODEL_PAGE_RELATED` so that the owner,
    track, withdrawal and reference come with it. tests/web/test_model_page_queries.py holds it to that.
    """
    transform = transform if transform in TRANSFORMS else "logit"
    track = submission.track
    sets = {s.pk: s for s in EvaluationSet.objects.filter(track_id=track.pk)}
    run = submission.runs.filter(suite_version=track.suite_version).first()
    results: list[Result] = []
    withheld = submission.scores_withheld_from(user)
    incomplete = submission.state == Submission.State.INCOMPLETE
    # An incomplete evaluation shows its finished stages, except on a Ladder track, whose rule decides on the
    # complete evaluation: until then its partial scores are no more shown than a withheld one's.
    partial_shown = incomplete and not (track.ladder and not getattr(user, "is_staff", False))
    finished = submission.state == Submission.State.FINISHED or partial_shown
    if finished and not withheld:
        results = list(submission.results.filter(suite_version=track.suite_version))
        for r in results:
            if r.evaluation_set_id in sets:  # else (never for a consistent track) Django loads it on access
                r.evaluation_set = sets[r.evaluation_set_id]
    scores = [r for r in results if not r.metric.startswith(("accuracy@", ROBUST))]
    verified = bool(run and run.ok and not _flagged((run.provenance or {}).get("attacks")))
    shown_cascades = [] if withheld else cascades(submission, results, run)
    if shown_cascades:
        _add_attacks(shown_cascades, submission, track.suite_version)
    attacked_budgets = (detector_attacks(submission, results, track.suite_version)
                        if results and lowered_metric(track) == "auc" else [])
    return {
        "results": scores,
        "run": run,
        "cascades": shown_cascades,
        "attacked_budgets": attacked_budgets,
        "heatmaps": heatmaps(results),
        "per_class": None if withheld else per_class(track, run, {s.name for s in sets.values()}),
        # Withheld scores stay withheld here too: the table shows the clean and shifted accuracies.
        "robustness": _robustness(submission, transform, list(sets.values()), results),
        "transform": transform,
        "verified": verified,
        "withdrawn": _withdrawn(submission),
        "withheld": withheld,
        # What the page says about the run, the Ladder and a failure: the platform's words only.
        "provenance": provenance_view(run),
        "ladder_note": shown_note(submission),
        "failure_text": failure_text(submission),
        "incomplete_stages": stage_names(run) if incomplete else [],
    }


def stage_names(run: EvaluationRun | None) -> list[str]:
    """The finished stages of an incomplete run, in words (the keys of evaluator.checkpoints)."""
    kept = ((run.provenance or {}).get("incomplete") or {}).get("finished") if run is not None else None
    names = []
    for key in kept or []:
        key = str(key)
        if key == "sets":
            names.append("the evaluation sets")
        elif key.startswith("attacks:"):
            names.append(f"attacks under {key.removeprefix('attacks:')}")
        elif key == "detector-attacks":
            names.append("the detector attacks")
    return names


def _robustness(submission: Submission, transform: str, sets: list[EvaluationSet],
                results: list[Result]) -> list[ShiftRobustness]:
    """Effective and relative robustness from the loaded results: at most two queries (fits, reference)."""
    clean = sorted((s for s in sets if s.role == EvaluationSet.Role.CLEAN), key=lambda s: s.pk)
    shift_sets = sorted((s for s in sets if s.role == EvaluationSet.Role.SHIFT), key=lambda s: s.name)
    mine = {r.evaluation_set_id: r.value for r in results if r.metric == "accuracy"}
    if not clean or not shift_sets or clean[0].pk not in mine or not any(s.pk in mine for s in shift_sets):
        return []  # nothing to show: spare the fits' query (each holds its bootstrap resamples)
    reference: dict[int, float] = {}
    if submission.relative_to_id:
        reference = dict(Result.objects.filter(
            submission_id=submission.relative_to_id, evaluation_set__in=shift_sets, metric="accuracy",
            suite_version=submission.track.suite_version).order_by().values_list("evaluation_set_id", "value"))
    return robustness_rows(submission, transform, clean[0], shift_sets, mine, reference,
                           current_fits(shift_sets, transform))
