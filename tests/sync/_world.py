"""A small training world for the sync tests: a spec of three tables (one with an odd width, one
with a ttl, one with a row cap), a training PS driven by random pulls, pushes and expiries, and
serving models to sync into."""

from __future__ import annotations

import uuid

import numpy as np

from freshrec.features import FeatureSpec, SparseSlot
from freshrec.models import LRConfig, build_model
from freshrec.ps import LocalPS, ParameterServer, PSConfig
from freshrec.sync import ServedModel
from freshrec.sync.snapshot import new_serving_ps
from freshrec.table import SGD, Adagrad, TableConfig

SPEC = FeatureSpec(
    sparse=[SparseSlot(name="user", table="users"), SparseSlot(name="item", table="items"),
            SparseSlot(name="seller", table="sellers")],
    labels=["click"],
    tables=[
        TableConfig(name="users", dim=4, optimizer=SGD(lr=0.5), ttl=20.0),  # rows expire
        TableConfig(name="items", dim=5, optimizer=Adagrad(lr=0.1), admission={"min_count": 2}),  # odd width
        TableConfig(name="sellers", dim=8, max_rows=60, evict_fraction=0.2),  # evictions
    ],
)  # fmt: skip
MODEL = LRConfig()


def model_name() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"  # the Kafka broker is shared: topics must be unique


def training_ps(num_shards: int = 2) -> LocalPS:
    return LocalPS(SPEC.table_configs(), PSConfig(num_shards=num_shards, threads=1))


def served(name: str, *, fp16: bool = False, model=MODEL) -> ServedModel:
    ps = new_serving_ps(SPEC.table_configs(), fp16=fp16, config=PSConfig(num_shards=1, threads=1))
    return ServedModel(name, SPEC, model, build_model(model, SPEC), ps)


class Driver:
    """Random training traffic on a PS: Zipf-ish IDs, gradient pushes, expiry every 5 steps."""

    def __init__(self, ps: ParameterServer, seed: int = 0) -> None:
        self.ps = ps
        self.rng = np.random.default_rng(seed)
        self.now = 0.0

    def step(self, n: int = 64) -> None:
        self.now += 1.0
        universe = {"users": 400, "items": 300, "sellers": 150}
        ids = {t: (self.rng.zipf(1.3, n) % u).astype(np.int64) for t, u in universe.items()}
        self.ps.pull_many(ids, train=True, now=self.now)
        grads = {t: (np.unique(i), None) for t, i in ids.items()}
        grads = {t: (u, self.rng.normal(0, 0.1, (u.size, self.ps.dim(t))).astype(np.float32))
                 for t, (u, _) in grads.items()}  # fmt: skip
        self.ps.push_many(grads, now=self.now)
        if int(self.now) % 5 == 0:
            self.ps.expire(self.now)


def rows(ps: ParameterServer, table: str) -> tuple[np.ndarray, np.ndarray]:
    exp = ps.export(table)
    order = np.argsort(exp.ids)
    return exp.ids[order], exp.embeddings[order]


def assert_same_rows(train: ParameterServer, serve: ParameterServer, *, fp16: bool = False) -> None:
    """Same IDs in every table, embeddings bit-equal (or equal to their float16 rounding)."""
    for t in train.tables:
        ids_t, emb_t = rows(train, t)
        ids_s, emb_s = rows(serve, t)
        np.testing.assert_array_equal(ids_s, ids_t, err_msg=f"table {t}: ids differ")
        want = emb_t.astype(np.float16).astype(np.float32) if fp16 else emb_t
        np.testing.assert_array_equal(emb_s, want, err_msg=f"table {t}: embeddings differ")


def burst(ps: ParameterServer, table: str, n: int, now: float, seed: int = 0) -> np.ndarray:
    """``n`` new uniform IDs trained once on ``table`` (a delta big enough to need several parts)."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**12, n, replace=False).astype(np.int64) + 10**6
    ps.pull(table, ids, train=True, now=now)
    ps.pull(table, ids, train=True, now=now)  # twice: passes a min_count=2 filter
    ps.push(table, ids, rng.normal(0, 0.1, (n, ps.dim(table))).astype(np.float32), now=now)
    return ids


class LogProxy:
    """Forwards to a real log; subclasses bend one call (the subscriber and publisher only use
    create_topic, append, read and end_offset)."""

    def __init__(self, log) -> None:
        self._log = log

    def __getattr__(self, name: str):
        return getattr(self._log, name)


class LossyLog(LogProxy):
    """Reads never return the records of the sparse versions in ``lost`` (a hole in the log)."""

    def __init__(self, log, lost: set[int]) -> None:
        super().__init__(log)
        self.lost = lost

    def read(self, topic, partition, offset, max_records=10_000, timeout_s=0.0):
        from freshrec.sync.delta import read_header

        got = self._log.read(topic, partition, offset, max_records, timeout_s)
        return [r for r in got if not (topic.endswith(".sparse") and read_header(r.value).version in self.lost)]


class DamagedLog(LogProxy):
    """Reads that would return a record of the ``kind`` ("sparse" or "dense") versions in
    ``damaged`` fail as the embedded log fails on a chunk whose checksum does not match."""

    def __init__(self, log, kind: str, damaged: set[int]) -> None:
        super().__init__(log)
        self.kind, self.damaged = kind, damaged

    def read(self, topic, partition, offset, max_records=10_000, timeout_s=0.0):
        from freshrec.errors import CorruptionError
        from freshrec.sync.delta import read_header

        got = self._log.read(topic, partition, offset, max_records, timeout_s)
        for r in got:
            if topic.endswith("." + self.kind) and read_header(r.value).version in self.damaged:
                raise CorruptionError(
                    f"event log, topic {topic!r} offsets {r.offset}..{r.offset}: chunk fails its checksum"
                )
        return got


class FlakyLog(LogProxy):
    """The next append of more than one record writes only its first ``keep`` records and fails,
    as a Kafka producer may (a prefix left behind)."""

    def __init__(self, log, keep: int) -> None:
        super().__init__(log)
        self.keep = keep
        self.armed = True

    def append(self, topic, values, keys=None, **kw):
        from freshrec.errors import BackendError

        if self.armed and len(values) > 1:
            self.armed = False
            self._log.append(topic, values[: self.keep], None if keys is None else keys[: self.keep], **kw)
            raise BackendError("broker went away mid-batch")
        return self._log.append(topic, values, keys, **kw)
