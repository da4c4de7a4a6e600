"""The online pipeline (``freshrec online``): joiner -> online trainers -> sync publishers.

Owns the pipeline loop (``pipeline.py``), its config (``config.py``), the training side's
checkpoints (``checkpoint.py``) and the default live-commerce features (``spec.py``). Imports
``joiner``, ``train``, ``sync``, ``stream``, ``ps``, ``table``, ``models``, ``features`` and base
modules; the demo builds on it.
"""

from freshrec.online.config import OnlineConfig
from freshrec.online.pipeline import OnlinePipeline, PipelineState
from freshrec.online.spec import live_commerce_spec, live_commerce_two_tower

__all__ = ["OnlineConfig", "OnlinePipeline", "PipelineState", "live_commerce_spec", "live_commerce_two_tower"]
