import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from hub.delivery.payload import (
    ACTION_SOURCES,
    EMPTY_STRING_SHA256,
    FUTURE_CLOCK_SKEW_TOLERANCE,
    MAX_EVENT_AGE,
    SEND_SAFETY_MARGIN,
    CapiEventInput,
    PayloadRejected,
    baseline_insufficient,
    build_capi_event,
    build_request_body,
)

NOW = datetime(2026, 11, 2, 12, 0, 0, tzinfo=UTC)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


EM = sha("john_smith@gmail.com")
PH = sha("16505551212")
XID = sha("customer-42")
UA = "Mozilla/5.0 (X11; Linux x86_64)"


def make(**changes) -> CapiEventInput:
    base = CapiEventInput(
        event_id="order-1001",
        event_name="Purchase",
        occurred_at=NOW - timedelta(minutes=3),
        action_source="website",
        event_source_url="https://shop.example.com/checkout/done?x=1",
        custom_data={"value": 49.9, "currency": "EUR", "content_ids": ["sku-1"]},
        hashed={"em": EM, "external_id": XID},
        plain={"client_ip_address": "2001:db8::1", "client_user_agent": UA, "fbp": "fb.1.1700000000000.123"},
        allowed_identifiers=None,
        ldu=None,
    )
    return replace(base, **changes)


def rejected(ev: CapiEventInput, now: datetime = NOW) -> PayloadRejected:
    with pytest.raises(PayloadRejected) as info:
        build_capi_event(ev, now)
    return info.value


def test_full_website_event_matches_meta_shape():
    out = build_capi_event(make(), NOW)
    assert out == {
        "event_name": "Purchase",
        "event_time": int((NOW - timedelta(minutes=3)).timestamp()),
        "event_id": "order-1001",
        "action_source": "website",
        "user_data": {
            "em": EM,
            "external_id": XID,
            "client_ip_address": "2001:db8::1",
            "client_user_agent": UA,
            "fbp": "fb.1.1700000000000.123",
        },
        "event_source_url": "https://shop.example.com/checkout/done?x=1",
        "custom_data": {"value": 49.9, "currency": "EUR", "content_ids": ["sku-1"]},
        "data_processing_options": [],
    }
    json.dumps(out)  # wire-ready


def test_event_time_is_integer_seconds_floored():
    occurred = NOW - timedelta(seconds=10, microseconds=999_999)
    out = build_capi_event(make(occurred_at=occurred), NOW)
    assert type(out["event_time"]) is int
    assert out["event_time"] == int(NOW.timestamp()) - 11
    assert len(str(out["event_time"])) == 10  # seconds, not milliseconds


