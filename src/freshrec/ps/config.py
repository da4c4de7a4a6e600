"""Configuration of a parameter server."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from freshrec.config import Config

__all__ = ["PSConfig"]


class PSConfig(Config):
    """How sparse tables are held.

    Args:
        backend: where the shards live. ``local``: in this process, worked by a thread pool (the
            default, and the fastest on one machine). ``ray``: one Ray actor per shard, holding
            that shard of every table, on whichever machines a Ray cluster has (needs
            ``pip install 'freshrec[ray]'``). Snapshots are the same either way: a model trained
            on Ray is loaded and served by the local backend. Serving always uses ``local``.
        num_shards: shards per logical table (a hash of the ID picks the shard). More shards let
            pulls and pushes of one table run on several cores and bound each shard's size; one
            shard is fastest for small batches. With ``ray``, one actor per shard.
        threads: worker threads for shards and tables (0 = one per CPU core); with ``ray``, in
            each actor for its tables.
        ray_address: the Ray cluster to join (``auto``: the one ``ray start`` made on this machine;
            ``ray://host:10001``: a remote one, through Ray Client, ``pip install "ray[client]"``;
            ``local``: always a new one in this process).
            Unset: the Ray instance this process already runs, else Ray's own default: the
            cluster ``RAY_ADDRESS`` names or ``ray start`` made on this machine, else a new local
            one. Snapshot paths must be on storage every actor's machine sees (a shared
            filesystem) when the cluster spans machines.
        ray_actor_cpus: CPUs Ray reserves for each shard actor (0 lets any number of shards share
            a small machine; 1 keeps a core free for each shard, and a cluster with fewer free
            cores than shards does not start them: see ``ray_start_timeout_s``).
        ray_start_timeout_s: how long the shard actors may take to start; past it (the cluster
            lacks the CPUs ``ray_actor_cpus`` asks for, a machine is unreachable) a BackendError
            says so instead of waiting for ever.
    """

    backend: Literal["local", "ray"] = "local"
    num_shards: int = Field(1, ge=1, le=1024)
    threads: int = Field(0, ge=0, le=256)
    ray_address: str | None = None
    ray_actor_cpus: float = Field(0.0, ge=0, le=1024)
    ray_start_timeout_s: float = Field(120.0, gt=0, le=86_400)

    @property
    def worker_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)
