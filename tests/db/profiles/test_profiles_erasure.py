"""Erasure of a whole cluster, the suppression list, and what is kept as pseudonymised evidence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.consent.models import ConsentRecord
from hub.encryption import FieldEncryptor
from hub.events.models import Event
from hub.profiles.models import Identity, Profile, ProfileMerge, SuppressedIdentifier
from hub.profiles.normalize import sha256_hex
from hub.profiles.services import attach_identity, erase_profile, resolve_identity

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


@pytest.fixture
def encryptor(settings: Settings) -> FieldEncryptor:
    return FieldEncryptor(settings.encryption_keys)


def _identify(session: Session, encryptor: FieldEncryptor, settings: Settings, user: dict[str, object]):
    return resolve_identity(session, encryptor, user, region=None, source="test", settings=settings, now=T0)


def _event(session: Session, profile_id: str, event_id: str, status: str) -> Event:
    event = Event(
        event_id=event_id,
        source_event="order_completed",
        profile_id=profile_id,
        occurred_at=T0,
        received_at=T0,
        status=status,
        user_data_encrypted="token-of-user-data",
        properties={"total": 1},
    )
    session.add(event)
    session.flush()
    return event


@pytest.fixture
def merged_person(db_session: Session, encryptor: FieldEncryptor, settings: Settings) -> tuple[str, str]:
    """Ann in two profiles merged by her phone, with events and a consent record on each."""
    ann = _identify(db_session, encryptor, settings, {"email": "ann@shop.example", "first_name": "Ann"})
    other = _identify(db_session, encryptor, settings, {"phone": "+4791234567", "fbp": "fb.1.1764300000000.42"})
    merged = _identify(db_session, encryptor, settings, {"email": "ann@shop.example", "phone": "+4791234567"})
    root = merged.profile_id or ""
    (loser,) = merged.merged
    assert {root, loser} == {ann.profile_id, other.profile_id}
    for n, status in enumerate(["pending", "retrying", "sent", "blocked", "dead"]):
        _event(db_session, root if n % 2 else loser, f"evt-{n}", status)
    db_session.add(
        ConsentRecord(
            profile_id=loser,
            purpose="ad_user_data",
            status="granted",
            collected_at=T0,
            received_at=T0,
            source="api",
            source_event_id="c-1",
            proof={"payload_sha256": "ab" * 32},
        )
    )
    db_session.flush()
    return root, loser


def test_erasure_removes_identities_traits_pending_events_and_keeps_tombstones(
    db_session: Session, merged_person: tuple[str, str]
) -> None:
    root, loser = merged_person
    summary = erase_profile(db_session, loser, "data subject request #12", now=T0 + timedelta(days=1))

    assert summary.profile_id == root
    assert set(summary.profiles) == {root, loser}
    assert summary.identities_removed == 3
    assert summary.identifiers_suppressed == 3
    assert summary.events_deleted == 2
    assert summary.events_scrubbed == 3
    assert summary.consent_records_kept == 1
    assert summary.merges_redacted == 1

    assert db_session.scalar(select(func.count()).select_from(Identity)) == 0
    suppressed = {(s.kind, s.value_hash, s.reason) for s in db_session.scalars(select(SuppressedIdentifier))}
    assert suppressed == {
        ("email", sha256_hex("ann@shop.example"), "data subject request #12"),
        ("phone", sha256_hex("4791234567"), "data subject request #12"),
        ("fbp", sha256_hex("fb.1.1764300000000.42"), "data subject request #12"),
    }
    for pid in (root, loser):
        profile = db_session.get(Profile, pid)
        assert profile is not None
        assert profile.erased_at == T0 + timedelta(days=1)
        assert profile.traits_encrypted is None
        assert profile.region is None
    remaining = db_session.scalars(select(Event).order_by(Event.event_id)).all()
    assert [(e.event_id, e.status) for e in remaining] == [("evt-2", "sent"), ("evt-3", "blocked"), ("evt-4", "dead")]
    assert all(e.user_data_encrypted is None and e.context_purged_at is not None for e in remaining)
    merge = db_session.scalars(select(ProfileMerge)).one()
    assert merge.details["erased"] is True
    assert not [k for k in merge.details if k.endswith("_encrypted")]
    assert merge.details["moved_identity_ids"]  # ids only: no personal data
    assert db_session.scalar(select(func.count()).select_from(ConsentRecord)) == 1


def test_suppressed_identifiers_never_recreate_or_attach(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, merged_person: tuple[str, str]
) -> None:
    root, _ = merged_person
    erase_profile(db_session, root, "request", now=T0)
    profiles_before = db_session.scalar(select(func.count()).select_from(Profile))

    for user in (
        {"email": "ANN@shop.example"},
        {"email": sha256_hex("ann@shop.example")},
        {"phone": "+47 912 34 567", "email": "new-address@shop.example"},
        {"fbp": "fb.1.1764300000000.42"},
    ):
        result = _identify(db_session, encryptor, settings, user)
        assert (result.suppressed, result.profile_id, result.created) == (True, None, False), user
        assert "erased person" in result.notes[-1]
    assert db_session.scalar(select(func.count()).select_from(Profile)) == profiles_before
    assert db_session.scalar(select(func.count()).select_from(Identity)) == 0

    bob = _identify(db_session, encryptor, settings, {"email": "bob@shop.example"})
    cmp = attach_identity(
        db_session, encryptor, bob.profile_id or "", "fbp", sha256_hex("fb.1.1764300000000.42"), None, now=T0
    )
    assert cmp.status == "suppressed"


def test_erasing_twice_is_harmless(db_session: Session, merged_person: tuple[str, str]) -> None:
    root, _ = merged_person
    erase_profile(db_session, root, "first", now=T0)
    again = erase_profile(db_session, root, "second", now=T0 + timedelta(hours=1))
    assert (again.identities_removed, again.identifiers_suppressed, again.events_deleted) == (0, 0, 0)
    profile = db_session.get(Profile, root)
    assert profile is not None
    assert profile.erased_at == T0


def test_erasure_leaves_other_people_alone(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, merged_person: tuple[str, str]
) -> None:
    bob = _identify(db_session, encryptor, settings, {"email": "bob@shop.example", "first_name": "Bob"})
    _event(db_session, bob.profile_id or "", "bob-1", "pending")
    erase_profile(db_session, merged_person[0], "request", now=T0)
    bob_profile = db_session.get(Profile, bob.profile_id)
    assert bob_profile is not None
    assert bob_profile.erased_at is None
    assert bob_profile.traits_encrypted
    assert db_session.scalar(select(func.count()).select_from(Identity)) == 1
    assert db_session.scalars(select(Event.status).where(Event.event_id == "bob-1")).one() == "pending"