def test_non_utc_aware_time_is_converted():
    paris = timezone(timedelta(hours=1))
    occurred = datetime(2026, 11, 2, 12, 30, tzinfo=paris)  # 11:30 UTC
    out = build_capi_event(make(occurred_at=occurred), NOW)
    assert out["event_time"] == int(datetime(2026, 11, 2, 11, 30, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("ahead", "expected"),
    [
        (timedelta(seconds=1), "clamped"),
        (timedelta(seconds=299), "clamped"),
        (FUTURE_CLOCK_SKEW_TOLERANCE, "clamped"),
        (FUTURE_CLOCK_SKEW_TOLERANCE + timedelta(seconds=1), "future_event_time"),
        (timedelta(days=1), "future_event_time"),
    ],
)
def test_future_times_are_clamped_within_tolerance_else_rejected(ahead, expected):
    ev = make(occurred_at=NOW + ahead)
    if expected == "clamped":
        assert build_capi_event(ev, NOW)["event_time"] == int(NOW.timestamp())
    else:
        assert rejected(ev).code == expected


def test_clamped_time_never_exceeds_now_with_fractional_now():
    now = NOW + timedelta(microseconds=900_000)
    out = build_capi_event(make(occurred_at=now + timedelta(seconds=30)), now)
    assert out["event_time"] <= now.timestamp()


@pytest.mark.parametrize(
    ("age", "ok"),
    [
        (timedelta(0), True),
        (timedelta(days=6, hours=23), True),
        (MAX_EVENT_AGE - SEND_SAFETY_MARGIN, True),
        (MAX_EVENT_AGE - SEND_SAFETY_MARGIN + timedelta(seconds=1), False),
        (MAX_EVENT_AGE, False),
        (timedelta(days=30), False),
    ],
)
def test_seven_day_window(age, ok):
    ev = make(occurred_at=NOW - age)
    if ok:
        build_capi_event(ev, NOW)
    else:
        err = rejected(ev)
        assert err.code == "too_old"
        assert err.field == "event_time"


def test_naive_times():
    naive = datetime(2026, 11, 2, 11, 0)
    assert rejected(make(occurred_at=naive)).code == "bad_event_time"
    with pytest.raises(ValueError, match="timezone-aware"):
        build_capi_event(make(), naive)


@pytest.mark.parametrize("source", ACTION_SOURCES)
def test_every_meta_action_source_is_accepted(source):
    assert build_capi_event(make(action_source=source), NOW)["action_source"] == source


@pytest.mark.parametrize("source", ["Website", "web", "", "offline", None])
def test_unknown_action_source_is_rejected(source):
    assert rejected(make(action_source=source)).code == "bad_action_source"


@pytest.mark.parametrize(
    ("name", "code"), [("", "bad_event_name"), ("   ", "bad_event_name"), (None, "bad_event_name")]
)
def test_event_name_required(name, code):
    assert rejected(make(event_name=name)).code == code


@pytest.mark.parametrize("event_id", ["", "  ", None])
def test_event_id_required(event_id):
    assert rejected(make(event_id=event_id)).code == "bad_event_id"


def test_custom_event_name_kept_verbatim_case_sensitive():
    out = build_capi_event(make(event_name="addToWishlist_v2", custom_data={}), NOW)
    assert out["event_name"] == "addToWishlist_v2"
    assert "custom_data" not in out


@pytest.mark.parametrize(
    ("url", "code"),
    [
        (None, "website_without_url"),
        ("", "website_without_url"),
        ("/checkout", "bad_event_source_url"),
        ("shop.example.com/checkout", "bad_event_source_url"),
        ("ftp://shop.example.com/", "bad_event_source_url"),
        ("https://", "bad_event_source_url"),
        ("https://shop.example.com/a b", "bad_event_source_url"),
        ("javascript:alert(1)", "bad_event_source_url"),
        (42, "bad_event_source_url"),
    ],
)
def test_website_needs_absolute_http_url(url, code):
    assert rejected(make(event_source_url=url)).code == code


@pytest.mark.parametrize(
    "url", ["http://localhost:8080", "HTTPS://Shop.Example.com/x?y=1#z", "https://xn--bcher-kva.example/"]
)
def test_valid_urls(url):
    assert build_capi_event(make(event_source_url=url), NOW)["event_source_url"] == url


def test_non_website_event_needs_no_url_or_user_agent():
    ev = make(action_source="physical_store", event_source_url=None, plain={})
    out = build_capi_event(ev, NOW)
    assert "event_source_url" not in out
    assert "client_user_agent" not in out["user_data"]


def test_bad_url_is_rejected_for_non_website_too():
    assert rejected(make(action_source="email", event_source_url="not a url")).code == "bad_event_source_url"


@pytest.mark.parametrize(
    ("plain", "allowed"),
    [
        ({"client_ip_address": "1.2.3.4"}, None),
        ({"client_ip_address": "1.2.3.4", "client_user_agent": ""}, None),
        ({"client_ip_address": "1.2.3.4", "client_user_agent": UA}, ["em", "client_ip_address"]),
    ],
)
def test_website_needs_user_agent_after_filtering(plain, allowed):
    err = rejected(make(plain=plain, allowed_identifiers=allowed))
    assert err.code == "website_without_user_agent"
    assert err.field == "user_data.client_user_agent"


def test_allowed_identifiers_filter_user_data():
    ev = make(
        hashed={"em": EM, "ph": PH, "fn": sha("john")},
        allowed_identifiers=["em", "client_user_agent", "client_ip_address", "zp"],
    )
    assert set(build_capi_event(ev, NOW)["user_data"]) == {"em", "client_user_agent", "client_ip_address"}


def test_allowed_identifiers_none_allows_all_and_empty_allows_nothing():
    assert "ph" in build_capi_event(make(hashed={"em": EM, "ph": PH}), NOW)["user_data"]
    err = rejected(make(action_source="email", event_source_url=None, allowed_identifiers=[]))
    assert err.code == "no_user_data"


def test_no_identifiers_at_all():
    ev = make(action_source="system_generated", event_source_url=None, hashed={}, plain={})
    assert rejected(ev).code == "no_user_data"


@pytest.mark.parametrize(
    ("hashed", "plain", "insufficient"),
    [
        (
            {"ct": sha("paris"), "country": sha("fr"), "st": sha("idf"), "zp": sha("75001")},
            {"client_user_agent": UA},
            True,
        ),
        ({"db": sha("19900101")}, {"client_user_agent": UA}, True),
        ({"fn": sha("john"), "ge": sha("m")}, {}, True),
        ({"ln": sha("smith"), "ge": sha("m")}, {}, True),
        ({"ge": sha("f")}, {}, True),
        ({"fn": sha("john"), "ln": sha("smith")}, {}, False),
        ({"fn": sha("john"), "ge": sha("m"), "zp": sha("75001")}, {}, False),
        ({"db": sha("19900101")}, {"client_user_agent": UA, "client_ip_address": "1.2.3.4"}, False),
        ({}, {"fbp": "fb.1.1.1"}, False),
        ({"external_id": XID}, {}, False),
    ],
)
def test_baseline_matching_rule(hashed, plain, insufficient):
    ev = make(action_source="other", event_source_url=None, hashed=hashed, plain=plain)
    if insufficient:
        err = rejected(ev)
        assert err.code == "insufficient_customer_information"
        assert err.field == "user_data"
    else:
        build_capi_event(ev, NOW)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (set(), True),
        ({"ct", "country", "st", "zp", "ge", "client_user_agent"}, True),
        ({"ct", "country", "st", "zp", "ge", "client_user_agent", "db"}, False),
        ({"db", "client_user_agent"}, True),
        ({"db", "ge"}, False),
        ({"fn", "ge"}, True),
        ({"ln", "ge"}, True),
        ({"fn", "ln", "ge"}, False),
        ({"em"}, False),
        ({"client_ip_address"}, False),
        ({"client_user_agent"}, True),
    ],
)
def test_baseline_insufficient(keys, expected):
    assert baseline_insufficient(keys) is expected


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("john_smith@gmail.com", "user_data.em"),
        (EM.upper(), "user_data.em"),
        (EM[:63], "user_data.em"),
        (EM + "0", "user_data.em"),
        (hashlib.md5(b"x").hexdigest(), "user_data.em"),  # noqa: S324 - MD5 must be refused, checklist 13
        ("", "user_data.em"),
        ([EM, "raw@example.com"], "user_data.em[1]"),
        ([EM, None], "user_data.em[1]"),
        ([EM, 5], "user_data.em[1]"),
        (5, "user_data.em"),
        ({"a": EM}, "user_data.em"),
        (EM.encode(), "user_data.em[0]"),
    ],
)
def test_hashed_values_must_be_lowercase_sha256(value, field):
    err = rejected(make(hashed={"em": value}))
    assert err.code == "not_hashed"
    assert err.field == field
    assert "raw@example.com" not in err.message
    assert "john_smith" not in err.message


