"""The hidden adversarial attack suite for classifiers (see :mod:`evaluator.attacks.cascade`).

Every attack works on a model that maps float images in [0, 1] (N, C, H, W) to logits, in
pixel space, and returns images clipped to [0, 1] and projected onto the threat model.
"""

from evaluator.attacks.apgd import apgd, apgd_ce, apgd_targeted
from evaluator.attacks.cascade import (
    SUITE_VERSION,
    SUITES,
    CascadeReport,
    StageReport,
    SuiteConfig,
    ThreatModelReport,
    attack_threat_model,
    get_suite,
    run_cascade,
)
from evaluator.attacks.common import AttackResult, derive_seed, make_generator
from evaluator.attacks.counting import CountingModel, PassCount
from evaluator.attacks.reliability import ReliabilityFlag, ReliabilityReport, run_reliability_checks
from evaluator.attacks.square import square_attack
from evaluator.attacks.stages import STAGES, Stage, stage_labels
from evaluator.attacks.threat import TRACK_THREAT_MODELS, ThreatModel, contains, default_threat_models, project

__all__ = [
    "STAGES",
    "SUITES",
    "SUITE_VERSION",
    "TRACK_THREAT_MODELS",
    "AttackResult",
    "CascadeReport",
    "CountingModel",
    "PassCount",
    "ReliabilityFlag",
    "ReliabilityReport",
    "Stage",
    "StageReport",
    "SuiteConfig",
    "ThreatModel",
    "ThreatModelReport",
    "apgd",
    "apgd_ce",
    "apgd_targeted",
    "attack_threat_model",
    "contains",
    "default_threat_models",
    "derive_seed",
    "get_suite",
    "make_generator",
    "project",
    "run_cascade",
    "run_reliability_checks",
    "square_attack",
    "stage_labels",
]
