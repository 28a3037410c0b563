"""Fault injection: the sandbox misbehaves on demand so hub's retry paths can be exercised offline."""

import json
import threading
import time

import pytest
import requests
from werkzeug.serving import make_server

from hub.delivery.errors import classify
from hub.sandbox import create_sandbox_app, sandbox_recorder

H = "a" * 64


def body(n=1):
    now = int(time.time())
    events = [
        {
            "event_name": "Lead",
            "event_time": now,
            "event_id": f"e{i}",
            "action_source": "email",
            "user_data": {"em": H},
            "data_processing_options": [],
        }
        for i in range(n)
    ]
    return {"data": events, "access_token": "tok"}


@pytest.fixture
def app():
    return create_sandbox_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def live(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


def add_fault(client, **fault):
    response = client.post("/_sandbox/faults", json=fault)
    assert response.status_code == 201, response.json
    return response.json["pending"]


@pytest.mark.parametrize(
    ("mode", "status", "code", "subcode", "kind"),
    [
        ("http_500", 500, 2, None, "transient"),
        ("rate_limit", 400, 17, 2446079, "throttle"),
        ("expired_token", 400, 190, 463, "auth"),
    ],
)
def test_error_faults_answer_like_meta(client, mode, status, code, subcode, kind):
    add_fault(client, mode=mode)
    response = client.post("/v26.0/1/events", json=body())
    assert response.status_code == status
    error = response.json["error"]
    assert error["code"] == code
    assert error.get("error_subcode") == subcode
    assert classify(response.status_code, response.json, headers=dict(response.headers)).kind == kind


def test_rate_limit_carries_usage_header(client):
    add_fault(client, mode="rate_limit", regain_minutes=3)
    response = client.post("/v26.0/1/events", json=body())
    usage = json.loads(response.headers["X-Business-Use-Case-Usage"])
    assert next(iter(usage.values()))[0]["estimated_time_to_regain_access"] == 3
    assert classify(400, response.json, headers=dict(response.headers)).retry_after == 180.0


def test_faults_are_a_queue_consumed_in_order(client, app):
    add_fault(client, mode="http_500", count=2)
    pending = add_fault(client, mode="expired_token")
    assert [f["mode"] for f in pending] == ["http_500", "http_500", "expired_token"]
    statuses = [client.post("/v26.0/1/events", json=body()).status_code for _ in range(4)]
    codes = [r["code"] for r in sandbox_recorder(app).snapshot()["rejections"]]
    assert statuses == [500, 500, 400, 200]
    assert codes == [2, 2, 190]
    assert client.get("/_sandbox/faults").json == {"pending": []}


def test_faulted_requests_record_nothing_even_when_valid(client, app):
    add_fault(client, mode="http_500")
    client.post("/v26.0/1/events", json=body(3))
    assert sandbox_recorder(app).snapshot()["events"] == []


def test_clear_faults(client):
    add_fault(client, mode="http_500", count=5)
    assert client.delete("/_sandbox/faults").status_code == 204
    assert client.post("/v26.0/1/events", json=body()).status_code == 200


@pytest.mark.parametrize(
    ("fault", "field"),
    [
        ({"mode": "explode"}, "mode"),
        ({"mode": "http_500", "count": 0}, "count"),
        ({"mode": "http_500", "count": "3"}, "count"),
        ({"mode": "slow", "delay_ms": -1}, "delay_ms"),
        ({"mode": "slow", "delay_ms": 10**9}, "delay_ms"),
        ({"mode": "rate_limit", "regain_minutes": True}, "regain_minutes"),
    ],
)
def test_bad_fault_requests(client, fault, field):
    response = client.post("/_sandbox/faults", json=fault)
    assert response.status_code == 400
    assert field in response.json["error"]["fields"]


def test_drop_connection_without_socket_answers_502(client):
    add_fault(client, mode="drop_connection")
    assert client.post("/v26.0/1/events", json=body()).status_code == 502


def test_drop_connection_on_a_real_server(live, app):
    requests.post(f"{live}/_sandbox/faults", json={"mode": "drop_connection"}, timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{live}/v26.0/1/events", json=body(), timeout=5)
    after = requests.post(f"{live}/v26.0/1/events", json=body(), timeout=5)
    assert after.status_code == 200
    assert [r["outcome"] for r in sandbox_recorder(app).requests()] == ["dropped", "accepted"]


def test_slow_fault_delays_then_answers(live):
    requests.post(f"{live}/_sandbox/faults", json={"mode": "slow", "delay_ms": 300}, timeout=5)
    started = time.perf_counter()
    response = requests.post(f"{live}/v26.0/1/events", json=body(), timeout=5)
    assert time.perf_counter() - started >= 0.3
    assert response.status_code == 200
    requests.post(f"{live}/_sandbox/faults", json={"mode": "slow", "delay_ms": 1500}, timeout=5)
    with pytest.raises(requests.ReadTimeout):
        requests.post(f"{live}/v26.0/1/events", json=body(), timeout=0.5)


def test_concurrent_requests_are_all_recorded(live, app):
    def send(worker):
        for i in range(10):
            payload = body(5)
            for event in payload["data"]:
                event["event_id"] = f"w{worker}-{i}-{event['event_id']}"
            assert requests.post(f"{live}/v26.0/1/events", json=payload, timeout=10).status_code == 200

    threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snapshot = sandbox_recorder(app).snapshot()
    assert snapshot["requests_received"] == 80
    assert len({e["event"]["event_id"] for e in snapshot["events"]}) == 400
    assert sorted({e["request_index"] for e in snapshot["events"]}) == list(range(1, 81))