def test_multi_values_deduplicated_in_order_and_shape_kept():
    a, b = sha("a@x.io"), sha("b@x.io")
    out = build_capi_event(make(hashed={"em": [b, a, b], "ph": PH}), NOW)
    assert out["user_data"]["em"] == [b, a]
    assert out["user_data"]["ph"] == PH


def test_empty_string_hash_and_empty_lists_are_dropped():
    ev = make(hashed={"em": EMPTY_STRING_SHA256, "ph": [], "fn": [EMPTY_STRING_SHA256, PH], "external_id": XID})
    user_data = build_capi_event(ev, NOW)["user_data"]
    assert "em" not in user_data
    assert "ph" not in user_data
    assert user_data["fn"] == [PH]


def test_plain_values_are_sent_verbatim():
    fbc = "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890.AQICAQMC"
    ev = make(plain={"client_user_agent": UA, "fbc": fbc, "client_ip_address": "203.0.113.9"})
    user_data = build_capi_event(ev, NOW)["user_data"]
    assert user_data["fbc"] == fbc  # fbclid case preserved (checklist 19)
    assert user_data["client_ip_address"] == "203.0.113.9"


@pytest.mark.parametrize(
    ("hashed", "plain", "field"),
    [
        ({"email": EM}, {}, "user_data.email"),
        ({}, {"ip": "1.2.3.4"}, "user_data.ip"),
        ({"fbp": EM}, {}, "user_data.fbp"),
    ],
)
def test_unknown_identifier_keys_are_rejected(hashed, plain, field):
    err = rejected(make(hashed={"em": EM, **hashed}, plain={"client_user_agent": UA, **plain}))
    assert err.code == "unknown_identifier"
    assert err.field == field


@pytest.mark.parametrize(
    ("ldu", "expected"),
    [
        (None, {"data_processing_options": []}),
        (([], 0, 0), {"data_processing_options": []}),
        (
            (["LDU"], 0, 0),
            {
                "data_processing_options": ["LDU"],
                "data_processing_options_country": 0,
                "data_processing_options_state": 0,
            },
        ),
        (
            (["LDU"], 1, 1000),
            {
                "data_processing_options": ["LDU"],
                "data_processing_options_country": 1,
                "data_processing_options_state": 1000,
            },
        ),
        (
            (("LDU",), 1, 1013),
            {
                "data_processing_options": ["LDU"],
                "data_processing_options_country": 1,
                "data_processing_options_state": 1013,
            },
        ),
    ],
)
def test_data_processing_options_always_present(ldu, expected):
    out = build_capi_event(make(ldu=ldu), NOW)
    got = {k: v for k, v in out.items() if k.startswith("data_processing_options")}
    assert got == expected


