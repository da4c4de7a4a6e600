"""Event-log throughput: append then read back N records of ~150 bytes in batches, per backend.

    PYTHONPATH=src python scripts/bench_eventlog.py [--records 1000000] [--batch 10000]
        [--partitions 1] [--backends embedded,kafka] [--json PATH] [--quick]

Figures per backend: ``<backend>_append_records_per_s``, ``<backend>_read_records_per_s`` and
``<backend>_append_read_records_per_s`` (N / (append time + read time)). The baseline, measured
in the same run, is the floor of a durable log on this disk: length-prefixed records appended
to one file with an fsync per batch and split back into bytes objects; ratios are
``<backend>_vs_file``. Kafka runs on a local Tansu broker (in memory, same machine). A script,
not a test: ``freshrec bench joiner`` will fold it in.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from freshrec.bench._report import BenchReport
from freshrec.stream import EventLog, LocalBroker, open_log


def make_batch(
    rng: random.Random, batch: int, value_bytes: int, start: int
) -> tuple[list[bytes], list[bytes]]:
    body = rng.randbytes(value_bytes - 12)
    values = [b"%012d" % (start + i) + body for i in range(batch)]  # unique, ~value_bytes each
    keys = [b"user-%d" % rng.randrange(100_000) for _ in range(batch)]
    return values, keys


def run_log(
    log: EventLog, batches: list[tuple[list[bytes], list[bytes]]], partitions: int
) -> tuple[float, float]:
    """Seconds to append every batch, then to read everything back in batch-sized reads."""
    topic = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    log.create_topic(topic, partitions)
    batch = len(batches[0][0])
    t0 = time.perf_counter()
    for values, keys in batches:
        log.append(topic, values, keys)
    t_append = time.perf_counter() - t0
    n = 0
    t0 = time.perf_counter()
    for p in range(partitions):
        offset = 0
        while recs := log.read(topic, p, offset, max_records=batch):
            offset = recs[-1].offset + 1
            n += len(recs)
    t_read = time.perf_counter() - t0
    total = sum(len(v) for v, _ in batches)
    if n != total:
        raise SystemExit(f"read back {n} records, appended {total}")
    return t_append, t_read


def run_file(directory: Path, batches: list[tuple[list[bytes], list[bytes]]]) -> tuple[float, float]:
    """The baseline: one file, [count][lengths][values] per batch, fsync per batch."""
    path = directory / "baseline.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for values, _ in batches:
            lengths = np.fromiter(map(len, values), np.int32, len(values))
            f.write(np.int64(len(values)).tobytes() + lengths.tobytes() + b"".join(values))
            f.flush()
            os.fsync(f.fileno())
    t_append = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    with open(path, "rb") as f:
        while head := f.read(8):
            count = int(np.frombuffer(head, np.int64)[0])
            lengths = np.frombuffer(f.read(4 * count), np.int32)
            data = f.read(int(lengths.sum()))
            ends = np.cumsum(lengths).tolist()
            starts = [0, *ends[:-1]]
            n += len([data[a:b] for a, b in zip(starts, ends, strict=True)])
    t_read = time.perf_counter() - t0
    assert n == sum(len(v) for v, _ in batches)
    return t_append, t_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--value-bytes", type=int, default=150)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--backends", default="embedded,kafka")
    ap.add_argument(
        "--dir", type=Path, default=None, help="where the embedded log goes (default: a temp dir)"
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="100k records")
    args = ap.parse_args()
    records = 100_000 if args.quick else args.records
    rng = random.Random(0)
    batches = [make_batch(rng, args.batch, args.value_bytes, i) for i in range(0, records, args.batch)]
    n = sum(len(v) for v, _ in batches)
    report = BenchReport(
        "eventlog",
        params={
            "records": n,
            "batch": args.batch,
            "value_bytes": args.value_bytes,
            "partitions": args.partitions,
        },
    )
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-", dir=args.dir))
    try:
        fa, fr = run_file(work, batches)
        report.figure("file_append_read_records_per_s", n / (fa + fr))
        for backend in args.backends.split(","):
            if backend == "embedded":
                with open_log(path=work / "log") as log:
                    ta, tr = run_log(log, batches, args.partitions)
                report.figure(
                    "embedded_bytes_on_disk", sum(f.stat().st_size for f in (work / "log").iterdir())
                )
            elif backend == "kafka":
                with LocalBroker() as broker, open_log(broker.log_config()) as log:
                    ta, tr = run_log(log, batches, args.partitions)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            report.figure(f"{backend}_append_records_per_s", n / ta)
            report.figure(f"{backend}_read_records_per_s", n / tr)
            report.figure(f"{backend}_append_read_records_per_s", n / (ta + tr))
            report.ratio(f"{backend}_vs_file", (fa + fr) / (ta + tr))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.notes.append("append+read = records / (append seconds + read seconds); file = fsync'd flat file")
    report.print()
    if args.json:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
