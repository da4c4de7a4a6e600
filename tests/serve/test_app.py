"""The HTTP API in-process (TestClient): answers, every 4xx path, the API key, impressions logged
by /v1/recommend, actions credited to arms, /metrics and the OpenAPI docs."""

from __future__ import annotations

import json
import sys
import warnings

import pytest

from freshrec.errors import TooLargeError
from freshrec.serve import ServeConfig, create_app, load_states
from freshrec.serve.app import status_of
from freshrec.stream import decode, open_log

with warnings.catch_warnings():  # starlette's TestClient warns about httpx; the app does not care
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

KEY = {"X-API-Key": "s3cret"}
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


def rank_body(n=3, **over):
    body = {
        "user_id": 7,
        "user_features": USER,
        "context": CONTEXT,
        "candidates": [{"item_id": f"it{i}", "features": item_features(i)} for i in range(n)],
    }
    return {**body, **over}


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    config = ServeConfig.from_dict(
        {
            "api_key": "s3cret",
            "max_candidates": 20,
            "max_k": 5,
            "max_body_bytes": 8192,
            "max_events": 50,
            "log": {"path": str(root / "log"), "synchronous": "normal"},
            "item_refresh_s": 0.05,
            "arms": [
                {
                    "name": "two_tower",
                    "weight": 1,
                    "model_dir": str(model_dirs["rank"]),
                    "retrieval_dir": str(model_dirs["retrieve"]),
                },
                {"name": "newest", "weight": 1, "model_dir": str(model_dirs["rank"])},
            ],
        }
    )
    app = create_app(config, load_states(config))
    with TestClient(app) as client:
        listed = [
            {
                "kind": "item",
                "event_id": f"l{i}",
                "event_time": 100.0 + i,
                "item_id": f"it{i}",
                "status": "listed",
                "features": item_features(i),
            }
            for i in range(40)
        ]
        assert client.post("/v1/events", json=listed, headers=KEY).status_code == 200
        # item vectors are rebuilt by a background thread; rebuild them here so that no test
        # depends on it having run (test_server.py checks the thread itself)
        app.state.replica.refresh_item_vectors()
        yield client, app.state.replica, root / "log"


def read_topic(path, topic):
    with open_log(path=path) as log:
        return [decode(r.value) for p in range(log.partitions(topic)) for r in log.read(topic, p, 0, 100_000)]


def test_rank_scores_every_candidate_in_order(server):
    client, replica, _ = server
    r = client.post("/v1/rank", json=rank_body(4))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["arm"] in ("two_tower", "newest") and out["tasks"] == ["click"]
    assert len(out["scores"]) == 4 and all(0 < s < 1 for s in out["scores"])
    assert out["task_scores"]["click"] == out["scores"]
    assert out["model"]["version"].startswith(out["arm"] + "/rank/s0.d0")
    assert out["model"]["freshness_s"] >= 0 and out["model"]["event_time"] == 1029.0
    want = (
        replica.engines[out["arm"]]
        .rank(7, USER, CONTEXT, [f"it{i}" for i in range(4)], [item_features(i) for i in range(4)])
        .probs[:, 0]
    )
    assert out["scores"] == pytest.approx(want.tolist())
    again = client.post("/v1/rank", json=rank_body(4)).json()
    assert again["arm"] == out["arm"] and again["request_id"] != out["request_id"]


def test_unknown_users_and_items_score_with_defaults(server):
    client, _, _ = server
    body = rank_body(2, user_id="nobody-ever")
    body["candidates"][0]["item_id"] = 10**18
    body["candidates"][1]["features"]["seller_id"] = "brand-new-seller"
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 200 and len(r.json()["scores"]) == 2


