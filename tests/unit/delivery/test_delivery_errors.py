import json

import pytest
import requests

from hub.delivery.errors import (
    APP_USAGE_FULL_WAIT,
    APP_USAGE_HIGH_WAIT,
    POLICY_BLOCK_RETRY_AFTER,
    classify,
    parse_usage_headers,
)


def meta_error(code, subcode=None, is_transient=None, message="(#x) localised text", **extra):
    error = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbC123", **extra}
    if subcode is not None:
        error["error_subcode"] = subcode
    if is_transient is not None:
        error["is_transient"] = is_transient
    return {"error": error}


@pytest.mark.parametrize(
    ("status", "code", "subcode", "is_transient", "kind"),
    [
        # auth: pause the destination
        (400, 190, 460, False, "auth"),
        (400, 190, 463, False, "auth"),
        (500, 190, None, None, "auth"),  # RudderStack fixture: 190 arriving with HTTP 500
        (400, 102, None, False, "auth"),
        (400, 104, None, False, "auth"),
        (400, 100, 33, False, "auth"),  # pixel unknown / no permission: splitting cannot help
        # invalid payload: split the batch
        (400, 100, None, False, "invalid"),
        (400, 100, 2804003, False, "invalid"),
        (400, 100, 2804050, False, "invalid"),
        (400, 100, 2804019, True, "invalid"),  # code table beats a stray is_transient
        (500, 100, 2804003, None, "invalid"),
        # throttling
        (400, 4, 1504022, True, "throttle"),
        (400, 17, 2446079, True, "throttle"),
        (500, 17, None, None, "throttle"),
        (400, 32, None, None, "throttle"),
        (400, 341, None, None, "throttle"),
        (400, 613, 1487742, True, "throttle"),
        (400, 80000, None, None, "throttle"),
        (400, 80004, None, True, "throttle"),
        (400, 80014, None, None, "throttle"),
        # transient
        (500, 1, None, None, "transient"),
        (503, 2, None, True, "transient"),
        (200, 2, None, None, "transient"),
        (500, 5000, None, None, "transient"),
        (400, 368, 1390008, False, "transient"),
        # permanent configuration
        (400, 3, None, False, "permanent"),
        (403, 10, None, False, "permanent"),
        (400, 200, None, False, "permanent"),
        (400, 299, None, False, "permanent"),
        (400, 294, None, None, "permanent"),
        # unknown codes: is_transient decides, then the status
        (400, 80015, None, None, "permanent"),
        (400, 12345, None, True, "transient"),
        (500, 12345, None, False, "permanent"),
        (500, 12345, None, None, "transient"),
        (400, 12345, None, None, "permanent"),
    ],
)
def test_meta_error_codes(status, code, subcode, is_transient, kind):
    result = classify(status, meta_error(code, subcode, is_transient))
    assert result is not None
    assert result.kind == kind
    assert result.code == code
    assert result.subcode == subcode
    assert result.fbtrace_id == "AbC123"
    assert result.reason == "meta_error"
    assert result.retryable == (kind in ("transient", "throttle"))
    assert result.is_transient == (kind in ("transient", "throttle"))


def test_message_text_never_changes_the_class():
    french = meta_error(100, 2804003, message="Horodatage trop ancien", error_user_title="Trop ancien")
    english = meta_error(100, 2804003, message="Event Timestamp Too Old")
    misleading = meta_error(100, 2804003, message="temporarily unavailable, please retry")
    assert {classify(400, b).kind for b in (french, english, misleading)} == {"invalid"}


def test_string_codes_are_tolerated():
    result = classify(400, {"error": {"code": "190", "error_subcode": "463", "message": "x"}})
    assert result.kind == "auth"
    assert result.code == 190
    assert result.subcode == 463


def test_actions():
    assert classify(400, meta_error(100)).splits_batch
    assert not classify(400, meta_error(100, 33)).splits_batch
    assert classify(400, meta_error(100, 33)).pauses_destination
    assert classify(400, meta_error(190)).pauses_destination
    assert classify(400, meta_error(200)).pauses_destination
    assert classify(400, meta_error(10)).pauses_destination
    assert not classify(400, meta_error(12345)).pauses_destination
    assert not classify(400, meta_error(17)).pauses_destination


def test_message_combines_message_and_user_message():
    result = classify(400, meta_error(100, 2804050, message="Invalid parameter", error_user_msg="Too broad"))
    assert result.message == "Invalid parameter — Too broad"
    assert result.error_type == "OAuthException"


def test_policy_block_waits_long():
    assert classify(400, meta_error(368)).retry_after == POLICY_BLOCK_RETRY_AFTER


