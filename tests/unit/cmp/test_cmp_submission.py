"""Shared adapter rules: status vocabulary, timestamps, signal merging."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.cmp.adapters import PayloadError, parse_payload
from hub.cmp.adapters.submission import Signals, apply_signals, normalize_status, parse_timestamp

# Policy-5 TC strings built from the TCF field table (created 2025-06-01, CMP 7):
TC_ALL = "CQSU_AAQSU_AAAHABBENB4FgALMAAEBAAAYgABqAAAAA"  # purposes 1, 3, 4, 7, 8
TC_MEASURE = "CQSU_AAQSU_AAAHABBENB4FgAIIAAEBAAAYgABqAAAAA"  # purposes 1, 7
GPP_SALE_OPTED_OUT = "DBABL~CVVaAAAAAABA"  # usnat v2: SaleOptOut 1, SharingOptOut 2, TargetedAdvertisingOptOut 2
GPP_NOTHING_OPTED_OUT = "DBABL~CVVqAAAAAABA"  # usnat v2: all three 2
ALL_OUT = {"sale": "denied", "sharing": "denied", "targeted_advertising": "denied"}
SALE_OUT = {"sale": "denied", "sharing": "granted", "targeted_advertising": "granted"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "granted"),
        (False, "denied"),
        (1, "granted"),
        (0, "denied"),
        ("granted", "granted"),
        ("GRANTED", "granted"),
        (" Denied ", "denied"),
        ("WITHDRAWN", "denied"),
        ("CONFIRMED", "granted"),
        ("ACTIVE", "granted"),
        ("ALWAYS_ACTIVE", "granted"),
        ("OPT_OUT", "denied"),
        ("opt-out", "denied"),
        ("HARD_OPT_OUT", "denied"),
        ("NOTGIVEN", "denied"),
        ("NO_CONSENT", "denied"),
        ("EXPIRED", "denied"),
        ("allowed", "granted"),
        ("rejected", "denied"),
        ("opted in", "granted"),
        (None, None),
        ("PENDING", None),
        ("NO_CHOICE", None),
        ("NONE", None),
    ],
)
def test_status_vocabulary(value, expected):
    assert normalize_status(value, "purposes.x") == expected


@pytest.mark.parametrize("value", ["maybe", "", 2, -1, 1.0, [], {}, "grantedd"])
def test_unknown_status_raises_with_path(value):
    with pytest.raises(PayloadError) as info:
        normalize_status(value, "purposes.ad_user_data")
    assert info.value.field == "purposes.ad_user_data"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-06-02T09:14:55Z", datetime(2025, 6, 2, 9, 14, 55, tzinfo=UTC)),
        ("2025-06-02T11:14:55+02:00", datetime(2025, 6, 2, 9, 14, 55, tzinfo=UTC)),
        ("2025-06-02T09:14:55.120+0000", datetime(2025, 6, 2, 9, 14, 55, 120000, tzinfo=UTC)),
        (1748855695, datetime(2025, 6, 2, 9, 14, 55, tzinfo=UTC)),  # seconds
        (1748855695120, datetime(2025, 6, 2, 9, 14, 55, 120000, tzinfo=UTC)),  # milliseconds
        ("1748855695", datetime(2025, 6, 2, 9, 14, 55, tzinfo=UTC)),  # OneTrust-style digit string
        (1748855695.5, datetime(2025, 6, 2, 9, 14, 55, 500000, tzinfo=UTC)),
        (99_999_999_999, datetime(5138, 11, 16, 9, 46, 39, tzinfo=UTC)),  # just below the ms threshold
    ],
)
def test_timestamps(value, expected):
    if expected.year > 2099:
        with pytest.raises(PayloadError, match="outside"):
            parse_timestamp(value, "collected_at")
        return
    parsed = parse_timestamp(value, "collected_at")
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "required"),
        ("2025-06-02T09:14:55", "no time zone"),
        ("2025-06-02", "no time zone"),
        ("yesterday", "not an ISO 8601"),
        (True, "boolean"),
        ([], "string or number"),
        (float("nan"), "finite"),
        (0, "outside"),
        (946684799, "outside"),
        ("9" * 16, "out of range"),
        (10**30, "out of range"),
    ],
)
def test_bad_timestamps(value, message):
    with pytest.raises(PayloadError, match=message) as info:
        parse_timestamp(value, "collected_at")
    assert info.value.field == "collected_at"


def test_tc_string_fills_only_unstated_purposes():
    merged = apply_signals({"ad_user_data": "denied"}, Signals(tc_string=TC_ALL), None)
    assert merged == {
        "ad_user_data": "denied",  # explicit choice beats the signal
        "ad_personalization": "granted",
        "ad_storage": "granted",
        "analytics_storage": "granted",
    }


def test_custom_tcf_map():
    merged = apply_signals({}, Signals(tc_string=TC_MEASURE), {"ad_user_data": [1, 7], "ad_personalization": [3]})
    assert merged == {"ad_user_data": "granted", "ad_personalization": "denied"}


@pytest.mark.parametrize(
    ("explicit", "signals", "expected"),
    [
        # restrictive signals always win for opt-out purposes …
        ({"sale": "granted"}, Signals(gpc=True), ALL_OUT),
        ({"sale": "granted"}, Signals(gpp_string=GPP_SALE_OPTED_OUT), SALE_OUT),
        ({"sale": "granted"}, Signals(usp_string="1YYN"), {"sale": "denied"}),
        # … but a "did not opt out" signal never overrides an explicit opt-out
        ({"sale": "denied"}, Signals(gpp_string=GPP_NOTHING_OPTED_OUT), SALE_OUT),
        ({"sharing": "denied"}, Signals(usp_string="1YNN"), {"sharing": "denied", "sale": "granted"}),
        ({}, Signals(gpc=False), {}),
        ({}, Signals(gpc=None), {}),
        # GPC and a GPP "no opt-out" together: the opt-out wins
        ({}, Signals(gpc=True, gpp_string=GPP_NOTHING_OPTED_OUT), ALL_OUT),
    ],
)  # fmt: skip
def test_opt_out_signals(explicit, signals, expected):
    assert apply_signals(explicit, signals, None) == expected


def test_gpp_tcf_section_is_used_when_no_tc_string():
    gpp = f"DBABM~{TC_MEASURE}"
    merged = apply_signals({}, Signals(gpp_string=gpp), None)
    assert merged["ad_user_data"] == "granted"
    assert merged["ad_personalization"] == "denied"


@pytest.mark.parametrize(
    ("signals", "field"),
    [
        (Signals(tc_string="CQSU_AAQSU_AAAHABBENB4FgALMAAEBAAAY"), "tc_string"),  # truncated
        (Signals(tc_string="garbage"), "tc_string"),
        (Signals(gpp_string="DBABL~CVVa"), "gpp_string"),
        (Signals(gpp_string="DBABL"), "gpp_string"),
        (Signals(usp_string="1XYZ"), "usp_string"),
        (Signals(gpp_string="DBABM~garbage"), "gpp_string (tcfeuv2 section)"),
    ],
)
def test_malformed_signals_reject_the_payload(signals, field):
    with pytest.raises(PayloadError) as info:
        apply_signals({}, signals, None)
    assert info.value.field == field


def test_unknown_adapter_and_non_object_body():
    with pytest.raises(ValueError, match="unknown CMP adapter"):
        parse_payload("onetrust", {}, purpose_map={}, body_sha256="ab")
    with pytest.raises(PayloadError, match="JSON object"):
        parse_payload("generic", [], purpose_map={}, body_sha256="ab")  # type: ignore[arg-type]
