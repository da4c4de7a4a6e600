"""The default features for a live-commerce stream (the simulator's events, or yours in the same shape).

Impressions carry ``user_id``, ``item_id``, ``position`` and three feature dicts: user
``{segment, age_bucket}``, item ``{category, seller_id, price_bucket, format, price}`` and context
``{hour, device}``; the joiner flattens them into one example. The tables are where the paper's
ideas earn their keep: item and seller IDs churn by the hour, so they get a frequency filter and a
ttl in event time; small categorical vocabularies need neither.
"""

from __future__ import annotations

from freshrec.features import DenseFeature, FeatureSpec, SparseSlot
from freshrec.models import TwoTowerConfig
from freshrec.table import AdmissionConfig, TableConfig

__all__ = ["ITEM_SLOTS", "USER_SLOTS", "live_commerce_spec", "live_commerce_two_tower"]

USER_SLOTS = ["user_id", "segment", "age_bucket", "hour", "device"]  # user and request context
ITEM_SLOTS = ["item_id", "category", "seller_id", "price_bucket", "format"]


def live_commerce_spec(
    dim: int = 16,
    labels: tuple[str, ...] = ("click", "purchase"),
    *,
    item_ttl: float = 3600.0,
    user_ttl: float = 24 * 3600.0,
) -> FeatureSpec:
    """Slots for every categorical feature, ``price`` as a log1p dense feature, one label per action type.

    Tables: ``item_id`` admits an item at its 2nd impression and forgets it an hour after its
    last one (listings live a median 30 min, so an item unseen for an hour is almost surely over);
    ``user_id`` admits at the 2nd impression (most users are seen
    once) and forgets after a day; sellers after a week. Row-wise Adagrad keeps one float of
    optimizer state per row.
    """
    base = {"dim": dim, "optimizer": {"type": "rowwise_adagrad", "lr": 0.05}}
    tables = [
        TableConfig(name="item_id", ttl=item_ttl, admission=AdmissionConfig(min_count=2), **base),
        TableConfig(name="user_id", ttl=user_ttl, admission=AdmissionConfig(min_count=2), **base),
        TableConfig(name="seller_id", ttl=7 * 24 * 3600.0, **base),
    ]
    return FeatureSpec(
        sparse=[SparseSlot(name=n) for n in USER_SLOTS + ITEM_SLOTS],
        dense=[DenseFeature(name="price", transform="log1p", fill_missing=0.0)],
        labels=list(labels),
        tables=tables,
        table_defaults=base,
    )


def live_commerce_two_tower(out_dim: int = 32) -> TwoTowerConfig:
    """The retriever for ``/v1/recommend``: a user tower over user and context slots, an item
    tower over item slots and price."""
    return TwoTowerConfig(
        user_slots=list(USER_SLOTS),
        item_slots=list(ITEM_SLOTS),
        item_dense=["price"],
        hidden=[64],
        out_dim=out_dim,
    )
