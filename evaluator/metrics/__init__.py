"""Scores with intervals: exact binomial intervals for accuracy, bootstrap intervals for detectors."""
