"""Attacks written against the submission interface: the suite's own stages as a submitter would write them."""
