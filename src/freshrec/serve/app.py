"""The HTTP API (FastAPI): routes, the API key, and the one place errors become status codes.

    POST /v1/rank        candidates in, probabilities out (log-odds corrected), model versions
    POST /v1/recommend   top-k live items (retrieve, then rank); logs the impressions itself
    POST /v1/events      impressions, actions, item lifecycle events -> the event log (API key)
    GET  /v1/healthz     200 while serving, 503 otherwise (HEAD too)
    GET  /v1/model       versions, table sizes, freshness per arm
    GET  /metrics        Prometheus
    GET  /docs           OpenAPI (Swagger UI); the schema at /openapi.json

Errors: freshrec's tree maps onto status codes in :func:`status_of` (bad input 422, too large
413: a body over the limit or an event over what the event log takes, not ready / overloaded /
backend down 503, anything else 500); every error body is ``{"error": type, "message": text
naming the field, "detail": [...]?}``.

Where requests run: /v1/rank runs on the event loop itself. Measured on 2 cores (100
candidates, DeepFM 400-400-400), handing it to a thread cost 0.3-0.6 ms more CPU per request
and, under load, GIL hand-offs between the loop and the workers; the work is GIL-bound Python
between torch and numba calls (which release the GIL for the delta and tailer threads), so
threads bought no parallelism. /v1/recommend and /v1/events, which may wait on the event log's
fsync, run in the thread pool. Bodies are parsed once, by pydantic's JSON parser
(``model_validate_json``), not decoded to Python and then validated.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at
# definition time, and the request models are local to create_app

import hmac
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgspec
from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from freshrec.errors import (
    BackendError,
    CapacityError,
    ConfigError,
    CorruptionError,
    FreshrecError,
    InputError,
    StateError,
    SyncError,
    TooLargeError,
)
from freshrec.serve._asgi import BodyLimit, Observe
from freshrec.serve.api import (
    ErrorBody,
    EventsAccepted,
    Health,
    RankResponse,
    RecommendResponse,
    request_models,
)
from freshrec.serve.config import ServeConfig
from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.replica import Replica, Subscriber
from freshrec.stream import Event, EventLog
from freshrec.sync import ServingState

__all__ = ["create_app", "status_of"]

log = logging.getLogger(__name__)

ENDPOINTS = {"/v1/rank", "/v1/recommend", "/v1/events", "/v1/healthz", "/v1/model", "/metrics"}
_STATUS: list[tuple[type[FreshrecError], int]] = [
    (TooLargeError, 413),  # an event larger than the event log takes
    (InputError, 422),  # SchemaError, DataError, NonFiniteError too
    (StateError, 503),  # not started, or stopping
    (CapacityError, 503),  # a backlog or a table is full: retry later
    (BackendError, 503),  # the event log is down
    (SyncError, 503),
    (ConfigError, 500),
    (CorruptionError, 500),
]
_json = msgspec.json.Encoder()
M = TypeVar("M", bound=BaseModel)


def status_of(exc: FreshrecError) -> int:
    """The HTTP status of one of freshrec's errors."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _body(
    error: str, message: str, detail: Any = None, status: int = 500, headers: Mapping[str, str] | None = None
) -> Response:
    payload: dict[str, Any] = {"error": error, "message": message}
    if detail is not None:
        payload["detail"] = detail
    return Response(_json.encode(payload), status, headers=dict(headers or {}), media_type="application/json")


_UNION_MEMBER = re.compile(r"^(constrained-)?(int|str|float|bool|bytes)$|^(list|dict|function-\w+)\[")


