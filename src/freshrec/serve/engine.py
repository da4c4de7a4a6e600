"""What one A/B arm does for a request, without HTTP: rank candidates, or recommend from the
live catalog (retrieve with the two-tower model, then rank).

/v1/recommend, step by step (``N`` live items, ``K`` retrieval width, ``R = retrieve_k``):

1. the user tower embeds the request's user and context features: ``u`` (K,);
2. every live item's vector comes from a cache (:class:`ItemVectors`: ``V`` (N, K), rebuilt
   in the background when the catalog or the retriever's versions change, never on a request);
3. ``V @ u`` scores all items; the ``R`` best (argpartition, O(N)) are ranked by the ranking
   model with the request's features; the ``k`` best by the first task's probability return.

Without a retriever, step 1-2 are replaced by "the R most recently listed live items".
Scores are probabilities corrected for negative sampling (``ServedModel.predict``).

Exploration (an arm's ``explore`` share ``e``): a model only learns about items it shows, and a
fresh listing has no row yet (admission needs a few impressions), so a model left to itself
shows the few items it already knows. ``m = e * k`` positions of a slate (stochastically
rounded, so the mean is exact) go to items drawn at random from the ``explore_pool`` newest live
listings that the top ``k - m`` scores do not already show; they are scored with the rest,
placed at random positions, and their impressions carry the model version with ``/explore``
appended.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from freshrec._ratelimit import RateLimitedLog
from freshrec.errors import ConfigError, InputError
from freshrec.features import Batch, encodable_rows, take_rows
from freshrec.models import TwoTowerConfig
from freshrec.serve.features import ColumnBuilder, Missing
from freshrec.serve.items import LiveItems
from freshrec.sync import ServedModel, ServingState

__all__ = ["ArmEngine", "ItemVectors", "ModelInfo", "Ranked", "Recommended", "explore_count", "mix_exploration"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_CHUNK = 8192  # items per tower pass when rebuilding item vectors: bounds the temporary memory


@dataclass(frozen=True)
class ModelInfo:
    """Which parameters answered: versions, newest event time reflected, seconds since the
    last applied update (wall clock)."""

    name: str
    sparse_version: int
    dense_version: int
    event_time: float | None
    freshness_s: float
    version: str  # "<arm>/<model>/s<sparse>.d<dense>": what impressions record as model_version

    @classmethod
    def of(cls, arm: str, model: ServedModel) -> ModelInfo:
        et = model.event_time
        return cls(
            model.name,
            model.sparse_version,
            model.dense_version,
            et if math.isfinite(et) else None,
            max(0.0, time.time() - model.applied_wall),
            f"{arm}/{model.name}/s{model.sparse_version}.d{model.dense_version}",
        )


@dataclass(frozen=True)
class Ranked:
    probs: np.ndarray  # (N, T) float32, in candidate order
    tasks: list[str]
    model: ModelInfo


@dataclass(frozen=True)
class Recommended:
    item_ids: list[Any]  # k best, best first (exploration picks at random positions among them)
    features: list[dict[str, Any]]  # their catalog features (logged with the impressions)
    probs: np.ndarray  # (k, T) float32
    tasks: list[str]
    model: ModelInfo
    retrieval: ModelInfo | None
    candidates: int  # how many the ranking model scored
    explored: list[bool] = field(default_factory=list)  # per item: an exploration pick ([] = none)


@dataclass(frozen=True)
class VectorView:
    """Item vectors of one (catalog, retriever) state. Never mutated."""

    key: tuple[int, int, int, int]
    ids: list[Any]
    features: list[dict[str, Any]]
    matrix: np.ndarray  # (N, K) float32
    skipped: int  # live items left out: they lack a feature the item tower reads


def _tower_names(cfg: TwoTowerConfig) -> tuple[list[str], list[str]]:
    return list(cfg.user_slots) + list(cfg.user_dense), list(cfg.item_slots) + list(cfg.item_dense)


def _encode_catalog_rows(
    builder: ColumnBuilder, cols: dict[str, Any], ids: Sequence[Any], warn: RateLimitedLog, *, request: bool
) -> tuple[np.ndarray, Batch | None]:
    """(rows kept, their batch) for rows built from catalog items: an item whose features the
    model cannot read (a float where an ID slot needs integers, a scalar for a list) is a catalog
    problem, left out with a warning, not a failure of every request that retrieves it. Bad rows
    are found by halving (a few encodes per bad item), only when the whole batch fails. With
    ``request`` (rows carry a request's user and context features), no row encoding means the
    request's own features are at fault: its error is raised."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.int64), None
    try:
        return np.arange(n), builder.encode(cols, n)
    except InputError as exc:  # DataError too
        first = exc
    keep, bad = encodable_rows(lambda rows: builder.encode(take_rows(cols, rows), rows.size), n)
    for row, exc in bad:
        warn.warn(f"catalog item {ids[row]!r}: its features cannot be encoded ({exc}); left out")
    if keep.size == 0:
        if request:
            raise first
        return keep, None
    return keep, builder.encode(take_rows(cols, keep), keep.size)


def _unambiguous_rows(
    builder: ColumnBuilder,
    user: Mapping[str, Any],
    context: Mapping[str, Any],
    ids: Sequence[Any],
    feats: Sequence[Mapping[str, Any]],
    warn: RateLimitedLog,
    *,
    request: bool,
) -> np.ndarray:
    """The rows of catalog items whose feature names merge with the request's: an item with both
    ``segment`` and ``user_segment`` beside a request's ``segment`` is ambiguous after prefixing.
    It is left out with a warning; it used to fail every request that retrieved it, and every
    rebuild of the item vectors. With ``request``, if no item is left the request's own names
    are at fault: its error is raised."""
    n = len(ids)
    bad = builder.ambiguous(user, context, feats)
    if not bad:
        return np.arange(n)
    if request and len(bad) == n:
        raise bad[0][1]
    for row, exc in bad:
        warn.warn(f"catalog item {ids[row]!r}: {exc}; left out")
    return np.setdiff1d(np.arange(n), [row for row, _ in bad])


def explore_count(share: float, k: int, rng: np.random.Generator) -> int:
    """Positions of a slate of ``k`` given to exploration: ``share * k`` rounded up or down at
    random, so that the share is exact on average."""
    if share <= 0.0:
        return 0
    x = share * k
    return min(k, int(x) + int(rng.random() < x - int(x)))


def mix_exploration(
    ranked: list[T], drawn: list[T], k: int, m: int, key: Callable[[T], Hashable], rng: np.random.Generator
) -> tuple[list[T], list[bool]]:
    """A slate of at most ``k``: the top ``k - m'`` of ``ranked`` (best first) and, at random
    positions among them, the first ``m'`` of ``drawn`` (exploration candidates in random order)
    that those top ones do not show anyway (``key`` tells items apart). ``m' = m`` unless
    ``drawn`` has too few, and then as many as it has (the top fills the rest). Returns the slate
    and, per position, whether it is an exploration pick."""
    m = min(m, len(drawn), k)
    while True:
        best = ranked[: k - m]
        top = {key(x) for x in best}
        picks = [d for d in drawn if key(d) not in top][:m]
        if len(picks) == m:
            break
        m = len(picks)  # fewer picks: a longer top, which may show more of drawn: look again
    slate, explored = list(best), [False] * len(best)
    if picks:
        for j, pos in enumerate(np.sort(rng.choice(len(best) + m, m, replace=False)).tolist()):
            slate.insert(pos, picks[j])  # in increasing order: each lands at its final position
            explored.insert(pos, True)
    return slate, explored


class ItemVectors:
    """The retriever's vector of every live item, cached per (catalog version, sparse version,
    dense version, module); :meth:`refresh` rebuilds, :meth:`view` reads (any thread)."""

    def __init__(self, model: ServedModel, items: LiveItems) -> None:
        cfg = model.model_config
        if not isinstance(cfg, TwoTowerConfig):
            raise ConfigError(f"the retrieval model {model.name!r} must be two_tower, got {cfg.type}")
        self.model = model
        self.items = items
        self.bad_items = RateLimitedLog(log, f"item vectors of {model.name!r}: ")
        self.builder = ColumnBuilder(model.spec, only=_tower_names(cfg)[1])
        self._view = VectorView((-1, -1, -1, -1), [], [], np.zeros((0, cfg.out_dim), np.float32), 0)
        self._lock = threading.Lock()  # one rebuild at a time
        self.rebuilds = 0
        self.rebuild_seconds = 0.0

    def _key(self, catalog_version: int) -> tuple[int, int, int, int]:
        m = self.model
        return (catalog_version, m.sparse_version, m.dense_version, id(m.module))

    def view(self) -> VectorView:
        return self._view

    def stale(self) -> bool:
        return self._view.key != self._key(self.items.version)

    def refresh(self, *, force: bool = False) -> bool:
        """Rebuild if the catalog or the retriever changed; returns True if it rebuilt."""
        with self._lock:
            catalog = self.items.view()
            key = self._key(catalog.version)
            if key == self._view.key and not force:
                return False
            t0 = time.perf_counter()
            ids, feats, mats, skipped = [], [], [], 0
            for lo in range(0, len(catalog), _CHUNK):
                part_ids = catalog.ids[lo : lo + _CHUNK]
                part_feats = catalog.features[lo : lo + _CHUNK]
                keep, vecs = self.item_vectors(part_ids, part_feats)
                skipped += len(part_ids) - keep.size
                ids += [part_ids[i] for i in keep.tolist()]
                feats += [part_feats[i] for i in keep.tolist()]
                mats.append(vecs)
            matrix = np.concatenate(mats) if mats else self._view.matrix[:0]
            self._view = VectorView(key, ids, feats, np.ascontiguousarray(matrix, np.float32), skipped)
            self.rebuilds += 1
            self.rebuild_seconds += time.perf_counter() - t0
            return True

    @torch.no_grad()
    def item_vectors(self, ids: Sequence[Any], feats: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(rows kept, their vectors (n, K)); rows lacking an item-tower feature are left out."""
        keep = _unambiguous_rows(self.builder, {}, {}, ids, feats, self.bad_items, request=False)
        if keep.size < len(ids):
            ids, feats = [ids[i] for i in keep.tolist()], [feats[i] for i in keep.tolist()]
        cols, missing = self.builder.raw(0, {}, {}, ids, feats)
        rows = np.arange(len(ids))  # (m,) into ids; keep[rows] into the caller's
        if missing:
            bad = np.unique(np.concatenate([m.rows for m in missing]))
            rows = np.setdiff1d(rows, bad)
            cols = take_rows(cols, rows)
        if rows.size:
            kept, batch = _encode_catalog_rows(self.builder, cols, [ids[i] for i in rows.tolist()], self.bad_items,
                                               request=False)  # fmt: skip
            rows = rows[kept]
        keep = keep[rows]
        if keep.size == 0:
            return keep, np.zeros((0, self._view.matrix.shape[1]), np.float32)
        module, pooled = self.model.pooled(batch)
        return keep, module.item_vectors(pooled, torch.from_numpy(batch.dense)).numpy()  # (n, K)


class ArmEngine:
    """Rank and recommend for one arm. Thread-safe: requests run concurrently."""

    def __init__(
        self, arm: str, state: ServingState, items: LiveItems, *, retrieve_k: int = 300,
        explore: float = 0.0, explore_pool: int = 1000, seed: int | None = None,
    ) -> None:  # fmt: skip
        self.arm = arm
        self.state = state
        self.items = items
        self.retrieve_k = retrieve_k
        self.explore = explore
        self.explore_pool = explore_pool
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()  # numpy Generators are not thread-safe
        self.ranker = ColumnBuilder(state.rank.spec)
        self.bad_items = RateLimitedLog(log, f"arm {arm!r}: ")  # catalog items ranking left out
        self.tasks = list(state.rank.tasks)
        self.vectors: ItemVectors | None = None
        self.user_builder: ColumnBuilder | None = None
        if state.retrieve is not None:
            self.vectors = ItemVectors(state.retrieve, items)
            cfg = state.retrieve.model_config
            assert isinstance(cfg, TwoTowerConfig)  # checked by ItemVectors
            self.user_builder = ColumnBuilder(state.retrieve.spec, only=_tower_names(cfg)[0])

    # ---- /v1/rank ------------------------------------------------------------------------------
    def rank(
        self,
        user_id: Any,
        user: Mapping[str, Any],
        context: Mapping[str, Any],
        item_ids: Sequence[Any],
        items: Sequence[Mapping[str, Any]],
    ) -> Ranked:
        """Probabilities of every candidate, in candidate order."""
        model = self.state.rank
        cols, missing = self.ranker.raw(user_id, user, context, item_ids, items)
        if missing:
            raise InputError(_missing_message(missing[0], len(item_ids)))
        probs = model.predict(self.ranker.encode(cols, len(item_ids)))  # (N, T)
        return Ranked(probs, self.tasks, ModelInfo.of(self.arm, model))

    # ---- /v1/recommend ---------------------------------------------------------------------------
    def recommend(self, user_id: Any, user: Mapping[str, Any], context: Mapping[str, Any], k: int) -> Recommended:
        ids, feats, retrieval = self._retrieve(user_id, user, context)
        n_explore = self._explore_count(k)
        exploring = [False] * len(ids)  # per candidate: an exploration candidate
        if n_explore:
            extra_ids, extra_feats = self._explore_candidates(n_explore, k)
            ids, feats, exploring = ids + extra_ids, feats + extra_feats, exploring + [True] * len(extra_ids)
        ok = _unambiguous_rows(self.ranker, user, context, ids, feats, self.bad_items, request=True)
        if ok.size < len(ids):
            ids, feats = [ids[i] for i in ok.tolist()], [feats[i] for i in ok.tolist()]
            exploring = [exploring[i] for i in ok.tolist()]
        model = self.state.rank
        if not ids:
            return Recommended(
                [],
                [],
                np.zeros((0, len(self.tasks)), np.float32),
                self.tasks,
                ModelInfo.of(self.arm, model),
                retrieval,
                0,
            )
        cols, missing = self.ranker.raw(user_id, user, context, ids, feats)
        if missing:
            # a feature no candidate has must come from the request; items lacking one the
            # others have are a catalog problem: leave them out rather than fail the request
            for m in missing:
                if m.rows.size == len(ids):
                    raise InputError(_missing_message(m, len(ids), catalog=True))
            keep = np.setdiff1d(np.arange(len(ids)), np.concatenate([m.rows for m in missing]))
        else:
            keep = np.arange(len(ids))
        cols = take_rows(cols, keep) if keep.size < len(ids) else cols
        kept, batch = _encode_catalog_rows(self.ranker, cols, [ids[i] for i in keep.tolist()], self.bad_items,
                                           request=True)  # fmt: skip
        if batch is None:  # every candidate lacked something: nothing to rank
            return Recommended([], [], np.zeros((0, len(self.tasks)), np.float32), self.tasks,
                               ModelInfo.of(self.arm, model), retrieval, 0)  # fmt: skip
        rows = keep[kept]  # (C,) indices into ids of the candidates scored
        probs = model.predict(batch)  # (C, T)
        exploring = np.asarray(exploring, bool)[rows]  # (C,)
        ranked = np.flatnonzero(~exploring)
        ranked = ranked[np.argsort(-probs[ranked, 0], kind="stable")][:k]
        order, explored = ranked.tolist(), []
        if n_explore:
            with self._rng_lock:
                order, explored = mix_exploration(ranked.tolist(), np.flatnonzero(exploring).tolist(), k, n_explore,
                                                  lambda c: ids[rows[c]], self._rng)  # fmt: skip
            if not any(explored):
                explored = []
        return Recommended(
            [ids[i] for i in rows[order].tolist()],
            [feats[i] for i in rows[order].tolist()],
            probs[order],
            self.tasks,
            ModelInfo.of(self.arm, model),
            retrieval,
            len(rows),
            explored,
        )

    def _explore_count(self, k: int) -> int:
        with self._rng_lock:
            return explore_count(self.explore, k, self._rng)

    def _explore_candidates(self, n: int, k: int) -> tuple[list[Any], list[dict[str, Any]]]:
        """Items drawn at random, without replacement, from the ``explore_pool`` newest live
        listings: ``n`` and ``k`` spare, since those that the top scores show anyway are no
        exploration (O(n + k) per request, not O(catalog))."""
        view = self.items.view()
        pool_ids, pool_feats = view.ids[-self.explore_pool :], view.features[-self.explore_pool :]
        with self._rng_lock:
            draw = self._rng.choice(len(pool_ids), min(len(pool_ids), n + k), replace=False)
        return [pool_ids[i] for i in draw.tolist()], [pool_feats[i] for i in draw.tolist()]

    @torch.no_grad()
    def _retrieve(
        self, user_id: Any, user: Mapping[str, Any], context: Mapping[str, Any]
    ) -> tuple[list[Any], list[dict[str, Any]], ModelInfo | None]:
        r = self.retrieve_k
        if self.vectors is None or self.user_builder is None:
            view = self.items.view()  # no retriever: the R newest listings
            return view.ids[-r:], view.features[-r:], None
        vv = self.vectors.view()
        retriever = self.vectors.model
        info = ModelInfo.of(self.arm, retriever)
        if not vv.ids:
            return [], [], info
        scores = vv.matrix @ self._user_vector(retriever, user_id, user, context)  # (N,)
        if scores.shape[0] > r:
            best = np.argpartition(-scores, r - 1)[:r]
            best = best[np.argsort(-scores[best], kind="stable")]
        else:
            best = np.argsort(-scores, kind="stable")
        idx = best.tolist()
        return [vv.ids[i] for i in idx], [vv.features[i] for i in idx], info

    @torch.no_grad()
    def _user_vector(
        self, retriever: ServedModel, user_id: Any, user: Mapping[str, Any], context: Mapping[str, Any]
    ) -> np.ndarray:
        """The user tower's output for this request, (K,)."""
        assert self.user_builder is not None
        cols, missing = self.user_builder.raw(user_id, user, context, [None], [{}])
        if missing:
            raise InputError(_missing_message(missing[0], 1, tower=True))
        batch = self.user_builder.encode(cols, 1)
        module, pooled = retriever.pooled(batch)
        return module.user_vectors(pooled, torch.from_numpy(batch.dense)).numpy()[0]

    # ---- start ---------------------------------------------------------------------------------
    def warmup(self, n: int) -> None:
        """Compile and run every step of both endpoints once on synthetic input (IDs as ints
        and as strings; 1 and ``n`` candidates), then build the item vectors, so no request
        pays for a first call."""
        for model in self.state.models():
            model.warmup()
        for kind in (int, str):
            feats = _synthetic_features(self.state.rank.spec, kind)
            for size in sorted({1, n}):
                self.rank(kind(0), feats, {}, [kind(i) for i in range(size)], [{}] * size)
            if self.vectors is not None and self.user_builder is not None:
                spec = self.vectors.model.spec
                feats = _synthetic_features(spec, kind)
                self.vectors.item_vectors([kind(i) for i in range(n)], [feats] * n)
                self._user_vector(self.vectors.model, kind(0), feats, {})
        np.argpartition(-np.arange(2 * n, dtype=np.float32), n - 1)
        if self.vectors is not None:
            self.vectors.refresh()


def _synthetic_features(spec: Any, kind: type) -> dict[str, Any]:
    """A value for every feature of ``spec`` (ids excepted): ID 1 / [1, 2] / 0.0."""
    out: dict[str, Any] = {}
    for s in spec.sparse:
        if s.name not in ("user_id", "item_id", "position"):
            out[s.name] = [kind(1), kind(2)] if s.multi_valued else kind(1)
    for d in spec.dense:
        out[d.name] = 0.0
    return out


def _missing_message(m: Missing, n: int, *, catalog: bool = False, tower: bool = False) -> str:
    where = "user_features or context"
    if tower:
        return f"features.{m.name}: missing; the retrieval model reads it ({m.what}): send it in {where}"
    if catalog:
        return f"features.{m.name}: missing; the ranking model reads it ({m.what}): send it in {where}"
    first = int(m.rows[0])
    if m.rows.size == n:
        return (
            f"features.{m.name}: missing; the ranking model reads it ({m.what}): send it in {where} "
            "or in every candidate's features"
        )
    return (
        f"candidates[{first}].features.{m.name}: missing ({m.rows.size} of {n} candidates lack it); "
        f"the ranking model reads it ({m.what})"
    )
