"""``freshrec bench serve``: /v1/rank latency under a fixed request rate while the served model
takes a sparse delta every second, and how fresh those deltas are.

Setup: a DeepFM ranker over the simulator's feature names (10 sparse slots, dim 16, one dense
feature, MLP 400-400-400) is trained on synthetic data and loaded as a :class:`ServedModel`; a
replica serves it from this process (uvicorn, one event loop + request threads, torch at one
thread per request). A load generator in another process (``bench/_loadgen.py``: asyncio httpx,
open loop) calls /v1/rank with 100 candidates at ``rate`` requests per second; latency counts
from each request's scheduled send time, so a stall cannot hide behind a slow client
(coordinated omission).

Meanwhile a thread plays the training side: examples arrive at ``examples_per_s`` (arrival
times spread over each second), and every ``sync_interval_s`` a :class:`Trainer` steps on what
arrived, drains the rows it touched (``ps.drain_changes()``) and applies them to the served
model with ``ServedModel.apply_sparse`` (in-process: the sync subscriber over the event log is a
separate component). Freshness of an example = wall time the delta holding it was applied -
its arrival.

Baseline, same run: the 100-candidate forward pass in-process (``ServedModel.predict`` on an
encoded batch), so ``rank_p99_vs_forward`` is what HTTP, parsing, features and contention add.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from freshrec.bench._report import BenchReport
from freshrec.errors import StateError
from freshrec.features import DenseFeature, FeatureSpec, SparseSlot
from freshrec.models import DeepFMConfig
from freshrec.serve import BackgroundServer, ServeConfig
from freshrec.serve.features import ColumnBuilder
from freshrec.sync import ServedModel, ServingState
from freshrec.train import TrainConfig, Trainer

__all__ = ["DeltaApplier", "run"]

DIM, HIDDEN, CANDIDATES = 16, [400, 400, 400], 100
USERS, ITEMS, SELLERS, CATEGORIES = 50_000, 20_000, 500, 40
DEVICES = ["ios", "android", "web"]


def _spec() -> FeatureSpec:
    slots = [
        "user_id",
        "segment",
        "age_bucket",
        "hour",
        "device",
        "item_id",
        "category",
        "seller_id",
        "price_bucket",
        "format",
    ]
    return FeatureSpec(
        sparse=[SparseSlot(name=s) for s in slots],
        dense=[DenseFeature(name="price", transform="log1p")],
        labels=["click"],
        table_defaults={"dim": DIM, "admission": {"min_count": 1}},
    )


class World:
    """Synthetic users and items with the simulator's feature names (the model need not be good;
    the tables and the request shapes must be realistic)."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.item_category = rng.integers(0, CATEGORIES, ITEMS)
        self.item_seller = rng.zipf(1.3, ITEMS) % SELLERS
        self.item_price = rng.lognormal(3.0, 1.0, ITEMS)
        self.item_auction = rng.random(ITEMS) < 0.4
        self.user_segment = rng.integers(0, 8, USERS)
        self.user_age = rng.integers(0, 6, USERS)
        self.next_user = USERS  # new users arrive with the deltas

    def item(self, i: int) -> dict:
        price = float(self.item_price[i])
        return {
            "category": int(self.item_category[i]),
            "seller_id": f"s{self.item_seller[i]}",
            "price_bucket": int(np.log2(1 + price)),
            "format": "auction" if self.item_auction[i] else "fixed",
            "price": round(price, 2),
        }

    def columns(self, n: int, *, new_users: int = 0) -> dict:
        rng = self.rng
        users = rng.integers(0, USERS, n)
        if new_users:
            users[:new_users] = np.arange(self.next_user, self.next_user + new_users)
            self.next_user += new_users
        items = rng.integers(0, ITEMS, n)
        cat = self.item_category[items]
        logit = -2.0 + np.where(cat % 3 == 0, 1.5, 0.0) + 0.3 * (self.user_segment[users % USERS] == cat % 8)
        price = self.item_price[items]
        return {
            "user_id": users,
            "segment": self.user_segment[users % USERS],
            "age_bucket": self.user_age[users % USERS],
            "hour": rng.integers(0, 24, n),
            "device": rng.choice(DEVICES, n).tolist(),
            "item_id": [f"it{i}" for i in items.tolist()],
            "category": cat,
            "seller_id": [f"s{s}" for s in self.item_seller[items].tolist()],
            "price_bucket": np.log2(1 + price).astype(np.int64),
            "format": np.where(self.item_auction[items], "auction", "fixed").tolist(),
            "price": price,
            "click": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32),
        }

    def request(self) -> dict:
        rng = self.rng
        u = int(rng.integers(0, USERS))
        items = rng.choice(ITEMS, CANDIDATES, replace=False).tolist()
        return {
            "user_id": u,
            "user_features": {"segment": int(self.user_segment[u]), "age_bucket": int(self.user_age[u])},
            "context": {"hour": int(rng.integers(0, 24)), "device": DEVICES[int(rng.integers(0, 3))]},
            "candidates": [{"item_id": f"it{i}", "features": self.item(i)} for i in items],
        }


