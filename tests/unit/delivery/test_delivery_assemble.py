"""Payload assembly: the event's identifiers, enriched by the person's, filtered by the rule, LDU from the decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.delivery.assemble import (
    MAX_VALUES_PER_KEY,
    PersonIdentifiers,
    capi_input,
    ldu_from_decision,
    merge_identifiers,
)
from hub.delivery.payload import PayloadRejected, build_capi_event
from hub.mappings.apply import MappedEvent
from hub.profiles.normalize import sha256_hex

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
EM = sha256_hex("ann@example.com")
EM2 = sha256_hex("ann.work@example.com")
PH = sha256_hex("16505551212")
UA = "Mozilla/5.0 Test"
C, S = "data_processing_options_country", "data_processing_options_state"
BROWSER = {"client_ip_address": "203.0.113.7", "client_user_agent": UA, "fbp": "fb.1.1764300000000.123456789"}


def mapped(**fields: object) -> MappedEvent:
    values: dict = {
        "event_name": "Purchase",
        "action_source": "website",
        "custom_data": {"value": 10.0, "currency": "USD"},
        "mapping_id": 1,
        "mapping_version": 1,
    }
    values.update(fields)
    return MappedEvent(**values)


def build(hashed: dict, plain: dict, *, allowed: list[str] | None = None, decision: dict | None = None) -> dict:
    return build_capi_event(
        capi_input(
            event_id="ord-1",
            occurred_at=NOW - timedelta(minutes=5),
            source_url="https://shop.example/thanks",
            mapped=mapped(),
            hashed=hashed,
            plain=plain,
            allowed_identifiers=allowed,
            ldu=ldu_from_decision(decision),
        ),
        NOW,
    )


def test_event_values_first_then_cluster_identities_as_distinct_arrays() -> None:
    hashed, plain = merge_identifiers(
        {"hashes": {"em": EM}, "browser": BROWSER},
        PersonIdentifiers(identities=[("email", EM), ("email", EM2), ("phone", PH), ("fbp", sha256_hex("x"))]),
    )
    assert hashed == {"em": [EM, EM2], "ph": PH}
    assert plain == BROWSER


def test_traits_are_hashed_once_and_only_fill_missing_keys() -> None:
    own_fn = sha256_hex("annie")
    hashed, _ = merge_identifiers(
        {"hashes": {"fn": own_fn}, "browser": {}},
        PersonIdentifiers(traits={"fn": "ann", "ln": "lee", "country": "us", "unknown": "x", "ct": ""}),
    )
    assert hashed == {"fn": own_fn, "ln": sha256_hex("lee"), "country": sha256_hex("us")}


def test_arrays_are_capped() -> None:
    identities = [("email", sha256_hex(f"a{i}@example.com")) for i in range(9)]
    hashed, _ = merge_identifiers(None, PersonIdentifiers(identities=identities))
    assert len(hashed["em"]) == MAX_VALUES_PER_KEY


@pytest.mark.parametrize("user_data", [None, {}, {"hashes": None, "browser": None}])
def test_missing_user_data_gives_nothing(user_data: dict | None) -> None:
    assert merge_identifiers(user_data, None) == ({}, {})


def test_unknown_keys_and_non_strings_are_not_sent() -> None:
    hashed, plain = merge_identifiers(
        {"hashes": {"em": EM, "bogus": EM, "ph": None}, "browser": {"client_ip_address": 7, "madid": "x"}}, None
    )
    assert hashed == {"em": EM}
    assert plain == {}


def test_rule_allowed_identifiers_filter_the_payload() -> None:
    hashed, plain = merge_identifiers({"hashes": {"em": EM, "ph": PH}, "browser": BROWSER}, None)
    payload = build(hashed, plain, allowed=["em", "client_user_agent"])
    assert payload["user_data"] == {"em": EM, "client_user_agent": UA}


def test_rule_that_filters_away_the_user_agent_makes_a_website_event_unsendable() -> None:
    hashed, plain = merge_identifiers({"hashes": {"em": EM}, "browser": BROWSER}, None)
    with pytest.raises(PayloadRejected) as caught:
        build(hashed, plain, allowed=["em"])
    assert caught.value.code == "website_without_user_agent"


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (None, {"data_processing_options": []}),
        ({"ldu": None}, {"data_processing_options": []}),
        (
            {
                "ldu": {
                    "data_processing_options": [],
                    C: 0,
                    S: 0,
                }
            },
            {"data_processing_options": []},
        ),
        (
            {
                "ldu": {
                    "data_processing_options": ["LDU"],
                    C: 1,
                    S: 1000,
                }
            },
            {
                "data_processing_options": ["LDU"],
                C: 1,
                S: 1000,
            },
        ),
        (
            {
                "ldu": {
                    "data_processing_options": ["LDU"],
                    C: 0,
                    S: 0,
                }
            },
            {
                "data_processing_options": ["LDU"],
                C: 0,
                S: 0,
            },
        ),
    ],
)
def test_ldu_comes_from_the_decision(decision: dict | None, expected: dict) -> None:
    hashed, plain = merge_identifiers({"hashes": {"em": EM}, "browser": BROWSER}, None)
    payload = build(hashed, plain, decision=decision)
    assert {k: v for k, v in payload.items() if k.startswith("data_processing")} == expected


def test_event_id_and_mapping_fields_are_carried() -> None:
    hashed, plain = merge_identifiers({"hashes": {"em": EM}, "browser": BROWSER}, None)
    payload = build(hashed, plain)
    assert payload["event_id"] == "ord-1"
    assert payload["event_name"] == "Purchase"
    assert payload["event_time"] == int((NOW - timedelta(minutes=5)).timestamp())
    assert payload["custom_data"] == {"value": 10.0, "currency": "USD"}
    assert payload["event_source_url"] == "https://shop.example/thanks"


def test_only_weak_identifiers_are_refused_by_the_baseline_rule() -> None:
    hashed, plain = merge_identifiers(
        {"hashes": {"fn": sha256_hex("ann")}, "browser": {}}, PersonIdentifiers(traits={"ge": "f"})
    )
    with pytest.raises(PayloadRejected) as caught:
        build_capi_event(
            capi_input(
                event_id="x",
                occurred_at=NOW,
                source_url=None,
                mapped=mapped(action_source="physical_store"),
                hashed=hashed,
                plain=plain,
                allowed_identifiers=None,
                ldu=None,
            ),
            NOW,
        )
    assert caught.value.code == "insufficient_customer_information"
