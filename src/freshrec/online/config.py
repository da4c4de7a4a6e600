"""Configuration of ``freshrec online``: the joiner, the online trainers and the sync publisher.

Every path derives from ``run_dir`` unless set: the embedded event log (``log/``), the joiner's
state (``joiner/``), checkpoints (``checkpoints/``), serving snapshots (``snapshots/``), and the
status files the demo's dashboard reads.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from freshrec.config import Config
from freshrec.features import FeatureSpec
from freshrec.joiner import JoinerConfig
from freshrec.models import DeepFMConfig, ModelConfig, TwoTowerConfig
from freshrec.ps import PSConfig
from freshrec.stream.config import LogConfig
from freshrec.sync.config import SyncConfig
from freshrec.train import TrainConfig

__all__ = ["OnlineConfig"]


class OnlineConfig(Config):
    """One online training pipeline.

    Args:
        run_dir: where everything is written (see the module docstring).
        log: the event log holding impressions and actions, and receiving examples and sync
            deltas; None = the embedded log in ``run_dir/log``.
        joiner: the online joiner (its state directory defaults to ``run_dir/joiner``).
        input_partitions: partitions of an input topic (``joiner.input_topics``) the pipeline
            creates because it does not exist yet, so a first start on an empty cluster works
            (with a warning: no producer has written to it); a topic that exists keeps its own.
        spec: the features; None = :func:`freshrec.online.spec.live_commerce_spec`.
        rank_model: the ranking model (served by /v1/rank and /v1/recommend).
        retrieval: train a retriever at all (False: /v1/recommend ranks recent live items).
        retrieval_model: the two-tower retriever's config (None = the live-commerce default,
            which fits only the default spec: with a ``spec`` of your own, name its
            ``user_slots`` / ``item_slots``); trained on the same examples, on its own tables,
            for the first label.
        train: trainer settings (both models).
        ps: parameter-server settings (both models).
        sync: publishing cadences and serving snapshots (``snapshot_dir`` defaults to
            ``run_dir/snapshots``).
        expire_every_s: seconds of event time between expiry passes over every table.
        checkpoint_interval_s: seconds of wall clock between checkpoints of the training side.
        keep_checkpoints: checkpoints kept (the newest ones).
        max_batch_wait_s: a partial batch is trained once its first example has waited this long
            (wall clock) at the head of the stream: a slow stream still trains within seconds.
            Behind the head (a replay, a restart catching up) batches are cut by count alone, so a
            replay of the same log gives the same model however fast the machine runs.
        status_interval_s: seconds of wall clock between status records (``status.json`` and
            ``timeline.jsonl`` in ``run_dir``), the dashboard's and report's source.
        timeline_max_bytes: ``timeline.jsonl`` is renamed to ``timeline.1.jsonl`` (replacing an
            older one) when it would pass this size, so a run of months keeps at most twice this
            on disk (a record is ~2.5 KB; every 2 s that is ~110 MB a day).
        metrics_port: serve Prometheus metrics on this port (None = off, 0 = any free port).
        metrics_host: the address ``metrics_port`` binds: loopback by default; ``0.0.0.0`` (or
            this host's address) for a Prometheus server on another machine.
        lock_wait_s: one process per ``run_dir`` (a lock on ``run_dir/.lock``, dropped by the
            kernel when its process dies): a second one waits this long for the first to stop
            (a rolling restart: the old process writes its final checkpoint), then exits naming it.
    """

    run_dir: Path = Path("runs/online")
    log: LogConfig | None = None
    joiner: JoinerConfig = Field(default_factory=lambda: JoinerConfig(labels=["click", "purchase"]))
    input_partitions: int = Field(1, ge=1, le=1 << 16)
    spec: FeatureSpec | None = None
    rank_model: ModelConfig = Field(default_factory=lambda: DeepFMConfig(hidden=[256, 128]))
    retrieval_model: TwoTowerConfig | None = None
    retrieval: bool = True
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(batch_size=512, metrics_window=20_000))
    ps: PSConfig = Field(default_factory=lambda: PSConfig(threads=2))
    sync: SyncConfig = Field(default_factory=SyncConfig)
    expire_every_s: float = Field(300.0, gt=0)  # 5 minutes of event time: far below the ttls
    checkpoint_interval_s: float = Field(60.0, gt=0)
    keep_checkpoints: int = Field(3, ge=1)
    max_batch_wait_s: float = Field(1.0, gt=0)
    status_interval_s: float = Field(2.0, gt=0)
    timeline_max_bytes: int = Field(64 << 20, ge=1 << 16)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    lock_wait_s: float = Field(60.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _derive_paths(self) -> OnlineConfig:
        # derived paths are filled in here, so a config file need only name run_dir
        if self.log is None:
            self.log = LogConfig(path=self.run_dir / "log")
        if "state_dir" not in self.joiner.model_fields_set:
            self.joiner = JoinerConfig.from_dict({**self.joiner.model_dump(), "state_dir": self.run_dir / "joiner"})
        if "snapshot_dir" not in self.sync.model_fields_set:
            self.sync = SyncConfig.from_dict({**self.sync.model_dump(), "snapshot_dir": self.run_dir / "snapshots"})
        return self

    @model_validator(mode="after")
    def _labels_agree(self) -> OnlineConfig:
        # each label is an action type the joiner marks: refused here rather than when the
        # pipeline starts (after it made its topics)
        if self.spec is not None and list(self.spec.labels) != list(self.joiner.labels):
            raise ValueError(
                f"spec.labels {self.spec.labels} must equal joiner.labels {self.joiner.labels} (the joiner "
                f"marks one label per action type, in that order): set joiner.labels = {self.spec.labels}"
            )
        return self

    @model_validator(mode="after")
    def _default_retriever_fits(self) -> OnlineConfig:
        # the default retriever names the live-commerce slots: with a spec of one's own it fails at
        # the first start, after the input topics were made, with "two_tower slots: unknown [...]"
        if self.spec is None or not self.retrieval or self.retrieval_model is not None:
            return self
        from freshrec.online.spec import live_commerce_two_tower

        tt = live_commerce_two_tower()
        slots, dense = set(self.spec.slot_names), {d.name for d in self.spec.dense}
        if set(tt.user_slots + tt.item_slots) != slots or not set(tt.user_dense + tt.item_dense) <= dense:
            raise ValueError(
                f"retrieval_model is not set, so the retriever would be the live-commerce default (user_slots "
                f"{tt.user_slots}, item_slots {tt.item_slots}, item_dense {tt.item_dense}), which does not fit "
                f"this spec (slots {sorted(slots)}, dense {sorted(dense)}): set retrieval_model.user_slots and "
                "item_slots (every slot in one of them; user_dense / item_dense for dense features), or "
                "retrieval = false"
            )
        return self

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"