@pytest.mark.parametrize(
    "ldu",
    [
        (["LDU", "LDU"], 1, 1000),
        (["ldu"], 1, 1000),
        (["LDU", "OTHER"], 1, 1000),
        (["LDU"], 2, 1000),
        (["LDU"], True, 1000),
        (["LDU"], 1, 999),
        (["LDU"], 1, 1014),
        (["LDU"], 1, None),
        (["LDU"], None, 0),
    ],
)
def test_bad_ldu_is_rejected(ldu):
    assert rejected(make(ldu=ldu)).code == "bad_ldu"


@pytest.mark.parametrize(
    ("name", "custom", "code"),
    [
        ("Purchase", {}, "purchase_without_value"),
        ("Purchase", {"value": 10}, "purchase_without_value"),
        ("Purchase", {"currency": "USD"}, "purchase_without_value"),
        ("Lead", {"value": "10.00", "currency": "USD"}, "bad_value"),
        ("Lead", {"value": True, "currency": "USD"}, "bad_value"),
        ("Lead", {"value": float("nan"), "currency": "USD"}, "bad_value"),
        ("Lead", {"value": 3}, "value_without_currency"),
        ("Lead", {"value": 3, "currency": "XYZ"}, "bad_currency"),
        ("Lead", {"value": 3, "currency": "US"}, "bad_currency"),
        ("Lead", {"currency": 840}, "bad_currency"),
    ],
)
def test_value_and_currency(name, custom, code):
    assert rejected(make(event_name=name, custom_data=custom)).code == code


@pytest.mark.parametrize("currency", ["USD", "eur", "JPY"])
def test_currency_accepted_and_passed_through(currency):
    out = build_capi_event(make(custom_data={"value": 0, "currency": currency}), NOW)
    assert out["custom_data"]["currency"] == currency


def test_custom_data_passed_through_and_copied():
    custom = {"value": 1, "currency": "USD", "contents": [{"id": "a", "quantity": 2}], "my_key": "x"}
    out = build_capi_event(make(custom_data=custom), NOW)
    assert out["custom_data"] == custom
    assert out["custom_data"] is not custom


def test_opt_out_and_referrer():
    out = build_capi_event(make(opt_out=True, referrer_url="https://google.com/"), NOW)
    assert out["opt_out"] is True
    assert out["referrer_url"] == "https://google.com/"
    plain = build_capi_event(make(), NOW)
    assert "opt_out" not in plain
    assert "referrer_url" not in plain


def test_event_id_is_stable_across_builds():
    ev = make()
    first = build_capi_event(ev, NOW)
    later = build_capi_event(ev, NOW + timedelta(hours=5))
    assert first == later


def test_request_body_shape():
    events = [build_capi_event(make(event_id=f"e{i}"), NOW) for i in range(3)]
    assert build_request_body(events) == {"data": events}
    body = build_request_body(events, test_event_code="TEST123", partner_agent="hub-1.0")
    assert body == {"data": events, "test_event_code": "TEST123", "partner_agent": "hub-1.0"}


def test_request_body_limits():
    event = build_capi_event(make(), NOW)
    assert len(build_request_body([event] * 1000)["data"]) == 1000
    with pytest.raises(PayloadRejected) as too_many:
        build_request_body([event] * 1001)
    assert too_many.value.code == "batch_too_large"
    with pytest.raises(PayloadRejected) as empty:
        build_request_body([])
    assert empty.value.code == "empty_batch"


@pytest.mark.parametrize("agent", ["a" * 23, "12", "x1", "", "1-2-3"])
def test_partner_agent_rules(agent):
    with pytest.raises(PayloadRejected) as info:
        build_request_body([{"x": 1}], partner_agent=agent)
    assert info.value.code == "bad_partner_agent"


@pytest.mark.parametrize("agent", ["ab", "a" * 22, "hub_v1.2"])
def test_partner_agent_accepted(agent):
    assert build_request_body([{"x": 1}], partner_agent=agent)["partner_agent"] == agent


def test_empty_test_event_code_refused():
    with pytest.raises(PayloadRejected) as info:
        build_request_body([{"x": 1}], test_event_code="")
    assert info.value.code == "bad_test_event_code"
