"""Sent when what attacks found changes for a track (``track_id``): a run recorded, an attack withdrawn.

The leaderboards, which sit above and show the lowest robust accuracy any attack found, refresh their
cached tables on it.
"""

from django.dispatch import Signal

attack_scores_changed = Signal()
