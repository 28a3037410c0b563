"""The sandbox's /events edge: authentication, Meta-like validation and the answer envelopes."""

import hashlib
import hmac
import json
import time

import pytest

from hub.sandbox import create_sandbox_app, sandbox_recorder

PIXEL = "1234567890"
TOKEN = "EAAB-sandbox-token"
OTHER_PIXEL = "555"
OTHER_TOKEN = "EAAB-other"
NOW = 1_793_620_800  # fixed sandbox clock
URL = f"/v26.0/{PIXEL}/events"
H = hashlib.sha256(b"john_smith@gmail.com").hexdigest()
UA = "Mozilla/5.0"


@pytest.fixture
def app():
    return create_sandbox_app(
        {
            "tokens": {PIXEL: TOKEN, OTHER_PIXEL: OTHER_TOKEN},
            "app_secrets": {OTHER_PIXEL: "s3cret"},
            "clock": lambda: NOW + 0.7,
        }
    )


@pytest.fixture
def client(app):
    return app.test_client()


def event(**changes):
    base = {
        "event_name": "Purchase",
        "event_time": NOW - 60,
        "event_id": "order-1",
        "action_source": "website",
        "event_source_url": "https://shop.example.com/done",
        "user_data": {"em": H, "client_user_agent": UA, "client_ip_address": "203.0.113.7"},
        "custom_data": {"value": 10.5, "currency": "USD"},
        "data_processing_options": [],
    }
    for key, value in changes.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def post(client, body, *, token=TOKEN, url=URL):
    payload = dict(body)
    if token is not None:
        payload["access_token"] = token
    return client.post(url, json=payload)


def error_of(response):
    assert "error" in response.json, response.json
    return response.json["error"]


def test_success_envelope(client, app):
    response = post(client, {"data": [event(), event(event_id="order-2")]})
    assert response.status_code == 200
    body = response.json
    assert body["events_received"] == 2
    assert body["messages"] == []
    assert body["fbtrace_id"]
    assert response.headers["x-fb-trace-id"] == body["fbtrace_id"]
    recorded = sandbox_recorder(app).snapshot()
    assert [e["event"]["event_id"] for e in recorded["events"]] == ["order-1", "order-2"]
    assert {e["pixel_id"] for e in recorded["events"]} == {PIXEL}
    assert [e["event_index"] for e in recorded["events"]] == [0, 1]
    assert recorded["events"][0]["request_index"] == 1


def test_token_never_recorded(client, app):
    post(client, {"data": [event()]})
    post(client, {"data": [event(event_time=1)]})
    dump = json.dumps(sandbox_recorder(app).snapshot()) + json.dumps(sandbox_recorder(app).requests())
    assert TOKEN not in dump


def test_form_encoding_and_sdk_json_strings_are_accepted(client):
    # Meta's curl examples use form fields; the Python SDK sends each event as a JSON string.
    response = client.post(
        URL, data={"data": json.dumps([json.dumps(event())]), "access_token": TOKEN, "test_event_code": "T1"}
    )
    assert response.status_code == 200, response.json
    assert response.json["events_received"] == 1


@pytest.mark.parametrize("where", ["query", "bearer"])
def test_token_in_query_or_header(client, where):
    if where == "query":
        response = client.post(URL + f"?access_token={TOKEN}", json={"data": [event()]})
    else:
        response = client.post(URL, json={"data": [event()]}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("token", "url", "code", "subcode", "error_type"),
    [
        (None, URL, 104, None, "OAuthException"),
        ("", URL, 104, None, "OAuthException"),
        ("wrong", URL, 190, None, "OAuthException"),
        (TOKEN, "/v26.0/999/events", 100, 33, "GraphMethodException"),
        (OTHER_TOKEN, URL, 100, 33, "GraphMethodException"),
    ],
)
def test_authentication_errors(client, token, url, code, subcode, error_type):
    response = post(client, {"data": [event()]}, token=token, url=url)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code
    assert error.get("error_subcode") == subcode
    assert error["type"] == error_type
    assert error["is_transient"] is False
    for key in ("message", "error_user_title", "error_user_msg", "fbtrace_id"):
        assert error[key]


