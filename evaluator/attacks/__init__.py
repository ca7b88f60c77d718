"""The hidden adversarial attack suite for classifiers (see :mod:`evaluator.attacks.cascade`).

Every attack works on a model that maps float images in [0, 1] (N, C, H, W) to logits, in
pixel space, and returns images clipped to [0, 1] and projected onto the threat model.

The package imports nothing itself: import the modules (``evaluator.attacks.cascade``, ``.apgd``, ...),
so that the web server can read :mod:`evaluator.attacks.stages` without loading torch.
"""
