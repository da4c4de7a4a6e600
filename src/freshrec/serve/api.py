"""The HTTP API's request and response bodies (pydantic: validated, and documented at /docs).

Request models are built per app by :func:`request_models`, so the caps in the config
(candidates per request, k) are both enforced and shown in the OpenAPI schema. Unknown fields
are rejected: a misspelt field is an error naming it, never silently ignored. IDs are ints in
the int64 range or non-empty strings; feature values are ints, finite floats, strings, or lists
of int / string IDs, as in the event schema (``freshrec.stream.events``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from freshrec.stream.events import MAX_EVENT_TIME

__all__ = [
    "Candidate",
    "ErrorBody",
    "EventsAccepted",
    "FeatureValue",
    "Features",
    "Health",
    "Id",
    "ModelOut",
    "RankResponse",
    "RecommendItem",
    "RecommendResponse",
    "request_models",
]

Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
Id = Int64 | Annotated[StrictStr, Field(min_length=1, max_length=256)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
FeatureValue = Int64 | Finite | StrictStr | list[Int64 | StrictStr]


def _drop_nulls(features: dict[str, FeatureValue | None]) -> dict[str, FeatureValue]:
    if None not in features.values():
        return features  # type: ignore[return-value]
    return {name: v for name, v in features.items() if v is not None}


# null is the same as leaving the feature out (pandas and most JSON encoders write a missing value
# as null): dropped here, so nothing downstream (merging, logged impressions) ever sees it
Features = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=256)], FeatureValue | None], AfterValidator(_drop_nulls)
]


def _seconds(t: float) -> float:
    # not Field(le=...): its message ("less than or equal to 100000000000") does not say why
    if t > MAX_EVENT_TIME:
        raise ValueError(f"expected seconds, at most {MAX_EVENT_TIME:g} (a Unix time in milliseconds must be "
                         "divided by 1000)")  # fmt: skip
    return t


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(_Body):
    """One item to score, with the item's features."""

    item_id: Id
    features: Features = Field(default_factory=dict)


def request_models(max_candidates: int, max_k: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """``(RankRequest, RecommendRequest)`` with the given caps."""

    class RankRequest(_Body):
        """Score candidates for one user. Features are keyed by the names the model was trained
        on (the joiner's flat names: a user, item or context feature keeps its own name unless
        two of them share it)."""

        user_id: Id
        user_features: Features = Field(default_factory=dict)
        context: Features = Field(default_factory=dict)
        candidates: list[Candidate] = Field(min_length=1, max_length=max_candidates)

    class RecommendRequest(_Body):
        """The ``k`` best live items for one user; the server logs them as impressions."""

        user_id: Id
        user_features: Features = Field(default_factory=dict)
        context: Features = Field(default_factory=dict)
        k: int = Field(10, ge=1, le=max_k, strict=True)
        event_time: Annotated[float, Field(ge=0, allow_inf_nan=False), AfterValidator(_seconds)] | None = Field(
            None, description="Event time of the impressions (seconds, not milliseconds); default: the server's clock."
        )

    return RankRequest, RecommendRequest


class ModelOut(BaseModel):
    """The parameters that answered a request."""

    name: str
    sparse_version: int
    dense_version: int
    event_time: float | None = Field(description="Newest event time the parameters reflect.")
    freshness_s: float = Field(description="Wall seconds since the parameters last changed.")
    version: str = Field(description="<arm>/<model>/s<sparse>.d<dense>, as impressions record it.")


class RankResponse(BaseModel):
    request_id: str = Field(description="Post actions (and your impressions) with this request id.")
    arm: str
    model: ModelOut
    tasks: list[str]
    scores: list[float] = Field(description="The first task's probability per candidate, in request order.")
    task_scores: dict[str, list[float]] = Field(description="Every task's probabilities, in request order.")


class RecommendItem(BaseModel):
    item_id: Id
    position: int
    score: float
    explored: bool = Field(False, description="An exploration pick (the arm's `explore` share), not a top score.")


class RecommendResponse(BaseModel):
    request_id: str = Field(description="The impressions' request id: post actions with it.")
    arm: str
    model: ModelOut
    retrieval: ModelOut | None
    candidates: int = Field(description="Items the ranking model scored.")
    items: list[RecommendItem]


class EventsAccepted(BaseModel):
    accepted: int
    impressions: int
    actions: int
    items: int


class Health(BaseModel):
    status: str
    state: str
    uptime_s: float
    arms: list[str]
    live_items: int
    event_log: dict[str, int] | None = Field(
        None,
        description="Events /v1/recommend handed to the log writer and not yet appended (pending), failed appends "
        "(retried) and events dropped unwritten",
    )
    stale_models: list[str] = Field(
        default_factory=list,
        description="Sync-fed models (<arm>/<model>) whose parameters stopped following the sync log; still "
        "served, from their last good state",
    )


class ErrorBody(BaseModel):
    error: str = Field(description="The error's type.")
    message: str = Field(description="What was wrong; names the field at fault.")
    detail: list[dict[str, Any]] | None = None
