"""The suite's APGD-CE stage (``attacks-2``) as an attack submission: the proof that the interface loses nothing.

It sees only what any submitted attack sees (a model handle, the points, their labels, the threat
model, the budget and a generator seeded by the platform) and runs the built-in stage's code on it:
the same clean pass, the same chunks and per-chunk seeds, the same iterations. Its robust accuracy
and its pass counts are compared with the built-in stage's in tests/evaluator/test_adversary.py.
"""

from __future__ import annotations

import torch

from evaluator.attacks.apgd import apgd_ce
from evaluator.attacks.common import derive_seed, make_generator, predict_logits
from evaluator.attacks.suites import get_suite
from evaluator.attacks.threat import ThreatModel

SUITE = "attacks-2"
BATCH = 256


def attack(model, x, y, threat, budget, generator):  # noqa: ANN001, ANN201 - the documented entry point
    suite = get_suite(SUITE)
    ball = ThreatModel(threat.norm, threat.eps)
    seed = generator.initial_seed()  # the platform's seed for this run: the built-in stage's job seed
    with torch.no_grad():
        correct = predict_logits(model, x, BATCH).argmax(dim=1) == y
    todo = correct.nonzero().squeeze(1)
    x_adv = x.clone()
    for chunk, start in enumerate(range(0, int(todo.numel()), suite.chunk_size)):
        index = todo[start : start + suite.chunk_size]
        chunk_generator = make_generator(derive_seed(seed, suite.version, ball.key, "apgd-ce", chunk), x.device)
        result = apgd_ce(model, x[index], y[index], ball, chunk_generator, n_iter=suite.apgd_iterations,
                         n_restarts=suite.apgd_restarts, batch_size=BATCH,
                         reference_schedule=suite.apgd_reference_schedule)
        fooled = result.fooled.nonzero().squeeze(1)
        x_adv[index[fooled]] = result.x_adv[fooled]
    return x_adv
