"""Train -> serve sync throughput: a realistic sparse delta (26 tables x 20k changed rows, dim 16)
published to the sync log and applied by a replica, per log backend.

    PYTHONPATH=src python scripts/bench_sync.py [--tables 26] [--rows 20000] [--dim 16]
        [--rounds 5] [--backends embedded,kafka] [--json PATH] [--quick]

Each round trains ``rows`` distinct IDs per table (drawn from 1M, so new rows and updates mix)
and then times, on that delta (upserts only: a tombstone is 8 bytes and one remove, noise here):
* ``publish``: ``Publisher.publish_sparse`` = drain the PS + encode + append (durable);
* ``apply``: ``Subscriber.poll`` on a float32 replica = read + decode + upsert/remove, and on a
  float16 replica.
Baselines in the same run: ``drain`` (``ps.drain_changes()`` alone: what the PS must do anyway)
for publishing, and ``assign`` (the same rows written straight into a serving PS, no log, no
decoding) for applying. Figures: ``delta_bytes``, ``delta_parts``, ``delta_bytes_per_row``,
``<backend>_publish_rows_per_s``, ``<backend>_apply_rows_per_s``, ``<backend>_apply_fp16_rows_per_s``,
``<backend>_publish_to_applied_s`` (one delta, publish start to applied); ratios
``<backend>_publish_vs_drain`` and ``<backend>_apply_vs_assign`` (time over baseline time, >= 1),
``delta_bytes_vs_raw`` (record bytes over 8 + 4 * dim bytes per row). Kafka runs on a local Tansu
broker (in memory, same machine). A script, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from freshrec.bench._report import BenchReport
from freshrec.features import FeatureSpec, SparseSlot
from freshrec.models import LRConfig, build_model
from freshrec.ps import LocalPS, PSConfig
from freshrec.stream import open_log
from freshrec.sync import Publisher, ServedModel, Subscriber, SyncConfig
from freshrec.sync.snapshot import new_serving_ps
from freshrec.table import SGD


def spec(tables: int, dim: int) -> FeatureSpec:
    return FeatureSpec(
        sparse=[SparseSlot(name=f"C{i + 1}") for i in range(tables)],
        labels=["click"],
        table_defaults={"dim": dim, "optimizer": SGD(lr=0.05)},
    )


def train_round(ps: LocalPS, rng: np.random.Generator, rows: int, now: float) -> None:
    """``rows`` distinct IDs per table pulled and pushed once."""
    ids = {t: rng.choice(1_000_000, rows, replace=False).astype(np.int64) for t in ps.tables}
    ps.pull_many(ids, train=True, now=now)
    grads = {t: (i, rng.normal(0, 0.01, (rows, ps.dim(t))).astype(np.float32)) for t, i in ids.items()}
    ps.push_many(grads, now=now)


def run_backend(backend: str, log, args, report: BenchReport, work: Path) -> None:
    sp = spec(args.tables, args.dim)
    model = LRConfig()
    ps = LocalPS(sp.table_configs(), PSConfig(num_shards=1, threads=2))
    module = build_model(model, sp)
    cfg = SyncConfig(snapshot_dir=work / f"snaps-{backend}", retire_after=0.0, full_delta_on_start=False)
    name = f"bench-{backend}-{int(time.time() * 1000) % 10**9}"
    pub = Publisher(name, ps, lambda: module, log, cfg)
    subs = {}
    for fp16 in (False, True):
        serving = new_serving_ps(sp.table_configs(), fp16=fp16, config=PSConfig(num_shards=1, threads=2))
        state = ServedModel(name, sp, model, build_model(model, sp), serving)
        sub = Subscriber(state, log, cfg.model_copy(update={"fp16": fp16}), registry=CollectorRegistry())
        sub.poll()
        subs[fp16] = sub
    baseline_ps = new_serving_ps(sp.table_configs(), fp16=False, config=PSConfig(num_shards=1, threads=2))
    ps.warmup()
    rng = np.random.default_rng(0)
    t = {"drain": [], "publish": [], "apply": [], "apply_fp16": [], "assign": [], "e2e": []}
    rows_per_round, size, parts = [], [], []
    for r in range(args.rounds + 1):  # round 0 warms up (first appends, first numba calls)
        now = float(r + 1)
        # baseline: the drain alone, on an identical round
        train_round(ps, rng, args.rows, now)
        t0 = time.perf_counter()
        changes = ps.drain_changes()
        t_drain = time.perf_counter() - t0
        t0 = time.perf_counter()
        for tab, c in changes.tables.items():
            baseline_ps.assign(tab, c.upserts.ids, c.upserts.embeddings)
            baseline_ps.remove(tab, c.removed)
        t_assign = time.perf_counter() - t0
        pub.publish_sparse()  # a heartbeat: the baseline's drain took this round's changes
        for sub in subs.values():
            sub.poll()
        # measured: publish and apply a fresh round of the same size
        train_round(ps, rng, args.rows, now + 0.5)
        t0 = time.perf_counter()
        res = pub.publish_sparse()
        t_pub = time.perf_counter() - t0
        t1 = time.perf_counter()
        subs[False].poll()
        t_apply = time.perf_counter() - t1
        t_e2e = time.perf_counter() - t0
        t1 = time.perf_counter()
        subs[True].poll()
        t_apply16 = time.perf_counter() - t1
        if r == 0:
            continue
        t["drain"].append(t_drain)
        t["assign"].append(t_assign)
        t["publish"].append(t_pub)
        t["apply"].append(t_apply)
        t["apply_fp16"].append(t_apply16)
        t["e2e"].append(t_e2e)
        rows_per_round.append(res.rows + res.removed)
        size.append(res.bytes)
        parts.append(res.parts)
    med = {k: float(np.median(v)) for k, v in t.items()}
    rows = float(np.median(rows_per_round))
    upsert_bytes = 8 + 4 * args.dim
    if "delta_bytes" not in report.figures:
        report.figure("delta_rows", rows)
        report.figure("delta_bytes", float(np.median(size)))
        report.figure("delta_parts", float(np.median(parts)))
        report.figure("delta_bytes_per_row", float(np.median(size)) / rows)
        report.ratio("delta_bytes_vs_raw", float(np.median(size)) / (rows * upsert_bytes))
    report.figure(f"{backend}_publish_rows_per_s", rows / med["publish"])
    report.figure(f"{backend}_apply_rows_per_s", rows / med["apply"])
    report.figure(f"{backend}_apply_fp16_rows_per_s", rows / med["apply_fp16"])
    report.figure(f"{backend}_publish_to_applied_s", med["e2e"])
    report.figure(f"{backend}_drain_rows_per_s", rows / med["drain"])
    report.figure(f"{backend}_assign_rows_per_s", rows / med["assign"])
    report.ratio(f"{backend}_publish_vs_drain", med["publish"] / med["drain"])
    report.ratio(f"{backend}_apply_vs_assign", med["apply"] / med["assign"])
    for sub in subs.values():
        sub.close()
        sub.state.close()
    baseline_ps.close()
    ps.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=int, default=26)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--backends", default="embedded,kafka")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="2 rounds, embedded only")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.backends = 2, "embedded"
    torch.set_num_threads(1)
    report = BenchReport("sync", params={k: v for k, v in vars(args).items() if k != "json"})
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-sync-"))
    try:
        for backend in args.backends.split(","):
            if backend == "embedded":
                with open_log(path=work / "log") as log:
                    run_backend(backend, log, args, report, work)
            elif backend == "kafka":
                from freshrec.stream import LocalBroker

                with LocalBroker() as broker, open_log(broker.log_config()) as log:
                    run_backend(backend, log, args, report, work)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.print()
    if args.json:
        print(f"wrote {report.write_json(args.json)}")


if __name__ == "__main__":
    main()
