"""Attacks on synthetic-image detectors (Carlini & Farid 2020), and the suite that runs them.

A detector maps an image in [0, 1] to one score that it is fake (higher: more likely fake). Every
attack here works on fakes only and tries to make them score as real; every attacked image is
quantised back to 8 bits before it is scored, as a saved image would be, so a reported AUC is
the AUC of images that could be written to disk and uploaded.
"""