def test_appsecret_proof(client):
    url = f"/v26.0/{OTHER_PIXEL}/events"
    missing = post(client, {"data": [event()]}, token=OTHER_TOKEN, url=url)
    assert error_of(missing)["code"] == 104
    wrong = post(client, {"data": [event()], "appsecret_proof": "0" * 64}, token=OTHER_TOKEN, url=url)
    assert error_of(wrong)["code"] == 104
    proof = hmac.new(b"s3cret", OTHER_TOKEN.encode(), hashlib.sha256).hexdigest()
    ok = post(client, {"data": [event()], "appsecret_proof": proof}, token=OTHER_TOKEN, url=url)
    assert ok.status_code == 200


def test_open_mode_accepts_any_pixel_and_token():
    client = create_sandbox_app().test_client()
    response = client.post(
        "/v25.0/42/events", json={"data": [event(event_time=int(time.time()) - 5)], "access_token": "x"}
    )
    assert response.status_code == 200, response.json


def test_unversioned_path_is_refused(client):
    response = post(client, {"data": [event()]}, url=f"/latest/{PIXEL}/events")
    assert error_of(response)["code"] == 2500


NOT_HASHED_MD5 = hashlib.md5(b"x").hexdigest()  # noqa: S324 - checklist 13: MD5 must be refused


# (mutation of a valid event, expected rule, subcode, blamed field under data.<i>)
EVENT_CASES = [
    ({"event_name": ""}, "event_name_required", None, "event_name"),
    ({"event_name": ...}, "event_name_required", None, "event_name"),
    ({"event_time": ...}, "event_time_integer", None, "event_time"),
    ({"event_time": float(NOW - 60)}, "event_time_integer", None, "event_time"),
    ({"event_time": str(NOW - 60)}, "event_time_integer", None, "event_time"),
    ({"event_time": (NOW - 60) * 1000}, "event_time_seconds", None, "event_time"),
    ({"event_time": NOW - 7 * 86400 - 1}, "too_old", 2804003, "event_time"),
    ({"event_time": NOW + 1}, "future_event_time", None, "event_time"),
    ({"action_source": ...}, "action_source", None, "action_source"),
    ({"action_source": "Website"}, "action_source", None, "action_source"),
    ({"user_data": ...}, "user_data_required", None, "user_data"),
    ({"user_data": {}}, "user_data_required", None, "user_data"),
    ({"event_source_url": ...}, "website_url", None, "event_source_url"),
    ({"event_source_url": "/done"}, "event_source_url", None, "event_source_url"),
    (
        {"user_data": {"em": H, "client_ip_address": "203.0.113.7"}},
        "website_user_agent",
        None,
        "user_data.client_user_agent",
    ),
    ({"user_data": {"em": "john@example.com", "client_user_agent": UA}}, "not_hashed", None, "user_data.em"),
    ({"user_data": {"em": H.upper(), "client_user_agent": UA}}, "not_hashed", None, "user_data.em"),
    ({"user_data": {"em": NOT_HASHED_MD5, "client_user_agent": UA}}, "not_hashed", None, "user_data.em"),
    ({"user_data": {"em": [H, None], "client_user_agent": UA}}, "not_hashed", None, "user_data.em.1"),
    (
        {"user_data": {"external_id": "customer-42", "client_user_agent": UA}},
        "not_hashed",
        None,
        "user_data.external_id",
    ),
    ({"user_data": {"em": H, "client_user_agent": H}}, "plain_field_hashed", None, "user_data.client_user_agent"),
    ({"user_data": {"em": H, "client_user_agent": UA, "fbp": H}}, "plain_field_hashed", None, "user_data.fbp"),
    (
        {"user_data": {"em": H, "client_user_agent": UA, "client_ip_address": "1.2.3"}},
        "client_ip_address",
        None,
        "user_data.client_ip_address",
    ),
    ({"user_data": {"email": H, "client_user_agent": UA}}, "unknown_user_data_key", None, "user_data.email"),
    ({"user_data": {"db": H, "client_user_agent": UA}}, "insufficient_customer_information", 2804050, "user_data"),
    (
        {"user_data": {"ct": H, "zp": H, "country": H, "client_user_agent": UA}},
        "insufficient_customer_information",
        2804050,
        "user_data",
    ),
    (
        {"action_source": "email", "event_source_url": ..., "user_data": {"fn": H, "ge": H}},
        "insufficient_customer_information",
        2804050,
        "user_data",
    ),
    ({"data_processing_options": ["LDU"]}, "data_processing_options_country", None, "data_processing_options_country"),
    (
        {"data_processing_options": ["LDU"], "data_processing_options_country": 1},
        "data_processing_options_state",
        None,
        "data_processing_options_state",
    ),
    (
        {
            "data_processing_options": ["LDU"],
            "data_processing_options_country": 1,
            "data_processing_options_state": 999,
        },
        "data_processing_options_state",
        None,
        "data_processing_options_state",
    ),
    ({"data_processing_options": ["RESTRICTED"]}, "data_processing_options", None, "data_processing_options"),
    ({"custom_data": {"value": 10}}, "purchase_value", None, "custom_data"),
    ({"custom_data": ...}, "purchase_value", None, "custom_data"),
    ({"event_name": "Lead", "custom_data": {"value": "10"}}, "value_number", None, "custom_data.value"),
    ({"event_name": "Lead", "custom_data": {"value": 10}}, "value_currency", None, "custom_data.currency"),
    ({"event_name": "Lead", "custom_data": {"value": 10, "currency": "XYZ"}}, "currency", None, "custom_data.currency"),
    ({"opt_out": "yes"}, "opt_out", None, "opt_out"),
]


