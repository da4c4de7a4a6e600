"""``freshrec bench train``: training throughput of freshrec against plain torch.

DeepFM with 26 sparse slots (dim 16, Zipf(1.1) IDs over 10M per slot), 13 dense features, MLP
400-400-400, batch 4096, 2 threads. freshrec: collisionless tables (per-coordinate Adagrad) in a
LocalPS. Baseline: the same DeepFM module fed by ``torch.nn.EmbeddingBag(sparse=True)`` with
``torch.optim.Adagrad``, IDs taken modulo 10M. Twenty-six separate 10M-row torch tables plus their
Adagrad state would need 33 GB, so the baseline's slots share one 10M-row table (each slot's IDs
salted): the same number of lookups and updates per step; its table is on huge pages as ours is
(:func:`~freshrec.bench.table.torch_bag`). Both use Adam for the dense part. The two take turns
step by step, each going first every other step, and each figure is from the median step: this
VM's noise hits both alike, and one slow step (measured: 881 ms among 95 ms ones) does not move
the ratio.

With the ``ray`` extra installed, a third side trains the same model with its tables in a RayPS
(``ray_ps_*``: two shard actors on a local Ray instance, started before the clock): what moving
the parameter server out of the trainer's process costs on one machine (every pull and push
crosses to another process), beside the in-process LocalPS of the same run.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from freshrec.bench._report import BenchReport, peak_rss_bytes, time_each
from freshrec.bench.table import IdStream, torch_bag
from freshrec.features import Batch, DenseFeature, FeatureSpec, Jagged, SparseSlot
from freshrec.models import DeepFMConfig, build_model
from freshrec.ps import PSConfig
from freshrec.table import Adagrad
from freshrec.train import TrainConfig, Trainer

SLOTS, DIM, N_DENSE, BATCH, UNIVERSE, THREADS = 26, 16, 13, 4096, 10_000_000, 2
HIDDEN = [400, 400, 400]


def _spec() -> FeatureSpec:
    return FeatureSpec(
        sparse=[SparseSlot(name=f"C{i + 1}") for i in range(SLOTS)],
        dense=[DenseFeature(name=f"I{i + 1}") for i in range(N_DENSE)],
        labels=["click"],
        table_defaults={"dim": DIM, "optimizer": Adagrad(lr=0.05)},
    )


def _batches(n: int, seed: int) -> list[Batch]:
    streams = [IdStream("zipf", UNIVERSE, seed * 1000 + s) for s in range(SLOTS)]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sparse = {f"C{s + 1}": Jagged.single(IdStream.keys(streams[s].ranks(BATCH))) for s in range(SLOTS)}
        out.append(
            Batch(
                sparse=sparse,
                dense=rng.normal(size=(BATCH, N_DENSE)).astype(np.float32),
                labels=(rng.random((BATCH, 1)) < 0.25).astype(np.float32),
                weights=np.ones(BATCH, np.float32),
                event_time=np.full(BATCH, float(i)),
            )
        )
    return out


class TorchBaseline:
    """The same DeepFM on a torch EmbeddingBag(sparse=True) table with torch Adagrad."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.model = build_model(DeepFMConfig(hidden=HIDDEN), spec)
        self.bag, self.sparse_opt = torch_bag(UNIVERSE, DIM, lr=0.05)
        self.dense_opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.slots = spec.slot_names
        self.salt = np.arange(SLOTS, dtype=np.int64)[:, None] * np.int64(0x9E3779B1)

    def step(self, batch: Batch) -> None:
        ids = np.stack([batch.sparse[s].values for s in self.slots])  # (S, B)
        index = torch.from_numpy(((ids ^ self.salt) % UNIVERSE).reshape(-1))
        offsets = torch.arange(index.numel(), dtype=torch.int64)
        emb = self.bag(index, offsets).view(SLOTS, BATCH, DIM)  # (S, B, D)
        logits = self.model({s: emb[i] for i, s in enumerate(self.slots)}, torch.from_numpy(batch.dense))
        loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(batch.labels))
        self.sparse_opt.zero_grad(set_to_none=True)
        self.dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.sparse_opt.step()
        self.dense_opt.step()


