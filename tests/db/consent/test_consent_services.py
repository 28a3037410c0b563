"""Consent services on a migrated database: catalogue, recording, idempotency, projection, reads, merges."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.consent.ledger import load_ledger
from hub.consent.models import ConsentRecord, ConsentState, Purpose
from hub.consent.services import (
    ConsentInputError,
    PurposeError,
    SubjectErased,
    add_purpose,
    consent_at,
    current_consent,
    list_purposes,
    rebuild_consent_state,
    record_consent,
    records_for_event,
    remove_purpose,
    verify_projection,
    withdrawn_since,
)
from hub.encryption import FieldEncryptor
from hub.profiles.models import Profile
from hub.profiles.services import erase_profile, resolve_identity

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
BUILTINS = {
    "ad_user_data",
    "ad_personalization",
    "ad_storage",
    "analytics_storage",
    "sale",
    "sharing",
    "targeted_advertising",
}


@pytest.fixture
def encryptor(settings: Settings) -> FieldEncryptor:
    return FieldEncryptor(settings.encryption_keys)


def person(session: Session, encryptor: FieldEncryptor, settings: Settings, **user: str) -> str:
    resolution = resolve_identity(session, encryptor, user, region=None, source="test", settings=settings, now=T0)
    assert resolution.profile_id is not None
    return resolution.profile_id


def record(session: Session, profile_id: str, purposes: dict[str, str], minutes: float, **extra: Any) -> list:
    values: dict[str, Any] = {
        "collected_at": T0 + timedelta(minutes=minutes),
        "source": "api",
        "source_event_id": f"evt-{minutes}-{sorted(purposes.items())}",
        "now": T0 + timedelta(days=1),
    }
    values.update(extra)
    return record_consent(session, profile_id, purposes=purposes, **values)


def count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def ann(db_session: Session, encryptor: FieldEncryptor, settings: Settings) -> str:
    return person(db_session, encryptor, settings, email="ann@example.com")


# -- purpose catalogue ------------------------------------------------------------------------------------


def test_catalogue_lists_builtins_first(db_session: Session) -> None:
    add_purpose(db_session, "email_marketing", description="Newsletters", now=T0)
    names = [p.name for p in list_purposes(db_session)]
    assert set(names[:7]) == BUILTINS
    assert names[7:] == ["email_marketing"]


def test_add_custom_purpose_and_remove_it(db_session: Session) -> None:
    added = add_purpose(db_session, "sensitive:health", kind="opt_out_right", now=T0)
    assert (added.builtin, added.kind) == (False, "opt_out_right")
    remove_purpose(db_session, "sensitive:health")
    assert db_session.get(Purpose, "sensitive:health") is None


@pytest.mark.parametrize(
    ("name", "kind", "field"),
    [
        ("", "consent", "name"),
        ("Email", "consent", "name"),
        ("1st_party", "consent", "name"),
        ("a", "consent", "name"),
        ("has space", "consent", "name"),
        ("x" * 49, "consent", "name"),
        ("two:colons:here", "consent", "name"),
        ("ad_user_data", "consent", "name"),  # exists
        ("newsletter", "notice_only", "kind"),
    ],
)
def test_add_purpose_validation(db_session: Session, name: str, kind: str, field: str) -> None:
    with pytest.raises(PurposeError) as error:
        add_purpose(db_session, name, kind=kind, now=T0)
    assert field in error.value.fields


def test_builtin_and_used_purposes_stay(db_session: Session, ann: str) -> None:
    with pytest.raises(PurposeError, match="built-in"):
        remove_purpose(db_session, "ad_user_data")
    add_purpose(db_session, "email_marketing", now=T0)
    record(db_session, ann, {"email_marketing": "granted"}, 0)
    with pytest.raises(PurposeError, match="consent record"):
        remove_purpose(db_session, "email_marketing")
    with pytest.raises(PurposeError, match="no purpose"):
        remove_purpose(db_session, "nope")


# -- recording --------------------------------------------------------------------------------------------


def test_record_one_row_per_purpose_and_repeat_is_a_no_op(db_session: Session, ann: str) -> None:
    purposes = {"ad_user_data": "granted", "ad_personalization": "denied"}
    first = record(db_session, ann, purposes, 0, source_event_id="evt-1", proof={"request_sha256": "ab" * 32})
    assert sorted((r.purpose, r.status) for r in first) == [
        ("ad_personalization", "denied"),
        ("ad_user_data", "granted"),
    ]
    assert all(r.received_at == T0 + timedelta(days=1) for r in first)
    assert record(db_session, ann, purposes, 0, source_event_id="evt-1") == []
    assert count(db_session, ConsentRecord) == 2
    # Same event id from another source is another decision.
    assert len(record(db_session, ann, purposes, 0, source_event_id="evt-1", source="cmp:x")) == 2
    assert [r.id for r in records_for_event(db_session, ann, "api", "evt-1")] == sorted(r.id for r in first)
    assert verify_projection(db_session) == []


def test_repeat_after_merge_is_still_a_no_op(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    loser_side = person(db_session, encryptor, settings, phone="+4791234567")
    record(db_session, loser_side, {"ad_user_data": "granted"}, 0, source_event_id="evt-1")
    person(db_session, encryptor, settings, email="first@example.com")
    merged = person(db_session, encryptor, settings, email="first@example.com", phone="+4791234567")
    assert record(db_session, merged, {"ad_user_data": "granted"}, 0, source_event_id="evt-1") == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"purposes": {}}, "purposes"),
        ({"purposes": {"nope": "granted"}}, "purposes.nope"),
        ({"purposes": {"ad_user_data": "yes"}}, "purposes.ad_user_data"),
        ({"collected_at": datetime(2026, 11, 28, 10, 0)}, "collected_at"),
        ({"expires_at": T0 - timedelta(seconds=1)}, "expires_at"),
        ({"expires_at": T0}, "expires_at"),
        ({"source": ""}, "source"),
        ({"source_event_id": "x" * 256}, "source_event_id"),
        ({"region": "TOO-LONG-REGION"}, "region"),
        ({"proof": {"email": "ann@example.com"}}, "proof.email"),
        ({"proof": {"tc_string": {"nested": 1}}}, "proof.tc_string"),
    ],
)
def test_record_validation_stores_nothing(db_session: Session, ann: str, changes: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {
        "purposes": {"ad_user_data": "granted"},
        "collected_at": T0,
        "source": "api",
        "source_event_id": "evt",
        "now": T0,
    }
    values.update(changes)
    with pytest.raises(ConsentInputError) as error:
        record_consent(db_session, ann, **values)
    assert field in error.value.fields
    assert count(db_session, ConsentRecord) == 0


def test_erased_person_gets_no_consent(db_session: Session, ann: str) -> None:
    erase_profile(db_session, ann, "test", now=T0)
    with pytest.raises(SubjectErased):
        record(db_session, ann, {"ad_user_data": "granted"}, 1)
    assert count(db_session, ConsentRecord) == 0


# -- consent_at boundaries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (T0 - timedelta(microseconds=1), None),  # before the decision
        (T0, "granted"),  # in force from collected_at inclusive
        (T0 + timedelta(minutes=59), "granted"),
        (T0 + timedelta(hours=1), None),  # expiry is exclusive: lapsed at expires_at
        (T0 + timedelta(hours=2), None),  # an expired grant is no consent
        (T0 + timedelta(hours=3), "denied"),  # the later withdrawal (collected exactly at +3h)
        (T0 + timedelta(days=400), "denied"),
    ],
)
def test_consent_at_boundaries(db_session: Session, ann: str, when: datetime, expected: str | None) -> None:
    record(db_session, ann, {"ad_user_data": "granted"}, 0, expires_at=T0 + timedelta(hours=1))
    record(db_session, ann, {"ad_user_data": "denied"}, 180)
    fact = consent_at(db_session, ann, "ad_user_data", when)
    assert (fact.status if fact else None) == expected


def test_withdrawn_since_sees_a_later_denial(db_session: Session, ann: str) -> None:
    record(db_session, ann, {"ad_user_data": "granted"}, 0)
    record(db_session, ann, {"ad_user_data": "denied"}, 10)
    record(db_session, ann, {"ad_user_data": "granted"}, 20)
    denial = withdrawn_since(db_session, ann, "ad_user_data", T0, T0 + timedelta(minutes=30))
    assert denial is not None
    assert denial.collected_at == T0 + timedelta(minutes=10)
    assert withdrawn_since(db_session, ann, "ad_user_data", T0 + timedelta(minutes=10), T0 + timedelta(hours=1)) is None
    assert consent_at(db_session, ann, "ad_user_data", T0 + timedelta(minutes=25)).status == "granted"


def test_out_of_order_arrival_orders_by_collected_at(db_session: Session, ann: str) -> None:
    record(db_session, ann, {"ad_user_data": "denied"}, 10)  # arrives first, decided later
    record(db_session, ann, {"ad_user_data": "granted"}, 0)
    now = T0 + timedelta(hours=1)
    assert current_consent(db_session, ann, now)["ad_user_data"]["status"] == "denied"
    row = db_session.get(ConsentState, (ann, "ad_user_data"))
    assert (row.status, row.collected_at) == ("denied", T0 + timedelta(minutes=10))


def test_tie_at_same_instant_goes_to_denied(db_session: Session, ann: str) -> None:
    record(db_session, ann, {"ad_user_data": "granted"}, 0, source="cmp:a")
    record(db_session, ann, {"ad_user_data": "denied"}, 0, source="cmp:b")
    record(db_session, ann, {"ad_storage": "denied"}, 0, source="cmp:a")
    record(db_session, ann, {"ad_storage": "granted"}, 0, source="cmp:b")
    state = current_consent(db_session, ann, T0 + timedelta(minutes=1))
    assert state["ad_user_data"]["status"] == "denied"
    assert state["ad_storage"]["status"] == "denied"
    assert verify_projection(db_session) == []


def test_current_consent_shape_and_expiry(db_session: Session, ann: str) -> None:
    [granted] = record(db_session, ann, {"ad_user_data": "granted"}, 0, source="cmp:didomi")
    record(db_session, ann, {"analytics_storage": "granted"}, 0, expires_at=T0 + timedelta(minutes=5))
    state = current_consent(db_session, ann, T0 + timedelta(minutes=10))
    assert state == {
        "ad_user_data": {
            "status": "granted",
            "collected_at": T0,
            "expires_at": None,
            "record_id": granted.id,
            "source": "cmp:didomi",
        }
    }
    # The projection still holds the expired grant: readers apply expiry (the projection is time-independent).
    assert db_session.get(ConsentState, (ann, "analytics_storage")).status == "granted"


# -- projection --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_projection_equals_rebuild_after_random_records(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, seed: int
) -> None:
    rng = random.Random(seed)
    people = [person(db_session, encryptor, settings, email=f"p{seed}-{i}@example.com") for i in range(4)]
    purposes = sorted(BUILTINS)
    for step in range(60):
        chosen = rng.sample(purposes, rng.randint(1, 3))
        collected = T0 + timedelta(minutes=rng.choice([0, 1, 1, 2, 5, 8, 13]))  # many ties
        expires = collected + timedelta(minutes=rng.randint(1, 10)) if rng.random() < 0.3 else None
        record_consent(
            db_session,
            rng.choice(people),
            purposes={p: rng.choice(["granted", "denied"]) for p in chosen},
            collected_at=collected,
            source=rng.choice(["api", "cmp:a", "cmp:b"]),
            source_event_id=f"evt-{rng.randint(0, 40)}",  # repeats exercise idempotency
            expires_at=expires,
            now=T0 + timedelta(hours=1, seconds=step),
        )
    assert verify_projection(db_session) == []
    before = sorted(
        db_session.execute(
            select(ConsentState.profile_id, ConsentState.purpose, ConsentState.status, ConsentState.record_id)
        ).all()
    )
    rebuild_consent_state(db_session, now=T0 + timedelta(days=1))
    after = sorted(
        db_session.execute(
            select(ConsentState.profile_id, ConsentState.purpose, ConsentState.status, ConsentState.record_id)
        ).all()
    )
    assert before == after
    # The projection agrees with the pure ledger evaluation for every person and purpose.
    for pid in people:
        latest = load_ledger(db_session, pid).latest_by_purpose()
        rows = {
            r.purpose: r.record_id
            for r in db_session.scalars(select(ConsentState).where(ConsentState.profile_id == pid))
        }
        assert rows == {purpose: fact.id for purpose, fact in latest.items()}


def test_verify_reports_a_tampered_projection_and_rebuild_repairs_it(db_session: Session, ann: str) -> None:
    record(db_session, ann, {"ad_user_data": "granted"}, 0)
    record(db_session, ann, {"ad_user_data": "denied"}, 5)
    record(db_session, ann, {"sale": "denied"}, 5)
    db_session.execute(
        update(ConsentState).where(ConsentState.purpose == "ad_user_data").values(status="granted"),
        execution_options={"synchronize_session": False},
    )
    db_session.execute(
        ConsentState.__table__.delete().where(ConsentState.purpose == "sale"),
        execution_options={"synchronize_session": False},
    )
    db_session.expire_all()
    mismatches = verify_projection(db_session)
    assert [(m.purpose, m.actual is None) for m in mismatches] == [("ad_user_data", False), ("sale", True)]
    assert "denied" in str(mismatches[0])
    assert rebuild_consent_state(db_session, ann, now=T0) == 2
    assert verify_projection(db_session) == []


# -- merges ------------------------------------------------------------------------------------------------


def test_merge_keeps_the_most_restrictive_recent_decision(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    phone_side = person(db_session, encryptor, settings, phone="+4791234567")
    email_side = person(db_session, encryptor, settings, email="ann@example.com")
    # The phone-side device denied; later the email side granted — on what we only now know is the same person.
    record(db_session, phone_side, {"ad_user_data": "denied", "analytics_storage": "granted"}, 0)
    record(db_session, email_side, {"ad_user_data": "granted"}, 30)
    record(db_session, email_side, {"ad_storage": "granted"}, 0)
    now = T0 + timedelta(hours=2)
    assert current_consent(db_session, email_side, now)["ad_user_data"]["status"] == "granted"

    merged = person(db_session, encryptor, settings, email="ann@example.com", phone="+4791234567")
    state = current_consent(db_session, merged, now)
    assert state["ad_user_data"]["status"] == "denied"
    assert state["ad_user_data"]["source"] == "merge"
    denial = db_session.scalar(
        select(ConsentRecord.id).where(ConsentRecord.profile_id == phone_side, ConsentRecord.purpose == "ad_user_data")
    )
    # The merge wrote a denial of its own, at the later grant's instant, naming the denial it re-asserts.
    derived = db_session.get(ConsentRecord, state["ad_user_data"]["record_id"])
    assert derived.source == "merge"
    assert derived.status == "denied"
    assert derived.collected_at == T0 + timedelta(minutes=30)
    assert derived.proof["denial_record_id"] == denial
    assert state["analytics_storage"]["status"] == "granted"
    assert state["ad_storage"]["status"] == "granted"
    # Either id of the cluster answers the same; the scheduler's ledger agrees.
    assert current_consent(db_session, phone_side, now) == state
    assert load_ledger(db_session, phone_side).at("ad_user_data", now).status == "denied"
    # Records were not moved; a later re-grant by the person wins again.
    originals = select(func.count()).where(ConsentRecord.profile_id == phone_side, ConsentRecord.source != "merge")
    assert db_session.scalar(originals) == 2
    record(db_session, merged, {"ad_user_data": "granted"}, 60)
    assert current_consent(db_session, merged, now)["ad_user_data"]["status"] == "granted"
    assert verify_projection(db_session) == []


@pytest.mark.parametrize("older", ["denying", "granting"])
def test_a_person_can_grant_again_after_a_merge_whichever_profile_wins(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, older: str
) -> None:
    """The older profile wins a merge; either way the merge denial is written once, and a later grant wins."""

    def make(**user: str) -> str:
        resolution = resolve_identity(
            db_session, encryptor, user, region=None, source="test", settings=settings, now=T0 - timedelta(days=1)
        )
        assert resolution.profile_id is not None
        db_session.flush()
        return resolution.profile_id

    first, second = ({"phone": "+4791234567"}, {"email": "ann@example.com"})
    if older == "granting":
        first, second = second, first
    profiles = {"first": make(**first)}
    db_session.get(Profile, profiles["first"]).created_at = T0 - timedelta(days=2)
    profiles["second"] = make(**second)
    denying = profiles["first"] if "phone" in first else profiles["second"]
    granting = profiles["second"] if denying == profiles["first"] else profiles["first"]
    record(db_session, denying, {"ad_user_data": "denied"}, 0)
    record(db_session, granting, {"ad_user_data": "granted"}, 30)

    merged = person(db_session, encryptor, settings, email="ann@example.com", phone="+4791234567")
    assert merged == profiles["first"], "the older profile wins"
    now = T0 + timedelta(hours=2)
    assert current_consent(db_session, merged, now)["ad_user_data"]["status"] == "denied"

    record(db_session, merged, {"ad_user_data": "granted"}, 60)
    assert current_consent(db_session, merged, now)["ad_user_data"]["status"] == "granted"
    assert load_ledger(db_session, denying).at("ad_user_data", now).status == "granted"
    assert db_session.scalar(select(func.count()).where(ConsentRecord.source == "merge")) == 1
    assert verify_projection(db_session) == []
