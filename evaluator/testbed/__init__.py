"""Baseline testbeds: standard models trained here, whose scores anchor a track's robustness line.

An effective-robustness line needs many ordinary models spread over a range of accuracy; a
testbed is the declarative list of those models plus the deterministic code that trains them.
"""
