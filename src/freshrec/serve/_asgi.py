"""Two small ASGI middlewares: the body-size cap, and latency / status metrics per request.

Both are plain ASGI (no per-request objects beyond a closure): they sit in front of every
request, so they must cost microseconds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from freshrec.serve.metrics import ServeMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["BodyLimit", "Observe"]


async def _reply(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies over ``max_bytes`` with 413, before anything parses them: at once when
    Content-Length says so, else as soon as the streamed body passes the cap."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _reply(send, 400, b'{"error":"BadRequest","message":"content-length: not an integer"}')
                    return
                if length > cap:
                    msg = f'{{"error":"PayloadTooLarge","message":"body: {length} bytes, the cap is {cap}"}}'
                    await _reply(send, 413, msg.encode())
                    return
                break
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:  # raised inside the app's body read: its handler answers 413
                    raise HTTPException(413, f"body: more than {cap} bytes, the cap is {cap}")
            return message

        await self.app(scope, limited, send)


class Observe:
    """Time every request and count it by endpoint, arm and status (the arm and the error type
    are left in ``scope["state"]`` by the app)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, endpoints: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in self.endpoints else "other"
            state = scope.get("state") or {}
            arm = state.get("arm", "")
            m = self.metrics
            m.request_seconds.labels(endpoint, arm).observe(time.perf_counter() - t0)
            m.requests.labels(endpoint, arm, str(status)).inc()
            m.rate(endpoint).add()
            if status >= 400:
                m.errors.labels(endpoint, str(status), state.get("error", _REASON.get(status, "Error"))).inc()


_REASON = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    422: "ValidationError",
    500: "InternalError",
    503: "Unavailable",
}
