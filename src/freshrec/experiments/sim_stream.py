"""The simulator as an :class:`~freshrec.experiments.stream.ExampleStream`: its events through the
event log and the online joiner, as the labelled examples a trainer would read.

    stream = SimStream(SimSource(hours=6), seed=3)
    batch, emitted_at = stream.examples()      # every example, in the order the joiner emitted them
    for b in stream.batches(256): ...          # the same, as batches

The simulator runs open loop (a built-in policy shows the slates, so the examples do not depend on
any model trained on them and every setting of an experiment sees the same ones). Its impressions
and actions go to an embedded event log in a temporary folder, chunk by chunk, and the joiner
(:class:`freshrec.joiner.Joiner`) joins them in event time: a positive is emitted at its click,
seconds after the impression; a kept negative when its window closes, ``window_s`` later. The
stream is in that emission order (the order of the examples topic), each example's event time
being its impression's; ``emitted_at`` says when each became available to a trainer. The world is
run ``window_s + allowed_lateness_s`` past ``hours`` so every impression before ``hours`` has its
whole window, and the examples of later impressions are dropped.

Every seed is another world (``world.seed`` = the seed). The examples are built once per stream
and kept (columns of a few hundred thousand rows).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from freshrec.config import Config
from freshrec.experiments.stream import minibatches
from freshrec.features import Batch, FeatureSpec, SparseSlot
from freshrec.joiner import Joiner, JoinerConfig, append_events, decode_examples, examples_to_columns
from freshrec.online import live_commerce_spec
from freshrec.sim import SimConfig, Simulator
from freshrec.stream import open_log

__all__ = ["SIM", "SimSource", "SimStream", "experiment_world", "is_sim", "live_catalog", "sim_spec"]

SIM = "sim"  # the value of an experiment's ``data`` that selects the simulator


def is_sim(data: str | Path) -> bool:
    return str(data) == SIM


def experiment_world() -> SimConfig:
    """The world the simulator experiments share (docs/experiments.md): a live-commerce "room" of
    20,000 users (~60k impressions per event hour) and ~410 live listings that live 30 min
    (median), each shown ~150 times in its life by a random policy. Users click 5x as often as
    Open Bandit's (2% on a random slate), so the few thousand clicks an hour this machine
    simulates in seconds leave something to learn within an item's life."""
    return SimConfig(n_users=20_000, new_users_per_hour=400.0, items_per_hour=500.0, random_ctr=0.02)


def live_catalog(world: SimConfig) -> float:
    """The mean number of live items of ``world`` (listing rate times mean lognormal lifetime)."""
    return world.items_per_hour * world.item_lifetime_median * math.exp(world.item_lifetime_sigma**2 / 2) / 3600.0


def sim_spec(dim: int = 16) -> FeatureSpec:
    """The live-commerce features (:func:`freshrec.online.live_commerce_spec`, label ``click``)
    plus the slot of the impression's ``position`` (0 = top of the slate): the simulator's clicks
    fall with the position, and the examples carry it. (Serving scores every candidate at
    position 0, so a model that learned the position's effect ranks without it.)"""
    data = live_commerce_spec(dim, ("click",)).model_dump()
    data["sparse"].append(SparseSlot(name="position").model_dump())
    return FeatureSpec.model_validate(data)


class SimSource(Config):
    """The simulator and joiner settings of a :class:`SimStream`.

    Args:
        world: the simulator's knobs (``seed`` is set per stream); default :func:`experiment_world`.
        policy: the built-in policy that shows the slates (open loop).
        hours: event hours of impressions.
        window_s, allowed_lateness_s: the joiner's window and watermark lag (event seconds).
        negative_rate: share of negatives kept (weight ``1 / negative_rate``).
        emit: the joiner's: ``first_action`` emits a click seconds after its impression and a
            negative only when its window closes, so the newest examples are mostly clicks;
            ``window_close`` emits both when the window closes.
    """

    world: SimConfig = Field(default_factory=experiment_world)
    policy: Literal["random", "popularity", "oracle"] = "random"  # uniform logging, like Open Bandit's
    hours: float = Field(6.0, gt=0, le=24 * 30)
    window_s: float = Field(300.0, gt=0)  # a click comes within ~1 min in the sim (median 5 s)
    allowed_lateness_s: float = Field(10.0, ge=0)
    negative_rate: float = Field(0.1, gt=0, le=1)  # keep a tenth of the negatives, weight 10
    emit: Literal["first_action", "window_close"] = "first_action"  # the joiner's default


