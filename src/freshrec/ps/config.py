"""Configuration of a parameter server."""

from __future__ import annotations

import os

from pydantic import Field

from freshrec.config import Config

__all__ = ["PSConfig"]


class PSConfig(Config):
    """How sparse tables are held.

    Args:
        num_shards: shards per logical table (a hash of the ID picks the shard). More shards let
            pulls and pushes of one table run on several cores and bound each shard's size; one
            shard is fastest for small batches. A shard maps onto one Ray actor at scale.
        threads: worker threads for shards and tables (0 = one per CPU core).
    """

    num_shards: int = Field(1, ge=1, le=1024)
    threads: int = Field(0, ge=0, le=256)

    @property
    def worker_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)