def _where(loc: Sequence[Any]) -> str:
    """``("body", "candidates", 3, "item_id")`` -> ``candidates[3].item_id``; union members
    (``int``, ``constrained-str``, ...) that pydantic adds to the path are dropped."""
    parts = list(loc[1:]) if loc and loc[0] == "body" and len(loc) > 1 else list(loc)
    out = ""
    for p in parts:
        if isinstance(p, str) and _UNION_MEMBER.match(p):
            break
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    """One line naming each bad field (the first three), and the full list as detail."""
    detail = []
    by_field: dict[str, list[str]] = {}
    for e in exc.errors()[:100]:
        field = _where(e.get("loc", ()))
        reason = str(e.get("msg", "invalid"))
        detail.append({"field": field, "reason": reason})
        by_field.setdefault(field, [])
        if reason not in by_field[field]:
            by_field[field].append(reason)
    shown = "; ".join(f"{f}: {' or '.join(r)}" for f, r in list(by_field.items())[:3])
    return shown or "body: invalid", detail


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the route parses itself (with pydantic's JSON parser, in one pass)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def create_app(
    config: ServeConfig,
    states: Mapping[str, ServingState],
    *,
    log_: EventLog | None = None,
    subscribers: Sequence[Subscriber] | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The app of one replica serving ``states`` (one :class:`ServingState` per arm, loaded).

    Args:
        config: the replica's config.
        states: arm name -> what it serves (``freshrec.serve.server.load_states`` reads them
            from the config's model directories).
        log_: an open event log to use (not closed at shutdown); None opens ``config.log``.
        subscribers: sync subscribers keeping the states fresh (``start()``/``stop(timeout)``),
            started after warmup and stopped at shutdown.
        registry: the Prometheus registry for the replica's metrics (subscribers may register
            theirs in the same one); a new one if None.
    """
    metrics = ServeMetrics(registry)
    replica = Replica(config, states, log_=log_, subscribers=subscribers or (), metrics=metrics)
    RankRequest, RecommendRequest = request_models(config.max_candidates, config.max_k)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(replica.start)
        try:
            yield
        finally:
            await run_in_threadpool(replica.stop)

    app = FastAPI(
        title="freshrec serving API",
        version="1",
        description="Real-time ranking and recommendation over a live catalog (the Monolith design).",
        lifespan=lifespan,
        responses={422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    app.state.replica = replica
    secret = config.api_key.get_secret_value().encode() if config.api_key is not None else None
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required by /v1/events.")

    def require_key(key: str | None = Security(api_key_header)) -> None:
        if secret is None:
            return
        if not key:
            raise HTTPException(
                401,
                "X-API-Key: missing; this endpoint needs the API key",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        if not hmac.compare_digest(key.encode(), secret):
            raise HTTPException(401, "X-API-Key: invalid API key", headers={"WWW-Authenticate": "ApiKey"})

    # ---- errors: the one place they become status codes ------------------------------------------
    @app.exception_handler(FreshrecError)
    async def _freshrec_error(request: Request, exc: FreshrecError) -> Response:
        status = status_of(exc)
        request.state.error = type(exc).__name__
        if status >= 500 and not isinstance(exc, StateError | CapacityError):
            log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _body(type(exc).__name__, str(exc), getattr(exc, "detail", None), status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        message, detail = _validation_message(exc)
        request.state.error = "ValidationError"
        return _body("ValidationError", message, detail, 422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        name = {401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}.get(
            exc.status_code, "HTTPError"
        )
        request.state.error = name
        return _body(name, str(exc.detail), None, exc.status_code, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        request.state.error = "InternalError"
        # Starlette re-raises after this response and the server then drops the connection: say so,
        # or a client reusing it loses its next request (and cannot know whether a retry applied)
        return _body("InternalError", f"internal error ({type(exc).__name__}); see the server log", None, 500,
                     {"Connection": "close"})  # fmt: skip

    # ---- routes ------------------------------------------------------------------------------------
    @app.post("/v1/rank", response_model=RankResponse, tags=["serving"], openapi_extra=_body_doc(RankRequest))
    async def rank(request: Request) -> Response:
        """Score candidates for a user: probabilities corrected for negative sampling."""
        req = _parse(RankRequest, await request.body())
        out = replica.rank(
            req.user_id,
            req.user_features,
            req.context,
            [c.item_id for c in req.candidates],
            [c.features for c in req.candidates],
        )
        request.state.arm = out["arm"]
        return Response(_json.encode(out), media_type="application/json")

    @app.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        tags=["serving"],
        openapi_extra=_body_doc(RecommendRequest),
    )
    async def recommend(request: Request) -> Response:
        """The k best live items for a user; logs one impression per item (request id, position,
        features, model version) so the client's later actions join to them."""
        req = _parse(RecommendRequest, await request.body())
        out = await run_in_threadpool(
            replica.recommend, req.user_id, req.user_features, req.context, req.k, req.event_time
        )
        request.state.arm = out["arm"]
        return Response(_json.encode(out), media_type="application/json")

    events_schema, components = msgspec.json.schema_components(
        [list[Event]], ref_template="#/components/schemas/{name}"
    )

    @app.post(
        "/v1/events",
        response_model=EventsAccepted,
        tags=["events"],
        dependencies=[Depends(require_key)],
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": events_schema[0]}}}
        },
    )
    async def events(request: Request) -> Response:
        """Append events (a JSON array of impressions, actions and item lifecycle events) to the
        event log. All or nothing: one invalid event rejects the request, naming it."""
        body = await request.body()
        out = await run_in_threadpool(replica.ingest, body)
        return Response(_json.encode(out), media_type="application/json")

    # HEAD too: load balancers and uptime checkers often probe with it (the server sends no body)
    @app.head("/v1/healthz", include_in_schema=False)
    @app.get("/v1/healthz", response_model=Health, tags=["ops"])
    def healthz() -> Response:
        out = replica.health()
        return Response(_json.encode(out), 200 if out["status"] == "ok" else 503, media_type="application/json")

    @app.get("/v1/model", tags=["ops"])
    def model() -> Response:
        """Per arm: model versions, newest event time, freshness, table sizes."""
        return Response(_json.encode(replica.model()), media_type="application/json")

    @app.get("/metrics", tags=["ops"], include_in_schema=True)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(components)
            for model in (RankRequest, RecommendRequest):
                doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(doc.pop("$defs", {}))
                schemas[model.__name__] = doc
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics, endpoints=ENDPOINTS)
    return app