@pytest.mark.parametrize(("changes", "rule", "subcode", "field"), EVENT_CASES)
def test_one_bad_event_rejects_the_whole_batch(client, app, changes, rule, subcode, field):
    bad = event(event_id="bad", **changes)
    response = post(client, {"data": [event(event_id="a"), event(event_id="b"), bad]})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == 100
    assert error.get("error_subcode") == subcode
    assert error["is_transient"] is False
    assert error["error_data"]["sandbox_rule"] == rule
    assert error["error_data"]["event_index"] == 2
    assert error["error_data"]["blame_field_specs"] == [["data", "2", *field.split(".")]]
    assert error["error_user_msg"].startswith("Event 2: ")
    snapshot = sandbox_recorder(app).snapshot()
    assert snapshot["events"] == []  # nothing from the batch was kept
    assert snapshot["rejections"][-1]["rule"] == rule


@pytest.mark.parametrize(
    "changes",
    [
        {"action_source": "physical_store", "event_source_url": ..., "user_data": {"ph": H}},
        {"data_processing_options": ["LDU"], "data_processing_options_country": 0, "data_processing_options_state": 0},
        {
            "data_processing_options": ["LDU"],
            "data_processing_options_country": 1,
            "data_processing_options_state": 1013,
        },
        {"user_data": {"em": [H, H], "client_user_agent": UA}},
        {"user_data": {"db": H, "client_user_agent": UA, "client_ip_address": "::1"}},
        {"event_time": NOW - 7 * 86400},
        {"event_time": NOW},
        {"event_name": "Lead", "custom_data": {"value": 0, "currency": "eur"}},
        {"opt_out": True, "referrer_url": "android-app://com.example"},
    ],
)
def test_valid_variants_are_accepted(client, changes):
    response = post(client, {"data": [event(**changes)]})
    assert response.status_code == 200, response.json


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ({"data": []}, "data_required"),
        ({}, "data_required"),
        ({"data": "not json"}, "data_required"),
        ({"data": [event()], "upload_tag": "x"}, "unknown_parameter"),
        ({"data": [event()], "partner_agent": "a" * 23}, "bad_partner_agent"),
        ({"data": [event()], "partner_agent": "1"}, "bad_partner_agent"),
        ({"data": [event()], "test_event_code": ""}, "bad_test_event_code"),
        ({"data": [5]}, "event_not_object"),
    ],
)
def test_request_level_errors(client, body, rule):
    error = error_of(post(client, body))
    assert error["code"] == 100
    assert error["error_data"]["sandbox_rule"] == rule