@pytest.mark.parametrize(
    ("mutate", "status", "message"),
    [
        (lambda b: b.pop("user_id"), 422, "user_id: Field required"),
        (
            lambda b: b["candidates"][1].update(item_id=1.5),
            422,
            "candidates[1].item_id: Input should be a valid integer",
        ),
        (lambda b: b.update(candidate=[]), 422, "candidate: Extra inputs are not permitted"),
        (lambda b: b.update(candidates=[]), 422, "candidates: List should have at least 1 item"),
        (
            lambda b: b["candidates"][0]["features"].update(price={"a": 1}),
            422,
            "candidates[0].features.price",
        ),
        (
            lambda b: b["candidates"][0]["features"].update(price=float("inf")),
            422,
            "candidates[0].features.price",
        ),
        (
            lambda b: b["candidates"][0]["features"].update(category=2.5),
            422,
            "sparse slot 'category': IDs must be integers",
        ),
        (  # finite, but Inf in the model's float32 input: answered 200 with null scores
            lambda b: b["candidates"][1]["features"].update(discount=1e300),
            422,
            "dense feature 'discount': 1e+300 at row 1 is past float32's range",
        ),
        (
            lambda b: b["candidates"][0]["features"].update(price="cheap"),
            422,
            "'price' is a dense feature and needs numbers; row 0 has str 'cheap'",
        ),
        (  # scored as 12.5 before, though training refuses the same string
            lambda b: b["candidates"][1]["features"].update(price="12.5"),
            422,
            "'price' is a dense feature and needs numbers; row 1 has str '12.5'",
        ),
        (lambda b: b.update(user_features={}), 422, "features.segment: missing"),
        (lambda b: b["candidates"][0]["features"].pop("price"), 422, "candidates[0].features.price: missing"),
        (lambda b: b.update(user_id=2**63), 422, "user_id"),
        (lambda b: b.update(user_id=""), 422, "user_id"),
    ],
)
def test_bad_rank_requests_name_the_field(server, mutate, status, message):
    client, _, _ = server
    body = rank_body(3)
    mutate(body)
    r = client.post(
        "/v1/rank",
        content=json.dumps(body).replace("Infinity", "1e999"),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    assert message in r.json()["message"], r.json()


def test_null_features_are_left_out(server):
    """null is what pandas and most JSON encoders write for a missing value: it is the same as
    leaving the key out (a fill_missing dense feature is filled, any other is named as missing)."""
    client, _, _ = server
    base = client.post("/v1/rank", json=rank_body(2)).json()["scores"]
    body = rank_body(2)
    for c in body["candidates"]:
        c["features"]["discount"] = None  # fill_missing=0.0
    filled = client.post("/v1/rank", json=body)
    body = rank_body(2)
    for c in body["candidates"]:
        c["features"]["discount"] = 0.0
    assert filled.status_code == 200 and filled.json()["scores"] == client.post("/v1/rank", json=body).json()["scores"]
    assert filled.json()["scores"] != base  # the filled 0.0 is not the sent 0.1
    body = rank_body(2)
    body["candidates"][1]["features"]["price"] = None
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 422 and "candidates[1].features.price: missing" in r.json()["message"]
    r = client.post("/v1/recommend", json={"user_id": 1, "user_features": {"segment": 1, "hour": None}, "k": 2})
    assert r.status_code == 422 and "features.hour: missing" in r.json()["message"]
    r = client.post(
        "/v1/recommend", json={"user_id": 1, "user_features": {**USER, "note": None}, "context": CONTEXT, "k": 2}
    )
    assert r.status_code == 200, r.text


def test_healthz_answers_head(server):
    client, _, _ = server
    r = client.head("/v1/healthz")
    assert r.status_code == 200 and r.content == b""


def test_caps_on_candidates_k_and_body(server):
    client, _, _ = server
    r = client.post("/v1/rank", json=rank_body(21))
    assert r.status_code in (413, 422)  # 21 candidates exceed both caps here; either way refused
    r = client.post("/v1/rank", json=rank_body(2, candidates=[{"item_id": i} for i in range(21)]))
    assert r.status_code == 422 and "candidates: List should have at most 20 items" in r.json()["message"]
    r = client.post("/v1/recommend", json={"user_id": 1, "k": 6})
    assert r.status_code == 422 and r.json()["message"].startswith("k: Input should be less than or equal to 5")
    big = json.dumps(rank_body(1, padding="x" * 9000))
    r = client.post("/v1/rank", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"

    def chunks():  # no Content-Length: the streamed size trips the cap
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/v1/rank", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "cap is 8192" in r.json()["message"]
    # an event the log will not take (over Kafka's message.max.bytes): 413, not a 503 "retry"
    assert status_of(TooLargeError("a record is larger than the cluster takes")) == 413


def test_recommend_event_time_in_milliseconds_names_the_unit(server):
    """/v1/events said "divide by 1000" for a time in milliseconds; /v1/recommend said only
    "less than or equal to 100000000000"."""
    client, _, _ = server
    r = client.post("/v1/recommend", json={"user_id": 1, "k": 2, "event_time": 1.7e12})
    message = r.json()["message"]
    assert r.status_code == 422
    assert message.startswith("event_time: ") and "milliseconds must be divided by 1000" in message
    r = client.post("/v1/recommend", json={"user_id": 1, "k": 2, "event_time": -1.0})
    assert r.status_code == 422 and r.json()["message"].startswith("event_time: Input should be greater than")


def test_not_json_and_unknown_paths(server):
    client, _, _ = server
    r = client.post("/v1/rank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError" and "JSON" in r.json()["message"]
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    assert client.get("/v1/rank").status_code == 405


def test_events_need_the_api_key(server):
    client, _, _ = server
    ev = [
        {
            "kind": "action",
            "event_id": "a",
            "request_id": "r",
            "event_time": 1.0,
            "user_id": 1,
            "item_id": "x",
            "type": "click",
        }
    ]
    r = client.post("/v1/events", json=ev)
    assert r.status_code == 401 and "X-API-Key: missing" in r.json()["message"]
    r = client.post("/v1/events", json=ev, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and r.json()["message"] == "X-API-Key: invalid API key"
    assert client.post("/v1/events", json=ev, headers=KEY).status_code == 200


def test_events_are_all_or_nothing(server):
    client, _, log_path = server
    before = len(read_topic(log_path, "actions"))
    ev = [
        {
            "kind": "action",
            "event_id": "ok",
            "request_id": "r",
            "event_time": 1.0,
            "user_id": 1,
            "item_id": "x",
            "type": "click",
        },
        {
            "kind": "action",
            "event_id": "bad",
            "request_id": "r",
            "event_time": -1.0,
            "user_id": 1,
            "item_id": "x",
            "type": "click",
        },
    ]
    r = client.post("/v1/events", json=ev, headers=KEY)
    assert r.status_code == 422
    assert r.json()["message"].startswith("1 of 2 events are invalid, none was written: events[1].action.event_time")
    assert r.json()["detail"][0]["index"] == 1
    assert len(read_topic(log_path, "actions")) == before
    r = client.post("/v1/events", json=[{"kind": "action"}] * 51, headers=KEY)
    assert r.status_code == 422
    r = client.post("/v1/events", json={"kind": "item"}, headers=KEY)
    assert r.status_code == 422 and "expected a JSON array" in r.json()["message"]
    # a position past int64: 2**70 was a 500 (msgpack cannot hold it), 2**64 - 1 reached the log and
    # stopped the trainer at the batch that held it
    imp = {"kind": "impression", "event_id": "p", "request_id": "r", "event_time": 1.0, "user_id": 1, "item_id": "x"}
    for position in (2**64 - 1, 2**70):
        r = client.post("/v1/events", json=[{**imp, "position": position}], headers=KEY)
        assert r.status_code == 422 and "events[0].impression.position" in r.json()["message"]


def test_item_events_update_the_catalog(server):
    client, replica, log_path = server
    ev = [{"kind": "item", "event_id": "e1", "event_time": 500.0, "item_id": "it39", "status": "ended"}]
    assert client.post("/v1/events", json=ev, headers=KEY).json() == {
        "accepted": 1,
        "impressions": 0,
        "actions": 0,
        "items": 1,
    }
    assert replica.items.get("it39") is None
    assert any(e.item_id == "it39" and e.status == "ended" for e in read_topic(log_path, "items"))
    ev[0].update(event_id="e2", status="listed", event_time=600.0, features=item_features(39))
    client.post("/v1/events", json=ev, headers=KEY)
    assert client.get("/v1/healthz").json()["live_items"] == 40


def test_recommend_logs_impressions_and_credits_actions(server):
    client, replica, log_path = server
    seen_arms = {}
    for user in range(12):
        r = client.post(
            "/v1/recommend",
            json={
                "user_id": user,
                "user_features": USER,
                "context": CONTEXT,
                "k": 3,
                "event_time": 1000.0 + user,
            },
        )
        assert r.status_code == 200, r.text
        out = r.json()
        seen_arms.setdefault(out["arm"], out)
        assert [i["position"] for i in out["items"]] == [0, 1, 2]
        scores = [i["score"] for i in out["items"]]
        assert scores == sorted(scores, reverse=True)
    assert set(seen_arms) == {"two_tower", "newest"}  # 12 users land in both halves
    assert seen_arms["two_tower"]["retrieval"]["name"] == "retrieve" and seen_arms["newest"]["retrieval"] is None
    assert replica.writer.flush(10)
    out = seen_arms["two_tower"]
    imps = [e for e in read_topic(log_path, "impressions") if e.request_id == out["request_id"]]
    assert [(e.position, e.item_id) for e in sorted(imps, key=lambda e: e.position)] == [
        (i["position"], i["item_id"]) for i in out["items"]
    ]
    first = min(imps, key=lambda e: e.position)
    assert first.model_version == out["model"]["version"] and first.user_features == USER
    assert first.context == CONTEXT and first.item_features == item_features(int(first.item_id[2:]))
    assert first.event_id == f"{out['request_id']}.0" and first.event_time == 1000.0 + first.user_id
    # the client's actions come back with the request id and are credited to the arm
    act = [
        {
            "kind": "action",
            "event_id": "c1",
            "request_id": out["request_id"],
            "event_time": 2000.0,
            "user_id": first.user_id,
            "item_id": first.item_id,
            "type": "click",
        }
    ]
    assert client.post("/v1/events", json=act, headers=KEY).status_code == 200
    text = client.get("/metrics").text
    assert 'freshrec_serve_actions_total{arm="two_tower",type="click"} 1.0' in text
    assert 'freshrec_serve_ctr{arm="two_tower"}' in text


def test_metrics_expose_latency_versions_rows_and_errors(server):
    client, _, _ = server
    client.post("/v1/rank", json=rank_body(2))
    client.post("/v1/rank", json={"nope": 1})
    text = client.get("/metrics").text
    for needle in (
        "freshrec_serve_request_seconds_bucket{arm=",
        'endpoint="/v1/rank"',
        "freshrec_serve_requests_total{arm=",
        'freshrec_serve_errors_total{endpoint="/v1/rank",error="ValidationError",status="422"}',
        'freshrec_serve_qps{endpoint="/v1/rank"}',
        'freshrec_serve_model_version{arm="two_tower",kind="sparse",model="rank"} 0.0',
        'freshrec_serve_sync_lag_seconds{arm="newest",model="rank"}',
        'freshrec_serve_table_rows{arm="two_tower",model="retrieve",table="item_id"} 300.0',
        "freshrec_serve_live_items",
        'freshrec_serve_item_vectors{arm="two_tower"}',
        'freshrec_serve_impressions_total{arm="newest"}',
        "freshrec_serve_event_log_pending 0.0",  # a log refusing impressions was visible only in warnings
        'freshrec_serve_event_log_records_total{outcome="dropped"} 0.0',
        "freshrec_serve_event_log_failures_total 0.0",
    ):
        assert needle in text, needle


def test_health_model_and_docs(server):
    client, _, _ = server
    h = client.get("/v1/healthz").json()
    assert h["status"] == "ok" and h["state"] == "serving" and h["arms"] == ["two_tower", "newest"]
    assert h["event_log"] == {"pending": 0, "failures": 0, "dropped": 0}
    m = client.get("/v1/model").json()
    arm = m["arms"][0]
    assert arm["rank"]["type"] == "deepfm" and arm["retrieve"]["type"] == "two_tower"
    assert arm["rank"]["tables"]["category"] == {"rows": 10, "dim": 8}
    assert arm["rank"]["logit_offset"] == pytest.approx(-0.6931, abs=1e-4) and arm["item_vectors"]["items"] >= 39
    assert "swagger-ui" in client.get("/docs").text
    spec = client.get("/openapi.json").json()
    assert {"/v1/rank", "/v1/recommend", "/v1/events", "/v1/healthz", "/v1/model", "/metrics"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert schemas["RankRequest"]["properties"]["candidates"]["maxItems"] == 20
    assert "Impression" in schemas and "ItemLifecycle" in schemas
    assert spec["paths"]["/v1/events"]["post"]["security"] == [{"APIKeyHeader": []}]


def test_requests_before_start_are_refused(model_dirs, tmp_path):
    config = ServeConfig.from_dict(
        {
            "arms": [{"name": "a", "model_dir": str(model_dirs["rank"])}],
            "log": {"path": str(tmp_path / "log")},
        }
    )
    app = create_app(config, load_states(config))
    client = TestClient(app)  # no lifespan: the replica never started
    r = client.post("/v1/rank", json=rank_body(1))
    assert r.status_code == 503 and r.json()["message"] == "cannot rank: the server is created"
    assert client.get("/v1/healthz").status_code == 503


def test_sync_fed_models_catch_up_before_the_replica_says_it_is_healthy(model_dirs, tmp_path):
    """A restarted replica said ok while it still served its snapshot's parameters: its
    subscribers replayed the deltas after the snapshot only in their thread's first poll."""

    class Recorder:  # only what the replica requires of a subscriber: no describe(), state or label
        def __init__(self, replica_state) -> None:
            self.calls, self.replica_state = [], replica_state

        def catch_up(self, timeout_s: float = 60.0) -> bool:
            self.calls.append(("catch_up", self.replica_state().value))
            return True

        def start(self) -> None:
            self.calls.append(("start", self.replica_state().value))

        def stop(self, timeout: float) -> None:
            pass

        def close(self) -> None:
            pass

    config = ServeConfig.from_dict(
        {"arms": [{"name": "a", "model_dir": str(model_dirs["rank"])}], "log": {"path": str(tmp_path / "log")}}
    )
    holder = {}
    sub = Recorder(lambda: holder["app"].state.replica.state)
    holder["app"] = app = create_app(config, load_states(config), subscribers=[sub])
    with TestClient(app) as client:
        health = client.get("/v1/healthz")
        assert health.status_code == 200 and health.json()["stale_models"] == []
        assert client.get("/v1/model").json()["arms"][0]["rank"]["sync"] is None
    assert sub.calls == [("catch_up", "starting"), ("start", "starting")]


class _QuietSubscriber:
    """What the replica requires of a subscriber, doing nothing."""

    def catch_up(self, timeout_s: float = 60.0) -> bool:
        return True

    def start(self) -> None:
        pass

    def stop(self, timeout: float) -> None:
        pass


def test_a_stale_sync_fed_model_is_named_by_healthz_and_model_but_still_served(model_dirs, tmp_path):
    """An operator could not see from the replica that a sync-fed model had stopped following
    the log (its subscriber retrying a bootstrap no snapshot can satisfy yet): /v1/model showed
    only versions. Now each model says how its subscriber is doing, and healthz names the stale
    ones while staying 200 (the replica still serves their last good parameters)."""
    config = ServeConfig.from_dict(
        {"arms": [{"name": "a", "model_dir": str(model_dirs["rank"])}], "log": {"path": str(tmp_path / "log")}}
    )
    states = load_states(config)

    class Stale(_QuietSubscriber):
        state, label = states["a"].rank, "a/rank"

        def __init__(self) -> None:
            self.status = {"state": "live", "errors": 0, "last_error": None}

        def describe(self) -> dict:
            return dict(self.status)

    sub = Stale()
    with TestClient(create_app(config, states, subscribers=[sub])) as client:
        health = client.get("/v1/healthz")
        assert health.status_code == 200 and health.json()["stale_models"] == []
        sub.status = {"state": "stale", "errors": 3, "last_error": "SyncError: expected sparse version 5"}
        health = client.get("/v1/healthz")
        assert health.status_code == 200 and health.json()["stale_models"] == ["a/rank"]
        arm = client.get("/v1/model").json()["arms"][0]
        assert arm["rank"]["sync"] == sub.status
        assert client.post("/v1/rank", json=rank_body(2)).status_code == 200


def test_a_static_model_has_no_sync_status(model_dirs, tmp_path):
    config = ServeConfig.from_dict(
        {"arms": [{"name": "a", "model_dir": str(model_dirs["rank"])}], "log": {"path": str(tmp_path / "log")}}
    )
    with TestClient(create_app(config, load_states(config))) as client:
        assert client.get("/v1/model").json()["arms"][0]["rank"]["sync"] is None

    class DescribesOnly(_QuietSubscriber):  # no state or label: it cannot say which model it feeds (was a 500)
        def describe(self) -> dict:
            return {"state": "stale"}

    with TestClient(create_app(config, load_states(config), subscribers=[DescribesOnly()])) as client:
        assert client.get("/v1/healthz").json()["stale_models"] == []
        assert client.get("/v1/model").json()["arms"][0]["rank"]["sync"] is None


def test_the_gil_switch_interval_is_set_while_serving_and_restored_after(model_dirs, tmp_path):
    """Requests run on the event loop beside the sync and tailer threads: serving shortens the
    GIL's switch interval (at 5 ms a request waits that long behind a delta), then gives the
    process its own back."""
    before = sys.getswitchinterval()
    config = ServeConfig.from_dict(
        {
            "arms": [{"name": "a", "model_dir": str(model_dirs["rank"])}],
            "log": {"path": str(tmp_path / "log")},
            "gil_switch_interval_ms": 0.25,
        }
    )
    with TestClient(create_app(config, load_states(config))) as client:
        assert client.post("/v1/rank", json=rank_body(2)).status_code == 200
        assert sys.getswitchinterval() == pytest.approx(0.00025)
    assert sys.getswitchinterval() == before


def test_overlapping_replicas_share_the_switch_interval_and_the_last_one_restores_it():
    from freshrec.serve.replica import _SwitchInterval

    switch = _SwitchInterval()  # not the module's: replicas of other tests may hold claims there
    before = sys.getswitchinterval()
    switch.claim(0.001)
    switch.claim(0.0002)
    assert sys.getswitchinterval() == pytest.approx(0.0002)  # the shortest asked for
    switch.release(0.0002)
    assert sys.getswitchinterval() == pytest.approx(0.001)
    switch.release(0.001)
    assert sys.getswitchinterval() == before


def test_exploration_picks_are_flagged_logged_and_counted(model_dirs, tmp_path):
    """An arm's explore share: the response flags its picks, their impressions carry the model
    version with /explore (so offline analysis can tell them apart), and /metrics counts them."""
    config = ServeConfig.from_dict(
        {
            "arms": [{"name": "a", "model_dir": str(model_dirs["rank"]), "explore": 0.5}],
            "log": {"path": str(tmp_path / "log")},
        }
    )
    app = create_app(config, load_states(config))
    with TestClient(app) as client:
        listed = [
            {"kind": "item", "event_id": f"l{i}", "event_time": 100.0 + i, "item_id": f"it{i}", "status": "listed",
             "features": item_features(i)}
            for i in range(40)
        ]  # fmt: skip
        assert client.post("/v1/events", json=listed).status_code == 200
        client.app.state.replica.refresh_item_vectors()
        outs = []
        for user in range(10):
            r = client.post("/v1/recommend", json={"user_id": user, "user_features": USER, "context": CONTEXT, "k": 4})
            assert r.status_code == 200, r.text
            outs.append(r.json())
        assert [sum(i["explored"] for i in o["items"]) for o in outs] == [2] * 10
        client.app.state.replica.writer.flush(10)
        imps = {(e.request_id, e.item_id): e.model_version for e in read_topic(tmp_path / "log", "impressions")}
        for o in outs:
            for i in o["items"]:
                want = o["model"]["version"] + ("/explore" if i["explored"] else "")
                assert imps[o["request_id"], i["item_id"]] == want
        assert 'freshrec_serve_explored_total{arm="a"} 20.0' in client.get("/metrics").text


def test_event_times_far_ahead_of_the_server_clock_are_refused(server):
    """The joiner dead-letters an event dated more than max_future_s after its arrival (one such
    event would make every later one late): serving answered 200 and its impressions were lost
    downstream, silently. Now a 422 that says so, and nothing is written."""
    import time as _time

    client, _, log_path = server
    ahead = _time.time() + 3600
    r = client.post("/v1/recommend", json={"user_id": 1, "user_features": USER, "context": CONTEXT, "k": 2,
                                           "event_time": ahead})  # fmt: skip
    assert r.status_code == 422 and "ahead of this server's clock" in r.json()["message"], r.text
    before = len(read_topic(log_path, "actions"))
    act = {"kind": "action", "event_id": "far", "request_id": "r", "event_time": ahead, "user_id": 1, "item_id": "x",
           "type": "click"}  # fmt: skip
    r = client.post("/v1/events", json=[{**act, "event_id": "ok", "event_time": 5000.0}, act], headers=KEY)
    assert r.status_code == 422 and "events[1].event_time" in r.json()["message"], r.text
    assert len(read_topic(log_path, "actions")) == before  # all or nothing