def run(*, quick: bool = False, seed: int = 0) -> BenchReport:
    torch.set_num_threads(THREADS)
    torch.sparse.check_sparse_tensor_invariants.disable()  # explicit: torch's default, minus its warning
    warm, steps = (2, 8) if quick else (3, 40)
    report = BenchReport(
        "train",
        params={
            "model": "deepfm",
            "slots": SLOTS,
            "dim": DIM,
            "dense": N_DENSE,
            "hidden": HIDDEN,
            "batch": BATCH,
            "threads": THREADS,
            "ids": f"zipf(1.1) over {UNIVERSE:,} per slot",
            "steps": steps,
            "baseline": "torch EmbeddingBag(sparse=True) + Adagrad, one 10M-row table shared by the slots",
            "quick": quick,
        },
    )
    spec = _spec()
    batches = _batches(warm + steps, seed)
    ours = Trainer(spec, DeepFMConfig(hidden=HIDDEN), TrainConfig(threads=THREADS), ps_config=PSConfig(threads=THREADS))
    on_ray = None
    try:  # closed whatever happens: the Ray side's actors (and the Ray it started) must not outlive the run
        on_ray = _ray_trainer(spec, report)
        _measure(report, batches, warm, ours, TorchBaseline(spec), on_ray)
    finally:
        ours.close()
        if on_ray is not None:
            on_ray.close()
    return report


def _measure(report: BenchReport, batches: list[Batch], warm: int, ours: Trainer, theirs: TorchBaseline,
             on_ray: Trainer | None) -> None:  # fmt: skip
    sides = {"ours": ours, "theirs": theirs}
    if on_ray is not None:
        sides["ray"] = on_ray
    for b in batches[:warm]:  # compile kernels, allocate state
        for side in sides.values():
            side.step(b)
    for trainer in (ours, on_ray):
        if trainer is not None:
            trainer.counters.pull_push_seconds = trainer.counters.step_seconds = 0.0
    t = time_each({name: side.step for name, side in sides.items()}, batches[warm:])
    t_ours, t_theirs = float(np.median(t["ours"])), float(np.median(t["theirs"]))
    report.figure("train_examples_per_s", BATCH / t_ours)
    report.figure("torch_baseline_examples_per_s", BATCH / t_theirs)
    report.ratio("train_vs_torch_baseline", t_theirs / t_ours)
    report.figure("step_seconds_spread_ours", float(np.ptp(t["ours"])))
    report.figure("step_seconds_spread_torch", float(np.ptp(t["theirs"])))
    report.figure("pull_push_share", ours.counters.pull_push_seconds / ours.counters.step_seconds)
    report.figure("rows_in_ps", float(sum(s.rows for s in ours.ps.stats().values())))
    report.figure("peak_rss_bytes", float(peak_rss_bytes()))
    report.notes.append("target: train_vs_torch_baseline >= 1.0 (collisionless must cost nothing)")
    if on_ray is not None:
        t_ray = float(np.median(t["ray"]))
        report.figure("ray_ps_train_examples_per_s", BATCH / t_ray)
        report.ratio("ray_ps_vs_local_ps", t_ours / t_ray)
        report.figure("ray_ps_pull_push_share", on_ray.counters.pull_push_seconds / on_ray.counters.step_seconds)


def _ray_trainer(spec: FeatureSpec, report: BenchReport) -> Trainer | None:
    """The model on a RayPS of two shard actors (one thread each: the VM has two cores), or
    None with a note when the ray extra is not installed."""
    try:
        import ray  # noqa: F401  (the optional extra RayPS needs)
    except ImportError as exc:
        report.notes.append(f"ray: skipped ({exc}; pip install 'freshrec[ray]')")
        return None
    # "local": a Ray instance of its own, as the report says, even where `ray start` made a
    # cluster on this machine (unset, Ray joins it: other machines' shards, other jobs' load)
    config = PSConfig(backend="ray", num_shards=2, threads=1, ray_address="local")
    return Trainer(spec, DeepFMConfig(hidden=HIDDEN), TrainConfig(threads=THREADS), ps_config=config)