def test_malformed_json(client):
    response = client.post(URL + f"?access_token={TOKEN}", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["error_data"]["sandbox_rule"] == "malformed_body"


def test_thousand_event_cap(client, app):
    ok = post(client, {"data": [event(event_id=f"e{i}") for i in range(1000)]})
    assert ok.json["events_received"] == 1000
    too_many = post(client, {"data": [event(event_id=f"e{i}") for i in range(1001)]})
    assert error_of(too_many)["error_data"]["sandbox_rule"] == "too_many_events"
    assert sandbox_recorder(app).snapshot()["events_received_total"] == 1000


def test_quality_warnings_come_back_as_messages(client):
    quiet = event(event_id=..., data_processing_options=...)
    quiet["user_data"] = {"em": hashlib.sha256(b"").hexdigest(), "ph": H, "client_user_agent": UA}
    body = post(client, {"data": [quiet]}).json
    assert body["events_received"] == 1
    assert len(body["messages"]) == 3
    assert all(m.startswith("Event 0: ") for m in body["messages"])


def test_events_endpoint_filters_and_resets(client):
    post(client, {"data": [event()]})
    post(client, {"data": [event(event_id="x", event_time=1)]})  # rejected
    other_proof = hmac.new(b"s3cret", OTHER_TOKEN.encode(), hashlib.sha256).hexdigest()
    post(
        client,
        {"data": [event(event_id="o")], "appsecret_proof": other_proof},
        token=OTHER_TOKEN,
        url=f"/v26.0/{OTHER_PIXEL}/events",
    )
    everything = client.get("/_sandbox/events").json
    assert everything["requests_received"] == 3
    assert everything["events_received_total"] == 2
    assert [e["request_index"] for e in everything["events"]] == [1, 3]
    assert everything["rejections"][0]["request_index"] == 2
    only_other = client.get(f"/_sandbox/events?pixel_id={OTHER_PIXEL}").json
    assert [e["event"]["event_id"] for e in only_other["events"]] == ["o"]
    assert client.get("/_sandbox/events?limit=1").json["events"][0]["event"]["event_id"] == "o"
    assert client.get("/_sandbox/events?limit=x").status_code == 400
    assert [r["outcome"] for r in client.get("/_sandbox/requests").json["requests"]] == [
        "accepted",
        "rejected",
        "accepted",
    ]
    assert client.delete("/_sandbox/events").status_code == 204
    after = client.get("/_sandbox/events").json
    assert after == {"events": [], "rejections": [], "requests_received": 0, "events_received_total": 0}


def test_memory_is_bounded():
    app = create_sandbox_app({"max_events": 5})
    client = app.test_client()
    now = int(time.time())
    for batch in range(3):
        body = {"data": [event(event_id=f"{batch}-{i}", event_time=now) for i in range(4)], "access_token": "t"}
        assert client.post("/v26.0/1/events", json=body).status_code == 200
    snapshot = client.get("/_sandbox/events").json
    assert [e["event"]["event_id"] for e in snapshot["events"]] == ["1-3", "2-0", "2-1", "2-2", "2-3"]
    assert snapshot["events_received_total"] == 12


def test_index_page_lists_events_and_rejections_escaped(client):
    post(client, {"data": [event(event_name="<script>alert(1)</script>", custom_data={})]})
    post(client, {"data": [event(event_id="old", event_time=NOW - 8 * 86400)]})
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html
    assert "too_old" in html
    assert "2804003" in html
    assert "<link" not in html  # self-contained: no stylesheet or script from a CDN
    assert "src=" not in html