class DeltaApplier:
    """The training side, in a thread: every ``interval_s``, train on the examples that arrived
    since the last tick, then ship the rows that changed to the served model."""

    def __init__(
        self,
        trainer: Trainer,
        served: ServedModel,
        world: World,
        *,
        examples_per_s: float,
        interval_s: float = 1.0,
        new_users_per_s: float = 20.0,
    ) -> None:
        self.trainer, self.served, self.world = trainer, served, world
        self.examples_per_s, self.interval_s, self.new_users_per_s = (
            examples_per_s,
            interval_s,
            new_users_per_s,
        )
        self.freshness: list[np.ndarray] = []
        self.rows: list[int] = []
        self.apply_s: list[float] = []
        self.step_s: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-deltas", daemon=True)
        self.trainer.ps.drain_changes()  # what loading wrote is already in the served copy

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        rng = np.random.default_rng(1)
        last = time.time()
        version = 0
        while not self._stop.wait(max(0.0, last + self.interval_s - time.time())):
            now = time.time()
            n = int(rng.poisson(self.examples_per_s * (now - last)))
            arrivals = np.sort(rng.uniform(last, now, n))  # (n,) wall seconds
            last = now
            if n == 0:
                continue
            cols = self.world.columns(n, new_users=min(n, int(rng.poisson(self.new_users_per_s))))
            t0 = time.perf_counter()
            self.trainer.step(self.trainer.spec.encode(cols, event_time=arrivals))
            changes = self.trainer.ps.drain_changes()
            t1 = time.perf_counter()
            for table, ch in changes.tables.items():
                self.served.apply_sparse(table, ch.upserts.ids, ch.upserts.embeddings, ch.removed)
            version += 1
            self.served.mark(sparse_version=version, event_time=float(arrivals[-1]))
            applied = time.time()
            self.step_s.append(t1 - t0)
            self.apply_s.append(time.perf_counter() - t1)
            self.rows.append(changes.num_rows)
            self.freshness.append(applied - arrivals)


