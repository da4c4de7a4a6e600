"""``freshrec bench joiner``: the online joiner against the event log it reads from.

Workload: the simulator's live-commerce stream (``random_ctr = 0.025``: ~3% actions per
impression) cut at 1M impressions (300k with ``--quick``), appended in event-time order to an
``impressions`` topic (2 partitions) and an ``actions`` topic (1), keyed by request id.

* **Baseline** (``log_append_read_events_per_s``): append the same encoded records to the same
  topics in batches of 10k, then read them all back with ``read_columns`` (the read the joiner
  uses); ``log_append_read_records_events_per_s`` reads with ``read()`` (a ``LogRecord`` each).
* **Joiner** (``joiner_events_per_s``): input records / wall time of a joiner, in a fresh
  process, reading every record from the log, joining, writing examples to the examples topic,
  checkpointing (every 500k records and at the end); down-sampling negatives at 0.1 (the
  paper's practice; about three kept negatives per positive here). ``[negative_rate=1]``: the
  same keeping every negative (one example per impression). ``[memory_max=50k]``: the same with
  at most 50k of the ~150k open impressions in memory, the rest spilled to SQLite. The joiner's
  process reports its peak RSS; open windows at the end stay open (a live stream is never
  drained).
* The same through the Kafka backend against a local Tansu broker (``kafka_*``), if the
  ``kafka`` extra is installed.

Every ratio is joiner / baseline in the same run: three rounds (two with ``--quick``; one on
Kafka) of baseline-then-joiners, each round on a fresh log, medians reported. Targets:
``joiner_events_per_s >= 100k``, ``joiner_vs_log >= 0.5``.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.bench._report import BenchReport, peak_rss_bytes
from freshrec.errors import BackendError

BATCH = 10_000
SIM = {"random_ctr": 0.025}  # ~3% actions per impression with the default follow-ups
JOIN = {"negative_rate": 0.1}
# joiner configurations measured besides JOIN, by the tag their figures carry
VARIANTS = {"[negative_rate=1]": {"negative_rate": 1.0}, "[memory_max=50k]": {"memory_max_impressions": 50_000}}
TOPICS = (("impressions", 2), ("actions", 1))


def _stream(n_impressions: int, seed: int) -> tuple[list[tuple[str, list[bytes], list[bytes]]], int, int]:
    """The simulator's stream up to its n-th impression, as append batches (topic, values, keys)
    in event-time order; and the numbers of impressions and actions."""
    from freshrec.sim import SimConfig, Simulator
    from freshrec.stream.events import Action, Impression, encode

    sim = Simulator(SimConfig(seed=seed, **SIM))
    batches: list[tuple[str, list[bytes], list[bytes]]] = []
    n_imp = n_act = 0
    for chunk in sim.batches():
        imps = [e for e in chunk if type(e) is Impression]
        if n_imp + len(imps) >= n_impressions:  # cut at the n-th impression
            last = imps[n_impressions - n_imp - 1]
            chunk = chunk[: chunk.index(last) + 1]
        for topic, cls in (("impressions", Impression), ("actions", Action)):
            evs = [e for e in chunk if type(e) is cls]
            if evs:
                batches.append((topic, encode(evs), [str(e.request_id).encode() for e in evs]))
                if cls is Impression:
                    n_imp += len(evs)
                else:
                    n_act += len(evs)
        if n_imp >= n_impressions:
            break
    return _rebatch(batches), n_imp, n_act


def _rebatch(
    batches: list[tuple[str, list[bytes], list[bytes]]],
) -> list[tuple[str, list[bytes], list[bytes]]]:
    """Merge consecutive chunks into appends of about BATCH records per topic, in order."""
    out: list[tuple[str, list[bytes], list[bytes]]] = []
    pending: dict[str, tuple[list[bytes], list[bytes]]] = {t: ([], []) for t, _ in TOPICS}
    for topic, values, keys in batches:
        pending[topic][0].extend(values)
        pending[topic][1].extend(keys)
        if sum(len(v) for v, _ in pending.values()) >= BATCH:
            out += [(t, v, k) for t, (v, k) in pending.items() if v]
            pending = {t: ([], []) for t, _ in TOPICS}
    out += [(t, v, k) for t, (v, k) in pending.items() if v]
    return out


def _baseline(log: Any, batches: list[tuple[str, list[bytes], list[bytes]]], n: int, suffix: str) -> dict[str, float]:
    """Append + read of the same records through ``log`` (columns, then records), to the topics
    named with ``suffix``."""
    for topic, parts in TOPICS:
        log.create_topic(topic + suffix, parts)
    t0 = time.perf_counter()
    for topic, values, keys in batches:
        log.append(topic + suffix, values, keys)
    t_append = time.perf_counter() - t0
    out = {"log_append_events_per_s": n / t_append}
    for name, read in (("read_columns", log.read_columns), ("read", log.read)):
        for topic, parts in TOPICS:  # untimed: a Kafka log makes its consumer at the first read
            for p in range(parts):
                read(topic + suffix, p, 0, max_records=1)
        t0 = time.perf_counter()
        got = 0
        # a batch from each partition in turn, as the joiner reads (on Kafka every partition's
        # consumer then fetches while the others are read; one partition to its end at a time
        # measured 125-178k records/s there against ~210k)
        offsets = {(topic + suffix, p): 0 for topic, parts in TOPICS for p in range(parts)}
        while offsets:
            for (topic, p), offset in list(offsets.items()):
                recs = read(topic, p, offset, max_records=8192)
                k = len(recs.values) if name == "read_columns" else len(recs)
                if k:
                    got += k
                    offsets[topic, p] = offset + k
                else:
                    del offsets[topic, p]
        t_read = time.perf_counter() - t0
        assert got == n, f"read {got} of {n} records back"
        tag = "" if name == "read_columns" else "_records"
        out[f"log_read{tag}_events_per_s"] = n / t_read
        out[f"log_append_read{tag}_events_per_s"] = n / (t_append + t_read)
    return out


def _joiner_phase(log_config: dict[str, Any], joiner_config: dict[str, Any], queue: Any) -> None:
    """In a fresh process: run a joiner over the whole log; report speed, counts and memory."""
    from freshrec.bench._report import rss_bytes
    from freshrec.joiner import Joiner, JoinerConfig
    from freshrec.stream import LogConfig, open_log

    with open_log(LogConfig(**log_config)) as log:
        joiner = Joiner(log, JoinerConfig(**joiner_config))
        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        m = joiner.run(until_idle=True)
        wall = time.perf_counter() - t0
        gc.collect()
        rss1 = rss_bytes()
        joiner.close()
        peak = peak_rss_bytes()
    queue.put(
        {
            "events_per_s": m.events_in / wall,
            "seconds": wall,
            "events_in": m.events_in,
            "examples_out": m.examples_out,
            "positives_out": m.positives_out,
            "negatives_out": m.negatives_out,
            "late_label_updates": m.late_label_updates,
            "join_rate": m.join_rate,
            "open_impressions_end": m.open_impressions,
            "open_impressions_on_disk_end": m.open_impressions_on_disk,
            "checkpoints": m.checkpoints,
            "peak_rss_bytes": peak,
            # what the open windows hold at the end (input buffers and allocator slack included)
            "resident_bytes_per_open_impression": (rss1 - rss0) / max(m.open_impressions, 1),
        }
    )


def _run_joiner(log_config: dict[str, Any], joiner_config: dict[str, Any]) -> dict[str, float]:
    ctx = mp.get_context("spawn")  # a clean process: its peak RSS is the joiner's
    queue = ctx.Queue()
    proc = ctx.Process(target=_joiner_phase, args=(log_config, joiner_config, queue))
    proc.start()
    try:
        result = queue.get(timeout=3600)
    finally:
        proc.join(60)
    if proc.exitcode != 0:
        raise RuntimeError(f"the joiner process failed (exit code {proc.exitcode})")
    return result


_REPORTED = (
    "examples_out", "positives_out", "negatives_out", "open_impressions_end", "open_impressions_on_disk_end",
    "peak_rss_bytes",
    "resident_bytes_per_open_impression", "checkpoints", "join_rate",
)  # fmt: skip


def _backend(
    report: BenchReport, prefix: str, log_config: Any, batches: list, n: int, work: Path,
    variants: dict[str, dict[str, Any]], rounds: int,
) -> None:  # fmt: skip
    """``rounds`` rounds of (baseline, then a joiner per variant (tag -> overrides of JOIN) over
    what the baseline appended), interleaved so that machine noise hits both alike; medians
    reported."""
    from freshrec.stream import open_log

    base: dict[str, list[float]] = {}
    res: dict[str, dict[str, list[float]]] = {tag: {} for tag in variants}
    for r in range(rounds):
        suffix = f"-{r}"
        if getattr(log_config, "backend", "embedded") == "embedded":
            log_config = log_config.model_copy(update={"path": work / f"{prefix}log{suffix}"})
        with open_log(log_config) as log:
            for name, value in _baseline(log, batches, n, suffix).items():
                base.setdefault(name, []).append(value)
        for v, (tag, overrides) in enumerate(variants.items()):
            cfg = {
                **JOIN,
                **overrides,
                "input_topics": [t + suffix for t, _ in TOPICS],
                "state_dir": str(work / f"{prefix}state-{v}{suffix}"),
                "examples_topic": f"examples-{v}{suffix}",
                "dead_letter_topic": f"dead-letters-{v}{suffix}",
            }
            for name, value in _run_joiner(log_config.model_dump(mode="json"), cfg).items():
                res[tag].setdefault(name, []).append(value)
    base_med = {name: float(np.median(v)) for name, v in base.items()}
    for name, value in base_med.items():
        report.figure(prefix + name, value)
    for tag in variants:
        med = {name: float(np.median(v)) for name, v in res[tag].items()}
        report.figure(f"{prefix}joiner_events_per_s{tag}", med["events_per_s"])
        report.ratio(f"{prefix}joiner_vs_log{tag}", med["events_per_s"] / base_med["log_append_read_events_per_s"])
        report.ratio(
            f"{prefix}joiner_vs_log_records{tag}",
            med["events_per_s"] / base_med["log_append_read_records_events_per_s"],
        )
        # not a target: the joiner against reading its input alone (it appends its examples too)
        report.ratio(f"{prefix}joiner_vs_log_read{tag}", med["events_per_s"] / base_med["log_read_events_per_s"])
        for key in _REPORTED:
            report.figure(f"{prefix}joiner_{key}{tag}", med[key])


def run(*, quick: bool = False, seed: int = 0, kafka: bool = True) -> BenchReport:
    n_impressions = 300_000 if quick else 1_000_000  # quick: ~an hour of event time, windows closing
    batches, n_imp, n_act = _stream(n_impressions, seed)
    n = n_imp + n_act
    report = BenchReport(
        "joiner",
        params={
            "impressions": n_imp,
            "actions": n_act,
            "actions_per_impression": n_act / n_imp,
            "sim": SIM,
            "joiner": {"negative_rate": JOIN["negative_rate"], "others": "JoinerConfig defaults"},
            "topics": dict(TOPICS),
            "append_batch": BATCH,
            "quick": quick,
            "baseline": "append the same records in 10k batches, then read them back with read_columns",
            "rounds": "embedded: 3 (quick: 2) rounds of baseline then joiners, medians; kafka: 1",
        },
    )
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-joiner-"))
    try:
        from freshrec.stream import LogConfig

        _backend(report, "", LogConfig(path=work / "log"), batches, n, work, {"": {}, **VARIANTS}, 2 if quick else 3)
        if kafka:
            _kafka(report, batches, n, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.figure("peak_rss_bytes", float(peak_rss_bytes()))
    report.notes.append("targets: joiner_events_per_s >= 100k, joiner_vs_log >= 0.5")
    return report


def _kafka(report: BenchReport, batches: list, n: int, work: Path) -> None:
    try:  # the kafka extra is optional: without it the embedded figures stand alone
        import confluent_kafka  # noqa: F401  (the client the Kafka log needs)

        from freshrec.stream.broker import LocalBroker, find_tansu

        find_tansu()
    except (ImportError, BackendError) as exc:
        report.notes.append(f"kafka: skipped ({exc})")
        return
    with LocalBroker() as broker:
        cfg = broker.log_config()
        _backend(report, "kafka_", cfg, batches, n, work, {"": {}}, 1)
