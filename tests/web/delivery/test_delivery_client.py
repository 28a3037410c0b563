"""CapiClient against real local HTTP servers: pytest-httpserver for scripted answers, the sandbox end to end."""

import hashlib
import hmac
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from hub.delivery.client import CapiClient, appsecret_proof
from hub.delivery.payload import CapiEventInput, build_capi_event, build_request_body
from hub.sandbox import create_sandbox_app, sandbox_recorder

PIXEL = "1234567890"
TOKEN = "EAAB-secret-token-value"
SECRET = "app-secret"
EVENTS_PATH = f"/v26.0/{PIXEL}/events"


def body(n=2):
    return {"data": [{"event_name": "Lead", "event_id": f"e{i}"} for i in range(n)]}


@pytest.fixture
def client(httpserver):
    with CapiClient(httpserver.url_for("/").rstrip("/"), timeout=(1, 2)) as capi:
        yield capi


def test_posts_json_with_token_and_proof_in_the_body(httpserver, client):
    httpserver.expect_oneshot_request(EVENTS_PATH, method="POST").respond_with_json(
        {"events_received": 2, "messages": [], "fbtrace_id": "TRACE1"}
    )
    response = client.send(PIXEL, TOKEN, "v26.0", body(2), app_secret=SECRET)
    request, _ = httpserver.log[0]
    sent = json.loads(request.get_data())
    assert request.headers["Content-Type"] == "application/json"
    assert sent["data"] == body(2)["data"]
    assert sent["access_token"] == TOKEN
    assert sent["appsecret_proof"] == hmac.new(SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
    assert TOKEN not in request.url  # never in the URL, which ends up in access logs
    assert request.query_string == b""
    assert response.ok
    assert response.error is None
    assert response.status == 200
    assert response.events_received == 2
    assert response.fbtrace_id == "TRACE1"
    assert response.duration_ms >= 0
    assert response.messages == []


def test_no_proof_without_secret_and_caller_body_untouched(httpserver, client):
    httpserver.expect_oneshot_request(EVENTS_PATH).respond_with_json({"events_received": 1})
    original = body(1)
    client.send(PIXEL, TOKEN, "v26.0", original)
    sent = json.loads(httpserver.log[0][0].get_data())
    assert "appsecret_proof" not in sent
    assert original == body(1)  # the token was not added to the caller's dict


def test_appsecret_proof_known_value():
    # HMAC-SHA256(key="secret", msg="token"), computed independently.
    expected = hmac.new(b"secret", b"token", hashlib.sha256).hexdigest()
    assert appsecret_proof("token", "secret") == expected
    assert len(expected) == 64


def test_meta_error_is_classified(httpserver, client):
    httpserver.expect_oneshot_request(EVENTS_PATH).respond_with_json(
        {
            "error": {
                "message": "Invalid parameter",
                "type": "OAuthException",
                "code": 100,
                "error_subcode": 2804003,
                "is_transient": False,
                "error_user_title": "Event Timestamp Too Old",
                "error_user_msg": "The timestamp for this event is too far in the past.",
                "fbtrace_id": "ERRTRACE",
            }
        },
        status=400,
    )
    response = client.send(PIXEL, TOKEN, "v26.0", body())
    assert not response.ok
    assert response.status == 400
    assert response.error.kind == "invalid"
    assert response.error.code == 100
    assert response.error.subcode == 2804003
    assert response.fbtrace_id == "ERRTRACE"
    assert response.events_received is None


def test_throttle_reads_usage_headers(httpserver, client):
    usage = json.dumps({"99": [{"type": "ads_management", "estimated_time_to_regain_access": 5}]})
    httpserver.expect_oneshot_request(EVENTS_PATH).respond_with_json(
        {"error": {"code": 80004, "message": "too many calls", "is_transient": True}},
        status=400,
        headers={"X-Business-Use-Case-Usage": usage},
    )
    response = client.send(PIXEL, TOKEN, "v26.0", body())
    assert response.error.kind == "throttle"
    assert response.error.retry_after == 300.0


@pytest.mark.parametrize(
    ("status", "text", "reason"),
    [
        (502, "<html>Bad gateway</html>", "non_json_response"),
        (200, "OK", "non_json_response"),
        (200, "[1, 2]", "non_json_response"),
        (200, "", "non_json_response"),
    ],
)
def test_non_json_answers_are_transient_not_raised(httpserver, client, status, text, reason):
    httpserver.expect_oneshot_request(EVENTS_PATH).respond_with_data(text, status=status)
    response = client.send(PIXEL, TOKEN, "v26.0", body())
    assert response.status == status
    assert response.body is None
    assert response.error.kind == "transient"
    assert response.error.reason == reason


def test_partial_acceptance_is_not_success(httpserver, client):
    httpserver.expect_oneshot_request(EVENTS_PATH).respond_with_json({"events_received": 1, "fbtrace_id": "P"})
    response = client.send(PIXEL, TOKEN, "v26.0", body(2))
    assert response.events_received == 1
    assert response.error.reason == "partial_acceptance"
    assert response.error.kind == "permanent"


def test_trace_id_from_header_when_body_has_none(httpserver, client):
    httpserver.expect_oneshot_request(EVENTS_PATH).respond_with_data(
        "oops", status=503, headers={"x-fb-trace-id": "HDRTRACE"}
    )
    assert client.send(PIXEL, TOKEN, "v26.0", body()).fbtrace_id == "HDRTRACE"


def test_read_timeout_is_transient(httpserver):
    def slow(_request):
        time.sleep(1.0)
        return Response("{}", content_type="application/json")

    httpserver.expect_oneshot_request(EVENTS_PATH).respond_with_handler(slow)
    with CapiClient(httpserver.url_for("/").rstrip("/"), timeout=(1, 0.2)) as capi:
        response = capi.send(PIXEL, TOKEN, "v26.0", body())
    assert response.status is None
    assert response.error.kind == "transient"
    assert response.error.reason == "timeout"
    assert TOKEN not in response.error.message


def test_connection_refused_is_transient():
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with CapiClient(f"http://127.0.0.1:{port}", timeout=(1, 1)) as capi:
        response = capi.send(PIXEL, TOKEN, "v26.0", body())
    assert response.error.kind == "transient"
    assert response.error.reason == "connection_error"
    assert TOKEN not in response.error.message


@pytest.mark.parametrize(
    ("pixel", "version"),
    [("123", "latest"), ("123", "26.0"), ("123", ""), ("../me", "v26.0"), ("12 3", "v26.0"), ("", "v26.0")],
)
def test_bad_configuration_raises(pixel, version):
    capi = CapiClient("https://graph.facebook.com")
    with pytest.raises(ValueError):  # noqa: PT011
        capi.send(pixel, TOKEN, version, body())


def test_graph_url_must_be_http():
    with pytest.raises(ValueError, match="http"):
        CapiClient("graph.facebook.com")
    assert CapiClient("https://graph.facebook.com/").events_url("1", "v26.0") == (
        "https://graph.facebook.com/v26.0/1/events"
    )


def test_repr_has_no_secret():
    assert "token" not in repr(CapiClient("https://graph.facebook.com")).lower()


# -- end to end against the sandbox on a real port -------------------------------------------------------------


@pytest.fixture
def sandbox():
    app = create_sandbox_app({"tokens": {PIXEL: TOKEN}, "app_secrets": {PIXEL: SECRET}})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


def built_events(n, now):
    return [
        build_capi_event(
            CapiEventInput(
                event_id=f"order-{i}",
                event_name="Purchase",
                occurred_at=now - timedelta(minutes=i % 30),
                action_source="website",
                event_source_url="https://shop.example.com/thanks",
                custom_data={"value": 10 + i, "currency": "EUR"},
                hashed={"em": hashlib.sha256(f"user{i}@example.com".encode()).hexdigest()},
                plain={"client_user_agent": "Mozilla/5.0", "client_ip_address": "203.0.113.5"},
                allowed_identifiers=None,
                ldu=(["LDU"], 1, 1000) if i % 2 else None,
            ),
            now,
        )
        for i in range(n)
    ]


def test_end_to_end_thousand_events_accepted(sandbox):
    app, url = sandbox
    now = datetime.now(UTC)
    request_body = build_request_body(built_events(1000, now), test_event_code="TEST42")
    with CapiClient(url) as capi:
        response = capi.send(PIXEL, TOKEN, "v26.0", request_body, app_secret=SECRET)
    assert response.ok, response.error
    assert response.events_received == 1000
    recorded = sandbox_recorder(app).snapshot()
    assert [e["event"]["event_id"] for e in recorded["events"]] == [f"order-{i}" for i in range(1000)]
    assert {e["test_event_code"] for e in recorded["events"]} == {"TEST42"}
    assert recorded["events"][1]["event"]["data_processing_options_state"] == 1000


@pytest.mark.parametrize(
    ("token", "secret", "kind", "code"),
    [
        ("wrong-token", SECRET, "auth", 190),
        (TOKEN, None, "auth", 104),
        (TOKEN, "wrong-secret", "auth", 104),
    ],
)
def test_end_to_end_auth_failures(sandbox, token, secret, kind, code):
    _, url = sandbox
    with CapiClient(url) as capi:
        response = capi.send(PIXEL, token, "v26.0", build_request_body(built_events(1, datetime.now(UTC))), secret)
    assert response.error.kind == kind
    assert response.error.code == code
    assert response.error.pauses_destination


def test_end_to_end_unknown_pixel_pauses(sandbox):
    _, url = sandbox
    with CapiClient(url) as capi:
        response = capi.send("777", TOKEN, "v26.0", build_request_body(built_events(1, datetime.now(UTC))))
    assert (response.error.code, response.error.subcode, response.error.kind) == (100, 33, "auth")


def test_end_to_end_invalid_event_rejects_batch(sandbox):
    app, url = sandbox
    events = built_events(3, datetime.now(UTC))
    events[1]["event_time"] = int(time.time()) - 8 * 86400  # bypassing the builder on purpose
    with CapiClient(url) as capi:
        response = capi.send(PIXEL, TOKEN, "v26.0", build_request_body(events), SECRET)
    assert response.error.kind == "invalid"
    assert response.error.splits_batch
    assert (response.error.code, response.error.subcode) == (100, 2804003)
    assert response.body["error"]["error_data"]["event_index"] == 1
    assert sandbox_recorder(app).snapshot()["events"] == []


@pytest.mark.parametrize(
    ("mode", "kind", "reason"),
    [
        ("http_500", "transient", "meta_error"),
        ("rate_limit", "throttle", "meta_error"),
        ("expired_token", "auth", "meta_error"),
        ("drop_connection", "transient", "connection_error"),
    ],
)
def test_end_to_end_faults(sandbox, mode, kind, reason):
    _, url = sandbox
    requests.post(f"{url}/_sandbox/faults", json={"mode": mode}, timeout=5)
    request_body = build_request_body(built_events(2, datetime.now(UTC)))
    with CapiClient(url) as capi:
        failed = capi.send(PIXEL, TOKEN, "v26.0", request_body, SECRET)
        retried = capi.send(PIXEL, TOKEN, "v26.0", request_body, SECRET)
    assert failed.error.kind == kind
    assert failed.error.reason == reason
    assert retried.ok
    if mode == "rate_limit":
        assert failed.error.retry_after == 60.0


def test_end_to_end_slow_answer_times_out(sandbox):
    _, url = sandbox
    requests.post(f"{url}/_sandbox/faults", json={"mode": "slow", "delay_ms": 800}, timeout=5)
    with CapiClient(url, timeout=(1, 0.2)) as capi:
        response = capi.send(PIXEL, TOKEN, "v26.0", build_request_body(built_events(1, datetime.now(UTC))), SECRET)
    assert response.error.reason == "timeout"
