"""One arm's ranking and retrieve-then-rank, checked against plain recomputations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.errors import DataError, InputError
from freshrec.serve import ArmEngine, LiveItems
from freshrec.stream import ItemLifecycle
from freshrec.sync import ServedModel, ServingState

from .conftest import SPEC

USER = {"segment": 1}
CONTEXT = {"hour": 9, "device": "web"}


def item_features(i):
    return {
        "category": i % 10,
        "seller_id": f"s{i % 7}",
        "tags": [f"t{i % 5}"],
        "price": 5.0 + i,
        "discount": 0.1,
    }


@pytest.fixture(scope="module")
def models(model_dirs):
    rank = ServedModel.from_model_dir(model_dirs["rank"])
    retrieve = ServedModel.from_model_dir(model_dirs["retrieve"], name="retrieve")
    yield rank, retrieve
    rank.close()
    retrieve.close()


def catalog(n):
    items = LiveItems()
    items.apply(
        [
            ItemLifecycle(event_id=i, event_time=float(i), item_id=f"it{i}", status="listed", features=item_features(i))
            for i in range(n)
        ]
    )
    return items


def test_rank_equals_predict_on_the_flat_columns(models):
    rank, _ = models
    engine = ArmEngine("a", ServingState(rank), LiveItems())
    ids = ["it1", "it2", "never-seen", "nor-this"]  # unknown IDs read the default vector: no error
    feats = [item_features(i) for i in range(4)]
    got = engine.rank(3, USER, CONTEXT, ids, feats)
    cols = {
        "user_id": [3] * 4,
        "item_id": ids,
        **{k: [v] * 4 for k, v in {**USER, **CONTEXT}.items()},
        **{k: [f[k] for f in feats] for k in feats[0]},
    }
    want = rank.predict(SPEC.encode(cols, labels=False))
    np.testing.assert_allclose(got.probs, want, rtol=1e-6)
    assert got.tasks == ["click"] and got.model.version == "a/rank/s0.d0"


def test_rank_names_a_missing_feature(models):
    engine = ArmEngine("a", ServingState(models[0]), LiveItems())
    with pytest.raises(InputError, match=r"features.segment: missing"):
        engine.rank(1, {}, CONTEXT, ["x"], [item_features(0)])
    feats = [item_features(0), {k: v for k, v in item_features(1).items() if k != "price"}]
    with pytest.raises(InputError, match=r"candidates\[1\].features.price: missing \(1 of 2"):
        engine.rank(1, USER, CONTEXT, ["x", "y"], feats)


def test_recommend_retrieves_by_dot_product_then_ranks(models):
    rank, retrieve = models
    items = catalog(120)
    engine = ArmEngine("a", ServingState(rank, retrieve), items, retrieve_k=30)
    engine.vectors.refresh()
    rec = engine.recommend(4, USER, CONTEXT, 5)
    # brute force: every item's vector, the user's vector, top 30, ranked, top 5
    view = engine.vectors.view()
    assert len(view.ids) == 120
    u = engine._user_vector(retrieve, 4, USER, CONTEXT)
    with torch.no_grad():
        _keep, vecs = engine.vectors.item_vectors(view.ids, view.features)
    np.testing.assert_allclose(view.matrix, vecs, rtol=1e-5)
    top = np.argsort(-(vecs @ u), kind="stable")[:30]
    ids = [view.ids[i] for i in top]
    probs = engine.rank(4, USER, CONTEXT, ids, [view.features[i] for i in top]).probs[:, 0]
    want = [ids[i] for i in np.argsort(-probs, kind="stable")[:5]]
    assert rec.item_ids == want and rec.candidates == 30
    assert np.all(np.diff(rec.probs[:, 0]) <= 0)
    assert rec.retrieval is not None and rec.retrieval.name == "retrieve"


def test_item_vectors_follow_the_catalog_and_versions(models):
    rank, retrieve = models
    items = catalog(10)
    engine = ArmEngine("a", ServingState(rank, retrieve), items)
    assert engine.vectors.refresh() and not engine.vectors.refresh()
    items.apply([ItemLifecycle(event_id=99, event_time=50.0, item_id="it0", status="ended")])
    assert engine.vectors.stale() and engine.vectors.refresh()
    assert "it0" not in engine.vectors.view().ids
    retrieve.mark(sparse_version=retrieve.sparse_version + 1)
    assert engine.vectors.stale()


def test_items_lacking_a_tower_feature_are_left_out(models):
    rank, retrieve = models
    items = catalog(5)
    items.apply([ItemLifecycle(event_id=7, event_time=9.0, item_id="bare", status="listed", features={})])
    engine = ArmEngine("a", ServingState(rank, retrieve), items)
    engine.vectors.refresh()
    assert engine.vectors.view().skipped == 1 and "bare" not in engine.vectors.view().ids


def test_without_a_retriever_the_newest_listings_are_ranked(models):
    items = catalog(50)
    engine = ArmEngine("a", ServingState(models[0]), items, retrieve_k=10)
    rec = engine.recommend(1, USER, CONTEXT, 3)
    assert rec.candidates == 10 and set(rec.item_ids) <= {f"it{i}" for i in range(40, 50)}
    assert rec.retrieval is None
    empty = ArmEngine("a", ServingState(models[0]), LiveItems()).recommend(1, USER, CONTEXT, 3)
    assert empty.item_ids == [] and empty.probs.shape == (0, 1)


@pytest.mark.parametrize("retriever", [False, True])
def test_an_item_whose_features_cannot_be_encoded_is_left_out_not_every_request(models, retriever, caplog):
    """One listing with a float in an ID slot made /v1/recommend fail for every user (and froze
    the retriever's item vectors): a catalog problem leaves that item out."""
    rank, retrieve = models
    items = catalog(20)
    bad = {**item_features(3), "category": 1997.5}  # an ID slot needs integers or strings
    items.apply([ItemLifecycle(event_id=8, event_time=9.0, item_id="bad", status="listed", features=bad)])
    items.apply([ItemLifecycle(event_id=9, event_time=9.5, item_id="late", status="listed", features=item_features(4))])
    engine = ArmEngine("a", ServingState(rank, retrieve if retriever else None), items, retrieve_k=30)
    with caplog.at_level("WARNING", logger="freshrec.serve.engine"):
        if retriever:
            engine.vectors.refresh()
            view = engine.vectors.view()
            assert "bad" not in view.ids and "late" in view.ids and view.skipped == 1
        rec = engine.recommend(1, USER, CONTEXT, 50)
    assert "bad" not in rec.item_ids and "late" in rec.item_ids and rec.candidates == 21
    left_out = engine.vectors.bad_items if retriever else engine.bad_items  # whoever met it first
    assert left_out.count == 1 and "catalog item 'bad'" in caplog.text
    with pytest.raises(InputError):  # a client's own candidate stays a client error in /v1/rank
        engine.rank(1, USER, CONTEXT, ["bad"], [bad])
    # a request whose own features no row can encode is the request's error, not an empty answer
    with pytest.raises((InputError, DataError)):
        engine.recommend(1, {**USER, "segment": 1.5}, CONTEXT, 5)


def test_exploration_gives_its_share_of_each_slate_to_fresh_items_retrieval_did_not_pick(models):
    """A model shows what it already knows: a cold one kept showing the same few items, and a
    fresh listing never got the impressions its row needs. An arm's explore share goes to items
    drawn from the newest listings (not among the top scores), at random positions, the rest as
    before."""
    rank, retrieve = models
    items = catalog(300)
    plain = ArmEngine("a", ServingState(rank, retrieve), items, retrieve_k=30)
    engine = ArmEngine("a", ServingState(rank, retrieve), items, retrieve_k=30, explore=0.25, explore_pool=100,
                       seed=0)  # fmt: skip
    plain.vectors.refresh()
    engine.vectors.refresh()
    newest = {f"it{i}" for i in range(200, 300)}
    positions, picks, shown = [], 0, set()
    for user in range(200):
        want = plain.recommend(user, USER, CONTEXT, 10)
        rec = engine.recommend(user, USER, CONTEXT, 10)
        assert len(rec.item_ids) == len(rec.explored) == 10 and len(set(rec.item_ids)) == 10
        explored = [i for i, e in zip(rec.item_ids, rec.explored, strict=True) if e]
        exploited = [i for i, e in zip(rec.item_ids, rec.explored, strict=True) if not e]
        assert exploited == want.item_ids[: len(exploited)]  # the top scores, in order
        assert set(explored) <= newest and not set(explored) & set(exploited)
        positions += [p for p, e in enumerate(rec.explored) if e]
        picks += len(explored)
        shown |= set(rec.item_ids)
    assert abs(picks / 2000 - 0.25) < 0.03  # 2.5 of 10 on average: 2 or 3 per slate
    assert set(positions) == set(range(10))  # anywhere in the slate, the top included
    assert len(shown & newest) > len(set().union(*(plain.recommend(u, USER, CONTEXT, 10).item_ids
                                                   for u in range(200))) & newest)  # fmt: skip
    assert ArmEngine("a", ServingState(rank), LiveItems(), explore=1.0).recommend(1, USER, CONTEXT, 3).item_ids == []
    # no retriever, a catalog smaller than retrieve_k: everything is ranked, and exploration still
    # shows what the top would not; a slate of 3 from 4 items with 2 picks has no repeats
    small = ArmEngine("a", ServingState(rank), catalog(4), explore=0.5, explore_pool=4, seed=1)
    for user in range(30):
        rec = small.recommend(user, USER, CONTEXT, 4)
        assert len(set(rec.item_ids)) == len(rec.item_ids) == 4 and sum(rec.explored) == 2


@pytest.mark.parametrize("retriever", [False, True])
def test_an_item_whose_feature_names_stay_ambiguous_is_left_out_not_every_request(models, retriever):
    """Names are prefixed where they clash; an item whose names are still ambiguous after that (its
    "segment" and "user_segment" beside a request's "segment", or "click" and "item_click") made
    merging raise: a 422 for every request that retrieved it, and a failed rebuild of the item
    vectors at every refresh, so the retriever's catalog stopped following the listings."""
    rank, retrieve = models
    items = catalog(20)
    items.apply([
        ItemLifecycle(event_id=8, event_time=9.0, item_id="seg", status="listed",
                      features={**item_features(3), "segment": 2, "user_segment": 5}),
        ItemLifecycle(event_id=9, event_time=9.1, item_id="clk", status="listed",
                      features={**item_features(3), "click": 1, "item_click": 0}),
        ItemLifecycle(event_id=10, event_time=9.5, item_id="late", status="listed", features=item_features(4)),
    ])  # fmt: skip
    engine = ArmEngine("a", ServingState(rank, retrieve if retriever else None), items, retrieve_k=30)
    if retriever:
        engine.vectors.refresh()
        view = engine.vectors.view()
        assert "clk" not in view.ids and "seg" in view.ids and "late" in view.ids  # "seg" is fine without a user
    rec = engine.recommend(1, USER, CONTEXT, 50)
    assert not {"seg", "clk"} & set(rec.item_ids) and "late" in rec.item_ids and rec.candidates == 21
    assert engine.bad_items.count >= 1
    with pytest.raises(InputError, match="both end up as 'user_category'"):  # the request's own names: its error
        engine.recommend(1, {**USER, "category": 1, "user_category": 2}, CONTEXT, 5)