def test_throttle_retry_after_from_headers():
    headers = {
        "X-Business-Use-Case-Usage": json.dumps(
            {"123": [{"type": "ads_management", "call_count": 100, "estimated_time_to_regain_access": 7}]}
        )
    }
    result = classify(400, meta_error(80004), headers=headers)
    assert result.kind == "throttle"
    assert result.retry_after == 420.0
    assert classify(400, meta_error(17)).retry_after is None


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (requests.ConnectTimeout("connect timed out"), "timeout"),
        (requests.ReadTimeout("read timed out"), "timeout"),
        (TimeoutError(), "timeout"),
        (requests.ConnectionError("refused"), "connection_error"),
        (ConnectionResetError(), "connection_error"),
        (json.JSONDecodeError("Expecting value", "<html>", 0), "non_json_response"),
        (requests.exceptions.ChunkedEncodingError("broken"), "network_error"),
        (requests.exceptions.TooManyRedirects("loop"), "network_error"),
    ],
)
def test_exceptions_are_transient(exc, reason):
    result = classify(None, None, exc)
    assert result.kind == "transient"
    assert result.reason == reason
    assert result.is_transient
    assert result.code is None


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (None, "transient", "no_response"),
        (500, "transient", "http_status"),
        (502, "transient", "http_status"),
        (503, "transient", "http_status"),
        (504, "transient", "http_status"),
        (408, "transient", "http_status"),
        (429, "throttle", "http_status"),
        (404, "permanent", "http_status"),
        (401, "permanent", "http_status"),
    ],
)
def test_status_without_meta_body(status, kind, reason):
    result = classify(status, None)
    assert result.kind == kind
    assert result.reason == reason


@pytest.mark.parametrize("body", [{"unexpected": True}, {"events_received": "3"}, {"events_received": True}])
def test_http_200_without_events_received_is_transient(body):
    result = classify(200, body, events_sent=3)
    assert result.kind == "transient"
    assert result.reason == "unexpected_response"


def test_success():
    body = {"events_received": 3, "messages": [], "fbtrace_id": "X"}
    assert classify(200, body, events_sent=3) is None
    assert classify(200, body) is None


@pytest.mark.parametrize("received", [0, 2, 4])
def test_partial_acceptance_is_permanent(received):
    result = classify(200, {"events_received": received, "fbtrace_id": "T"}, events_sent=3)
    assert result.kind == "permanent"
    assert result.reason == "partial_acceptance"
    assert result.fbtrace_id == "T"
    assert not result.retryable
    assert not result.pauses_destination


def test_error_envelope_wins_over_http_200():
    assert classify(200, meta_error(190)).kind == "auth"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, None),
        ({}, None),
        ({"X-App-Usage": json.dumps({"call_count": 10, "total_cputime": 5, "total_time": 3})}, None),
        ({"X-App-Usage": json.dumps({"call_count": 95, "total_cputime": 5, "total_time": 3})}, APP_USAGE_HIGH_WAIT),
        ({"x-app-usage": json.dumps({"call_count": 10, "total_cputime": 100, "total_time": 3})}, APP_USAGE_FULL_WAIT),
        ({"X-App-Usage": "not json"}, None),
        ({"X-App-Usage": json.dumps([1, 2])}, None),
        ({"X-App-Usage": json.dumps({"call_count": "lots"})}, None),
        (
            {
                "X-Business-Use-Case-Usage": json.dumps(
                    {
                        "1": [{"type": "ads_insights", "estimated_time_to_regain_access": 2}],
                        "2": [
                            {"type": "ads_management", "estimated_time_to_regain_access": 0},
                            {"type": "custom_audience", "estimated_time_to_regain_access": 15},
                        ],
                    }
                )
            },
            900.0,
        ),
        ({"X-Business-Use-Case-Usage": json.dumps({"1": [{"estimated_time_to_regain_access": 0}]})}, None),
        ({"X-Business-Use-Case-Usage": json.dumps({"1": "garbage"})}, None),
        ({"X-Business-Use-Case-Usage": "{"}, None),
        ({"Retry-After": "30"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, None),
        (
            {
                "X-Business-Use-Case-Usage": json.dumps({"1": [{"estimated_time_to_regain_access": 1}]}),
                "X-App-Usage": json.dumps({"call_count": 100}),
            },
            APP_USAGE_FULL_WAIT,
        ),
    ],
)
def test_parse_usage_headers(headers, expected):
    assert parse_usage_headers(headers) == expected


def test_parse_usage_headers_accepts_requests_case_insensitive_dict():
    headers = requests.structures.CaseInsensitiveDict(
        {"x-business-use-case-usage": json.dumps({"1": [{"estimated_time_to_regain_access": 3}]})}
    )
    assert parse_usage_headers(headers) == 180.0
