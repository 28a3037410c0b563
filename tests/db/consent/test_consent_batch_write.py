"""record_consent_many: the same ledger, projection and answers as record_consent called for each decision in
order, every value read back exactly; decisions it cannot take leave nothing behind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.consent.models import ConsentRecord, ConsentState
from hub.consent.services import (
    BatchNotApplicable,
    ConsentDecision,
    RecordedConsent,
    record_consent,
    record_consent_many,
    verify_projection,
)
from hub.encryption import FieldEncryptor
from hub.profiles.services import erase_profile, resolve_identity

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


@pytest.fixture
def encryptor(settings: Settings) -> FieldEncryptor:
    return FieldEncryptor(settings.encryption_keys)


def person(session: Session, encryptor: FieldEncryptor, settings: Settings, email: str) -> str:
    resolution = resolve_identity(
        session, encryptor, {"email": email}, region=None, source="test", settings=settings, now=T0
    )
    assert resolution.profile_id is not None
    return resolution.profile_id


def decisions(ann: str, bob: str, source: str) -> list[ConsentDecision]:
    tricky = {"tc_string": "CQ\u00e9\"'\\\n\u2028", "gpc": True, "inbox_id": 2**40, "body_sha256": None}
    return [
        ConsentDecision(ann, {"ad_user_data": "granted", "sale": "denied"}, T0, source, "e1", proof=tricky),
        ConsentDecision(bob, {"ad_user_data": "denied"}, T0 + timedelta(microseconds=7), source, "e2"),
        # ann again, later, out of order and repeating e1 for one purpose (skipped, as record_consent does)
        ConsentDecision(
            ann,
            {"ad_user_data": "denied"},
            T0 + timedelta(minutes=30),
            source,
            "e3",
            legal_basis="consent",
            regulation="gdpr",
            region="DE",
            notice_version='v"2',
            expires_at=T0 + timedelta(days=395, microseconds=123456),
            received_at=T0 + timedelta(seconds=1, microseconds=999999),
        ),
        ConsentDecision(ann, {"ad_user_data": "granted"}, T0 - timedelta(minutes=30), source, "e4"),
        ConsentDecision(ann, {"sale": "granted"}, T0, source, "e1"),
    ]


def call(session: Session, decision: ConsentDecision) -> list[RecordedConsent]:
    return record_consent(
        session,
        decision.profile_id,
        purposes=decision.purposes,
        **decision.details(),
        now=decision.received_at or NOW,
    )


def ledger(session: Session, source: str, names: dict[str, str]) -> list[tuple[Any, ...]]:
    session.expire_all()
    rows = session.scalars(select(ConsentRecord).where(ConsentRecord.source == source).order_by(ConsentRecord.id))
    return [
        (
            names[r.profile_id],
            r.purpose,
            r.status,
            r.collected_at,
            r.received_at,
            r.source_event_id,
            r.legal_basis,
            r.regulation,
            r.region,
            r.notice_version,
            r.expires_at,
            r.proof,
        )
        for r in rows
    ]


def projection(session: Session, names: dict[str, str]) -> list[tuple[Any, ...]]:
    rows = session.scalars(select(ConsentState).where(ConsentState.profile_id.in_(names)))
    return sorted((names[r.profile_id], r.purpose, r.status, r.collected_at, r.expires_at) for r in rows)


def test_a_batch_records_what_one_call_per_decision_records(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    one = {person(db_session, encryptor, settings, f"{n}@one.example"): n for n in ("ann", "bob")}
    many = {person(db_session, encryptor, settings, f"{n}@many.example"): n for n in ("ann", "bob")}
    ann1, bob1 = list(one)
    ann2, bob2 = list(many)

    answers_one = [call(db_session, decision) for decision in decisions(ann1, bob1, "api:one")]
    answers_many = record_consent_many(db_session, decisions(ann2, bob2, "api:many"), now=NOW)

    def shape(answers: list[list[RecordedConsent]], names: dict[str, str]) -> list[list[tuple[Any, ...]]]:
        return [[(names[r.profile_id], r.purpose, r.status, r.source_event_id) for r in rs] for rs in answers]

    assert shape(answers_many, many) == shape(answers_one, one)
    assert [len(rs) for rs in answers_many] == [2, 1, 1, 1, 0]  # the repeat of e1 records nothing
    assert ledger(db_session, "api:many", many) == ledger(db_session, "api:one", one)
    assert projection(db_session, many) == projection(db_session, one)
    # The values come back exactly as given (JSON text on PostgreSQL, bound parameters on SQLite).
    [first, *_] = ledger(db_session, "api:many", many)
    assert first[-1] == {"tc_string": "CQ\u00e9\"'\\\n\u2028", "gpc": True, "inbox_id": 2**40, "body_sha256": None}
    [later] = [row for row in ledger(db_session, "api:many", many) if row[5] == "e3"]
    assert later[4] == T0 + timedelta(seconds=1, microseconds=999999)
    assert later[10] == T0 + timedelta(days=395, microseconds=123456)
    # Returned records carry the stored ids.
    for rs in answers_many:
        for r in rs:
            assert db_session.get(ConsentRecord, r.id).purpose == r.purpose
    assert verify_projection(db_session) == []


@pytest.mark.parametrize("problem", ["unknown purpose", "erased", "unknown profile", "invalid input"])
def test_a_decision_it_cannot_take_writes_nothing(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, problem: str
) -> None:
    ann = person(db_session, encryptor, settings, "ann@example.com")
    bob = person(db_session, encryptor, settings, "bob@example.com")
    purposes = {"newsletter": "granted"} if problem == "unknown purpose" else {"sale": "denied"}
    if problem == "erased":
        erase_profile(db_session, bob, "request", now=T0)
    if problem == "unknown profile":
        bob = "p-no-such-profile"
    collected_at = T0.replace(tzinfo=None) if problem == "invalid input" else T0
    batch = [
        ConsentDecision(ann, {"ad_user_data": "granted"}, T0, "api", "e1"),
        ConsentDecision(bob, purposes, collected_at, "api", "e2"),
    ]
    with pytest.raises(BatchNotApplicable) as refused:
        record_consent_many(db_session, batch, now=NOW)
    assert refused.value.decisions == {1}  # the decision it cannot take, not its neighbour
    assert db_session.scalars(select(ConsentRecord)).all() == []
    assert db_session.scalars(select(ConsentState)).all() == []
