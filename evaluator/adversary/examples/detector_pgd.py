"""The detector suite's loss-maximising attack as an attack submission on a detector track.

On a detector track ``model`` answers one fake score per image and the points are hidden fakes; the
attack wants their scores low. This runs the built-in attack's code (:func:`lower_score`: 50 steps,
sign and gradient-scaled rules, the lowest-scoring iterate kept per image) with the seed the suite
derives for the same budget, so on the same points it returns the same images and the platform,
rounding them to 8 bits as the suite does, finds the same ``auc@Linf-k/255``
(tests/evaluator/test_adversary_detector.py).
"""

from __future__ import annotations

from evaluator.attacks.common import derive_seed
from evaluator.detector_attacks.pgd import DEFAULT_STEPS, lower_score
from evaluator.detector_attacks.suite import budget_label

BATCH = 256


def attack(model, x, y, threat, budget, generator):  # noqa: ANN001, ANN201 - the documented entry point
    if threat.task != "detector":
        raise ValueError("this example attacks detectors; see apgd_ce.py for classifiers")
    steps = min(DEFAULT_STEPS, budget // 2 - 1)  # two step rules, each one pass per step and one for the start
    seed = derive_seed(generator.initial_seed(), "detector-attacks", budget_label(threat.eps))
    x_adv, _ = lower_score(model, x, threat.norm, threat.eps, steps, seed=seed, batch_size=BATCH)
    return x_adv
