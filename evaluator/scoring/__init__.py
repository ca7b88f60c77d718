"""The scorer: runs one JobSpec to a JobResult, what ``python -m evaluator run`` calls.

It holds the evaluation sets, the labels and the generator, and computes every number; the
submitted model runs in a process of its own (:mod:`evaluator.remote`) and is only ever asked
for outputs and input gradients. It never raises for a bad submission: every failure becomes a
JobResult with an error code and a sentence a researcher understands. Only aggregate metrics and
per-class accuracies leave it; per-example outputs on hidden data never do.

Batches cannot be gamed: every evaluation set is fed in an order drawn from a secret seed of
the job (so no batch is one class, and no model can tell which stored image is in which
batch), and a sample of each set's hidden images is evaluated again alone, in another batch, at
another batch size and twice; a model whose outputs differ beyond rounding fails as
``batch_dependent`` or ``nondeterministic``.

Modules: :mod:`~evaluator.scoring.job` (``run_job`` and the steps every job shares),
:mod:`~evaluator.scoring.feeding` (model input, secret order, batched prediction),
:mod:`~evaluator.scoring.consistency` (the batch checks), :mod:`~evaluator.scoring.task` (what a
task kind adds), and one module per kind: :mod:`~evaluator.scoring.classifier`,
:mod:`~evaluator.scoring.detector`.
"""

from evaluator.scoring.job import run_job

__all__ = ["run_job"]
