"""Attack submissions (issue 20): a researcher's attack, run in a sandbox of its own against a hosted model.

The attack never holds the model: it gets an :class:`evaluator.adversary.child.ModelHandle`, an
``nn.Module`` whose every call crosses to the scorer, which counts the passes against the budget and
relays them to the model process (a sandbox of its own). The images the attack returns are checked by
the scorer (:mod:`evaluator.adversary.runner`): finite, in the pixel box, inside the threat model, and
misclassified by the platform's own forward pass. ``docs/attacks.md`` describes the interface with a
complete example.
"""