def _median_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def run(*, quick: bool = False, seed: int = 0, rate: float = 200.0, client: str = "raw") -> BenchReport:
    seconds = 10.0 if quick else 40.0
    examples_per_s = 1000.0
    report = BenchReport(
        "serve",
        params={
            "model": "deepfm",
            "hidden": HIDDEN,
            "dim": DIM,
            "slots": 10,
            "dense": 1,
            "candidates": CANDIDATES,
            "rate_per_s": rate,
            "seconds": seconds,
            "quick": quick,
            "load_generator": f"separate process, asyncio ({client} client), open loop, latency from the "
            "scheduled send time",
            "server": "uvicorn in this process (uvloop, httptools when installed); /v1/rank on the event "
            "loop; torch_threads=1, ps_threads=1",
            "sync": "a Trainer in this process steps every 1 s on the examples that arrived; the rows it "
            "changed (ps.drain_changes) are applied with ServedModel.apply_sparse, in-process: the "
            "event-log sync subscriber is not used",
            "examples_per_s": examples_per_s,
        },
    )
    world = World(seed)
    spec = _spec()
    with tempfile.TemporaryDirectory(prefix="freshrec-bench-serve-") as tmp:
        root = Path(tmp)
        trainer = Trainer(
            spec, DeepFMConfig(hidden=HIDDEN), TrainConfig(threads=1, negative_sampling_rate=0.25)
        )
        for i in range(10 if quick else 30):
            trainer.step(spec.encode(world.columns(4096), event_time=np.full(4096, float(i))))
        trainer.save(root / "rank")
        served = ServedModel.from_model_dir(root / "rank")
        torch.set_num_threads(1)
        served.warmup()

        # the baseline: the same 100-candidate forward pass, in-process
        body = world.request()
        builder = ColumnBuilder(spec)
        ids = [c["item_id"] for c in body["candidates"]]
        feats = [c["features"] for c in body["candidates"]]
        cols, _ = builder.raw(body["user_id"], body["user_features"], body["context"], ids, feats)
        batch = builder.encode(cols, CANDIDATES)
        report.figure("forward_only_ms", _median_ms(lambda: served.predict(batch), 300))
        report.figure(
            "features_encode_ms",
            _median_ms(
                lambda: builder.encode(
                    builder.raw(body["user_id"], body["user_features"], body["context"], ids, feats)[0],
                    CANDIDATES,
                ),
                300,
            ),
        )

        bodies = root / "bodies.jsonl"
        bodies.write_text("\n".join(json.dumps(world.request()) for _ in range(256)) + "\n")
        config = ServeConfig.from_dict(
            {
                "port": 0,
                "arms": [{"name": "control", "model_dir": str(root / "rank")}],
                "log": {"path": str(root / "log"), "synchronous": "normal"},
                "tail_items": False,
            }
        )
        deltas = DeltaApplier(trainer, served, world, examples_per_s=examples_per_s)
        with BackgroundServer(config, {"control": ServingState(served)}) as server:
            deltas.start()
            out = root / "load.json"
            cmd = [
                sys.executable,
                "-m",
                "freshrec.bench._loadgen",
                f"{server.url}/v1/rank",
                str(bodies),
                str(out),
                "--rate",
                str(rate),
                "--seconds",
                str(seconds),
                "--client",
                client,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
            deltas.stop()
            if proc.returncode != 0:
                raise StateError(f"the load generator failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
            load = json.loads(out.read_text())
            metrics_text = httpx.get(f"{server.url}/metrics", timeout=10).text
        trainer.close()

    lat = np.array(load["latency_s"]) * 1e3  # (n,) ms
    status = np.array(load["status"])
    ok = status == 200
    report.figure("rank_p50_ms", float(np.percentile(lat, 50)))
    report.figure("rank_p99_ms", float(np.percentile(lat, 99)))
    report.figure("rank_p999_ms", float(np.percentile(lat, 99.9)))
    report.figure("rank_max_ms", float(lat.max()))
    report.figure("rank_qps", float(ok.sum() / load["elapsed_s"]))
    report.figure("error_rate", float(1.0 - ok.mean()))
    report.figure("requests", float(len(lat)))
    fresh = np.concatenate(deltas.freshness) if deltas.freshness else np.array([np.nan])
    report.figure("freshness_p50_s", float(np.percentile(fresh, 50)))
    report.figure("freshness_p99_s", float(np.percentile(fresh, 99)))
    report.figure("deltas_applied", float(len(deltas.rows)))
    report.figure("delta_rows_mean", float(np.mean(deltas.rows)) if deltas.rows else 0.0)
    report.figure("delta_train_step_ms_p50", float(np.median(deltas.step_s)) * 1e3 if deltas.step_s else 0.0)
    report.figure("delta_apply_ms_p50", float(np.median(deltas.apply_s)) * 1e3 if deltas.apply_s else 0.0)
    report.figure("served_sparse_version", float(served.sparse_version))
    report.ratio("rank_p99_vs_forward", report.figures["rank_p99_ms"] / report.figures["forward_only_ms"])
    report.ratio("rank_p50_vs_forward", report.figures["rank_p50_ms"] / report.figures["forward_only_ms"])
    report.notes.append(
        f"targets: rank_p99_ms <= 10 at {rate:.0f} QPS with error_rate 0; freshness_p99_s <= 2. "
        f"server histogram: {_server_line(metrics_text)}"
    )
    return report


def _server_line(metrics_text: str) -> str:
    """The server's own count of /v1/rank requests with a 200, from its /metrics."""
    for line in metrics_text.splitlines():
        if (
            line.startswith("freshrec_serve_requests_total{")
            and 'endpoint="/v1/rank"' in line
            and '"200"' in line
        ):
            return line
    return "(no /v1/rank samples)"
