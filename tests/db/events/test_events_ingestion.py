"""ingest_events on the database: the concurrent-duplicate fallback, suppression, and nothing lost on a race."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.encryption import FieldEncryptor
from hub.events import services
from hub.events.models import Event
from hub.events.services import RequestFacts, ingest_events
from hub.profiles.models import Profile, SuppressedIdentifier
from hub.profiles.normalize import sha256_hex

ENCRYPTOR = FieldEncryptor([Fernet.generate_key().decode()])
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def ev(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "event": "order_completed", "occurred_at": "2026-11-28T11:59:00Z", **fields}


def ingest(session: Session, settings: Settings, events: list[Any], **kwargs: Any) -> list[Any]:
    return ingest_events(session, ENCRYPTOR, events, settings=settings, now=NOW, **kwargs)


def test_event_id_taken_concurrently_is_a_duplicate_and_the_rest_is_kept(
    db_session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(db_session, settings, [ev("race-1", user={"email": "first@shop.example"})])
    # Simulate the race: our look-up for existing ids ran before the other request's insert.
    monkeypatch.setattr(services, "_existing", lambda session, ids: {})
    results = ingest(
        db_session,
        settings,
        [ev("a-1", user={"email": "ann@shop.example"}), ev("race-1"), ev("b-1", user={"email": "bob@shop.example"})],
    )
    assert [r.status for r in results] == ["accepted", "duplicate", "accepted"]
    assert results[1].profile_id is not None  # the stored copy's profile
    ids = set(db_session.scalars(select(Event.event_id)))
    assert ids == {"race-1", "a-1", "b-1"}
    # The rolled-back fast path left no orphan profiles behind: ann, bob and first only.
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 3


def test_suppressed_person_is_stored_without_user_data(db_session: Session, settings: Settings) -> None:
    db_session.add(
        SuppressedIdentifier(kind="email", value_hash=sha256_hex("gone@shop.example"), reason="erased", created_at=NOW)
    )
    db_session.flush()
    [result] = ingest(
        db_session, settings, [ev("s-1", user={"email": "gone@shop.example", "ip_address": "203.0.113.9"})]
    )
    assert result.status == "accepted"
    assert result.profile_id is None
    event = db_session.scalar(select(Event).where(Event.event_id == "s-1"))
    assert event.suppressed is True
    assert event.user_data_encrypted is None
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 0


def test_grace_period_and_request_facts(db_session: Session, settings: Settings) -> None:
    grace = settings.with_overrides(consent_grace_seconds=300)
    ingest(
        db_session,
        grace,
        [ev("g-1", user={"fbp": "fb.1.1764300000000.5"})],
        request=RequestFacts(browser=True, remote_addr="2001:db8::1", user_agent="UA/1", sec_gpc=True),
    )
    event = db_session.scalar(select(Event).where(Event.event_id == "g-1"))
    assert event.next_attempt_at == NOW + timedelta(seconds=300)
    assert event.gpc is True
    assert ENCRYPTOR.decrypt_json(event.user_data_encrypted)["browser"] == {
        "fbp": "fb.1.1764300000000.5",
        "client_ip_address": "2001:db8::1",
        "client_user_agent": "UA/1",
    }


def test_more_than_1000_is_refused(db_session: Session, settings: Settings) -> None:
    with pytest.raises(ValueError, match="1000"):
        ingest(db_session, settings, [ev(str(i)) for i in range(1001)])


@pytest.mark.parametrize("user", [None, {"email": "new@shop.example"}], ids=["no-resolution-writes", "new-person"])
def test_stored_row_keeps_every_value_as_sent(db_session: Session, settings: Settings, user: Any) -> None:
    properties = {
        "name": "Crème brûlée 🍮",
        "quote": 'say "hi" \\ {braces}, [brackets]',
        "total": 12.5,
        "big": 12345678901234567890,
        "flags": [True, False, None],
        "nested": {"ünïcode": "ßø", "empty": {}},
    }
    fields: dict[str, Any] = {
        "event": "Bestellung abgeschlossen ✓",
        "occurred_at": "2026-11-28T12:59:58.123456+01:00",
        "action_source": "website",
        "source_url": 'https://shop.example/ç/p?q=a%20b&x="1"',
        "properties": properties,
        "context": {"region": "DE", "gpc": False},
    }
    if user is not None:
        fields["user"] = user
    ingest(db_session, settings, [ev("round-trip", **fields), ev("round-trip-2", properties=None)])
    db_session.expire_all()
    event = db_session.scalar(select(Event).where(Event.event_id == "round-trip"))
    assert event.source_event == "Bestellung abgeschlossen ✓"
    assert event.occurred_at == datetime(2026, 11, 28, 11, 59, 58, 123456, tzinfo=UTC)
    assert event.action_source == "website"
    assert event.source_url == 'https://shop.example/ç/p?q=a%20b&x="1"'
    assert event.properties == properties
    assert event.region == "DE"
    assert event.gpc is False
    assert event.suppressed is False
    assert (event.profile_id is not None) == (user is not None)
    other = db_session.scalar(select(Event).where(Event.event_id == "round-trip-2"))
    assert other.properties is None
    assert other.gpc is None
    assert other.user_data_encrypted is None
