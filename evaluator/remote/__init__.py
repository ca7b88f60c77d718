"""The trust boundary between the scorer and the submitted model.

The submitted model runs alone in a sandboxed process (:mod:`evaluator.remote.server`) that
holds the artifact and nothing else: no labels, no evaluation-set files, no generator, no
result to write. The scorer (:mod:`evaluator.scoring`, trusted code holding the hidden data)
talks to it through :class:`evaluator.remote.client.ModelProcess` over two pipes, sending image
batches and receiving outputs and input gradients (:mod:`evaluator.remote.wire`). Everything
that decides a score runs on the scorer's side of that boundary.
"""
