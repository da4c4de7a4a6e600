"""The body-size cap answers before the app runs; the observer counts every status."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from freshrec.serve._asgi import BodyLimit, Observe
from freshrec.serve.metrics import ServeMetrics


async def _app(scope, receive, send):  # an app that reads the body and answers 200
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(app, headers):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"x" * 10, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/v1/rank", "headers": headers, "state": {}}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_content_length_over_the_cap_or_not_a_number():
    app = BodyLimit(_app, max_bytes=5)
    status, body = call(app, [(b"content-length", b"10")])
    assert status == 413 and b"body: 10 bytes, the cap is 5" in body
    status, body = call(app, [(b"content-length", b"ten")])
    assert status == 400 and b"content-length: not an integer" in body
    assert call(BodyLimit(_app, max_bytes=50), [(b"content-length", b"10")])[0] == 200


def test_observer_counts_statuses_and_errors():
    metrics = ServeMetrics()
    app = Observe(BodyLimit(_app, max_bytes=5), metrics, {"/v1/rank"})
    call(app, [(b"content-length", b"10")])
    call(Observe(_app, metrics, {"/v1/rank"}), [])
    text = generate_latest(metrics.registry).decode()
    assert 'freshrec_serve_errors_total{endpoint="/v1/rank",error="PayloadTooLarge",status="413"} 1.0' in text
    assert 'freshrec_serve_requests_total{arm="",endpoint="/v1/rank",status="200"} 1.0' in text
