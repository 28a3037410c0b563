"""The structure of one ingested event: every field's accepted forms and the sentence for each bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hub.events.schemas import parse_event, parse_occurred_at

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def event(**fields: Any) -> dict[str, Any]:
    return {"event": "order_completed", "occurred_at": "2026-11-28T10:00:00Z", **fields}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-28T10:00:00Z", datetime(2026, 11, 28, 10, 0, tzinfo=UTC)),
        ("2026-11-28T10:00:00z", datetime(2026, 11, 28, 10, 0, tzinfo=UTC)),
        ("2026-11-28T11:00:00+01:00", datetime(2026, 11, 28, 10, 0, tzinfo=UTC)),
        ("2026-11-28T05:00:00-0500", datetime(2026, 11, 28, 10, 0, tzinfo=UTC)),
        ("2026-11-28 10:00:00.250Z", datetime(2026, 11, 28, 10, 0, 0, 250000, tzinfo=UTC)),
        (1795860000, datetime.fromtimestamp(1795860000, UTC)),
        (1795860000.5, datetime.fromtimestamp(1795860000.5, UTC)),
        ("1795860000", datetime.fromtimestamp(1795860000, UTC)),
        # Up to five minutes ahead of the server is clock skew, accepted.
        ((NOW + timedelta(minutes=4)).isoformat(), NOW + timedelta(minutes=4)),
        # Old events are accepted; the dispatcher drops what Meta would refuse, with a reason.
        ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_occurred_at_accepted_forms(value: object, expected: datetime) -> None:
    assert parse_occurred_at(value, NOW) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-11-28T10:00:00", "UTC offset"),
        ("2026-11-28", "UTC offset"),
        ("yesterday", "UTC offset"),
        ("2026-13-28T10:00:00Z", "not a valid ISO 8601"),
        (1795860000000, "milliseconds"),
        ("1795860000000", "milliseconds"),
        (-5, "negative"),
        (5, "before the year 2000"),
        (True, "ISO 8601"),
        ([2026], "not array"),
        ({"t": 1}, "not object"),
        ((NOW + timedelta(minutes=6)).isoformat(), "in the future"),
        (int((NOW + timedelta(hours=2)).timestamp()), "in the future"),
    ],
)
def test_occurred_at_refused_with_a_reason(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_occurred_at(value, NOW)


def test_minimal_event_parses() -> None:
    parsed, errors = parse_event({"event": " order_completed ", "occurred_at": 1795860000}, NOW)
    assert errors == {}
    assert parsed is not None
    assert parsed.source_event == "order_completed"
    assert parsed.event_id is None
    assert parsed.user == {}
    assert parsed.gpc is None


def test_full_contract_event_parses() -> None:
    raw = event(
        event_id="ord-1001",
        action_source="website",
        source_url="https://shop.example/thanks?fbclid=AbC",
        user={"email": "Ann@Example.com"},
        properties={"total": 59.9, "currency": "USD"},
        context={"region": "US-CA", "gpc": False},
    )
    parsed, errors = parse_event(raw, NOW)
    assert errors == {}
    assert parsed is not None
    assert (parsed.event_id, parsed.action_source, parsed.region, parsed.gpc) == ("ord-1001", "website", "US-CA", False)
    assert parsed.source_url == "https://shop.example/thanks?fbclid=AbC"
    assert parsed.properties == {"total": 59.9, "currency": "USD"}


def test_integer_event_id_becomes_text() -> None:
    parsed, _ = parse_event(event(event_id=1001), NOW)
    assert parsed is not None
    assert parsed.event_id == "1001"


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"occurred_at": "2026-11-28T10:00:00Z"}, "event", "is required"),
        (event(event=""), "event", "non-empty"),
        (event(event="   "), "event", "non-empty"),
        (event(event=12), "event", "non-empty"),
        (event(event="x" * 256), "event", "255"),
        ({"event": "a"}, "occurred_at", "is required"),
        (event(occurred_at=None), "occurred_at", "is required"),
        (event(event_id=""), "event_id", "non-empty"),
        (event(event_id=True), "event_id", "not boolean"),
        (event(event_id=["a"]), "event_id", "not array"),
        (event(event_id="x" * 256), "event_id", "255"),
        (event(action_source="web"), "action_source", "Meta's values"),
        (event(action_source="Website"), "action_source", "Meta's values"),
        (event(source_url="/thanks"), "source_url", "absolute"),
        (event(source_url="ftp://shop.example/x"), "source_url", "absolute"),
        (event(source_url="https://"), "source_url", "absolute"),
        (event(source_url="https://shop.example/a b"), "source_url", "absolute"),
        (event(source_url=5), "source_url", "not number"),
        (event(source_url="https://e.example/" + "a" * 9000), "source_url", "8192"),
        (event(user="ann@example.com"), "user", "object"),
        (event(user=[]), "user", "object"),
        (event(properties=[1]), "properties", "object"),
        (event(properties="x"), "properties", "object"),
        (event(context="US"), "context", "object"),
        (event(context={"gpc": "yes"}), "context.gpc", "true or false"),
        (event(context={"gpc": 1}), "context.gpc", "true or false"),
        (event(context={"country": "US"}), "context.country", "unknown field"),
        (event(timestamp=5), "timestamp", "unknown field"),
    ],
)
def test_bad_fields_are_named(raw: dict[str, Any], field: str, fragment: str) -> None:
    parsed, errors = parse_event(raw, NOW)
    assert parsed is None
    assert field in errors, errors
    assert fragment in errors[field]


@pytest.mark.parametrize("raw", [None, "event", 5, ["a"], True])
def test_non_objects_are_refused_whole(raw: object) -> None:
    parsed, errors = parse_event(raw, NOW)
    assert parsed is None
    assert list(errors) == ["$"]
    assert "JSON object" in errors["$"]


def test_every_problem_is_reported_at_once() -> None:
    parsed, errors = parse_event({"event": "", "occurred_at": "soon", "action_source": "x", "foo": 1}, NOW)
    assert parsed is None
    assert set(errors) == {"event", "occurred_at", "action_source", "foo"}
