"""Train-to-serve parameter sync at two cadences (Monolith, section 2.3).

Owns what a serving replica holds (``state.py``: :class:`ServedModel`, one model's dense module,
serving PS and versions; :class:`ServingState`, the ranking and retrieval models an arm serves),
the delta format, the publisher on the training side and the subscriber that applies deltas on
the serving side. Imports ``ps``, ``models``, ``features``, ``train`` (the model directory) and
``stream`` (the sync log); serving builds on it.
"""

from freshrec.sync.state import ServedModel, ServingState, serving_table_config

__all__ = ["ServedModel", "ServingState", "serving_table_config"]