class SimStream:
    """Labelled examples of a simulated world, in the order the joiner emitted them."""

    def __init__(self, source: SimSource, seed: int, spec: FeatureSpec | None = None) -> None:
        self.source = source
        self.seed = seed
        self._spec = spec or sim_spec()
        if list(self._spec.labels) != ["click"]:
            raise ValueError(f"a SimStream labels clicks; the spec's labels are {self._spec.labels}")
        self._batch: Batch | None = None
        self._emitted: np.ndarray | None = None
        self._sim: Simulator | None = None
        self._raw: dict[str, Any] = {}  # per example: user, item, time, position, device
        self.stats: dict[str, Any] = {}

    @property
    def spec(self) -> FeatureSpec:
        return self._spec

    @property
    def has_time(self) -> bool:
        return True

    @property
    def start_time(self) -> float:
        return self.source.world.start_time

    @property
    def end_time(self) -> float:
        """Impressions happen before this event time."""
        return self.source.world.start_time + self.source.hours * 3600.0

    def batches(self, batch_size: int) -> Any:
        batch, _ = self.examples()
        return minibatches(batch, batch_size)

    def __len__(self) -> int:
        return self.examples()[0].size

    def examples(self) -> tuple[Batch, np.ndarray]:
        """Every example (event time = its impression's) and when each was emitted, in emission
        order. Simulated and joined at the first call."""
        if self._batch is None:
            self._batch, self._emitted = self._build()
        assert self._emitted is not None
        return self._batch, self._emitted

    def _build(self) -> tuple[Batch, np.ndarray]:
        src = self.source
        world = src.world.model_copy(update={"seed": self.seed, "policy": src.policy})
        end = self.end_time
        run_until = end + src.window_s + src.allowed_lateness_s + world.chunk_seconds
        with tempfile.TemporaryDirectory(prefix="freshrec-simstream-") as tmp:
            joiner_cfg = JoinerConfig(
                state_dir=Path(tmp) / "joiner", labels=["click"], window_s=src.window_s,
                allowed_lateness_s=src.allowed_lateness_s, negative_rate=src.negative_rate, emit=src.emit,
                sampling_seed=self.seed, checkpoint_interval_s=1e15, checkpoint_every_records=1 << 60,
            )  # fmt: skip
            with open_log(path=Path(tmp) / "log", synchronous="normal") as log:
                for topic in joiner_cfg.input_topics:
                    log.create_topic(topic, 1)
                sim = Simulator(world)
                with Joiner(log, joiner_cfg) as joiner:
                    for events in sim.batches(until=run_until):
                        append_events(log, events)
                        while joiner.step() or not joiner.caught_up:
                            pass
                    joiner.drain()
                    metrics = joiner.metrics(lag=False).as_dict()
                examples = []
                offset = 0
                while records := log.read(joiner_cfg.examples_topic, 0, offset, max_records=65_536):
                    examples += decode_examples([r.value for r in records])
                    offset = records[-1].offset + 1
        examples = [e for e in examples if e.event_time < end]
        if not examples:
            raise ValueError(f"the simulated world produced no examples in {src.hours} h")
        cols = examples_to_columns(examples)
        batch = self._spec.encode(cols, weights=cols["sample_weight"], event_time=cols["event_time"])
        emitted = np.asarray(cols["emitted_at"], np.float64)
        self._sim = sim
        self._raw = {k: cols[k] for k in ("user_id", "item_id", "event_time", "position", "device")}
        st = sim.stats
        self.stats = {
            "impressions": st.impressions,
            "clicks": st.clicks,
            "items_listed": st.items_listed,
            "users": st.users,
            "examples": batch.size,
            "positives": int(np.asarray(cols["click"]).sum()),
            "joiner": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
        }
        return batch, emitted

    def true_probs(self) -> np.ndarray:
        """The ground-truth click probability of each example's impression, in stream order: what
        a perfect model would score (its AUC is the ceiling of any model's). Read after the run,
        so each user's interest is the one of their latest session: drift after an impression
        (hours, against a time constant of days) blurs it slightly."""
        self.examples()
        assert self._sim is not None
        r, true_ctr = self._raw, self._sim.true_ctr
        return np.array(
            [
                true_ctr(int(u), [i], float(t), positions=int(p), device=d)[0]
                for u, i, t, p, d in zip(
                    r["user_id"], r["item_id"], r["event_time"], r["position"], r["device"], strict=True
                )
            ]
        )

    def describe(self) -> str:
        """One line for the results' notes."""
        src, st = self.source, self.stats
        w = src.world
        live = live_catalog(w)
        text = (
            f"data: the simulator ({src.policy} policy, {src.hours:g} event h, {w.n_users:,} users, "
            f"~{live:,.0f} live items living {w.item_lifetime_median / 60:g} min (median), random-slate CTR "
            f"{w.random_ctr:.1%}) through the event log and the joiner (window {src.window_s:g} s, "
            f"emit at {src.emit.replace('_', ' ')}, negatives kept at {src.negative_rate:g}, "
            f"weight {1 / src.negative_rate:g})"
        )
        if st:
            text += f": {st['impressions']:,} impressions -> {st['examples']:,} examples ({st['positives']:,} clicks)"
        return text
