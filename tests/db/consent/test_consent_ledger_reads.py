"""``load_ledger``'s single-statement read against the step-by-step read it replaced: same facts, same fold,
for every member of a merged cluster, per purpose and whole; the fallback for an unflattened merge chain."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, update
from sqlalchemy.orm import Session

from hub.consent.ledger import _load_ledger_walking, load_ledger
from hub.consent.models import ConsentRecord
from hub.consent.policy import PURPOSES
from hub.consent.services import consent_at, withdrawn_since
from hub.profiles.models import Profile
from hub.profiles.services import ProfileNotFound

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _profile(session: Session, profile_id: str, created_minutes: int, merged_into: str | None = None) -> str:
    at = T0 + timedelta(minutes=created_minutes)
    session.add(Profile(id=profile_id, created_at=at, updated_at=at, merged_into_id=merged_into))
    session.flush()
    return profile_id


def _decision(session: Session, profile_id: str, purpose: str, status: str, minutes: int) -> None:
    at = T0 + timedelta(minutes=minutes)
    session.add(
        ConsentRecord(
            profile_id=profile_id,
            purpose=purpose,
            status=status,
            collected_at=at,
            received_at=at,
            source="api",
            source_event_id=f"{profile_id}-{purpose}-{minutes}",
            proof={},
        )
    )
    session.flush()


def _records(session: Session, profile_id: str, rng: random.Random, count: int) -> None:
    for n in range(count):
        collected = T0 + timedelta(minutes=rng.randrange(0, 600))
        session.add(
            ConsentRecord(
                profile_id=profile_id,
                purpose=rng.choice(PURPOSES[:3]),
                status=rng.choice(("granted", "denied")),
                collected_at=collected,
                received_at=collected,
                source="api",
                source_event_id=f"{profile_id}-{n}",
                expires_at=collected + timedelta(minutes=rng.randrange(30, 300)) if rng.random() < 0.3 else None,
                proof={},
            )
        )
    session.flush()


@pytest.fixture
def cluster(db_session: Session) -> list[str]:
    """A root with three merged members created in an order that differs from their ids' order (the fold is
    order-sensitive: derived merge denials name the denial they re-assert), plus an unrelated person."""
    rng = random.Random(4)
    root = _profile(db_session, "p-root", 50)
    members = [
        _profile(db_session, "p-c", 10, root),
        _profile(db_session, "p-a", 30, root),
        _profile(db_session, "p-b", 20, root),
    ]
    other = _profile(db_session, "p-other", 0)
    for profile_id in (root, *members, other):
        _records(db_session, profile_id, rng, 12)
    # Later decisions that make the fold derive denials: the root's grant after p-c's denial, then p-a's grant
    # after that derived denial, then p-b's denial last.
    _decision(db_session, root, "ad_user_data", "granted", 800)
    _decision(db_session, "p-c", "ad_user_data", "denied", 750)
    _decision(db_session, "p-a", "ad_user_data", "granted", 900)
    _decision(db_session, "p-b", "ad_user_data", "denied", 950)
    _decision(db_session, root, "ad_storage", "denied", 700)
    _decision(db_session, "p-b", "ad_storage", "granted", 720)
    return [root, *members]


def test_whole_and_per_purpose_reads_equal_the_step_by_step_read(db_session: Session, cluster: list[str]) -> None:
    expected = list(_load_ledger_walking(db_session, cluster[0], None))
    assert expected  # the fixture spreads records over several members of the cluster
    for profile_id in cluster:
        assert list(load_ledger(db_session, profile_id)) == expected
        for purpose in PURPOSES[:4]:
            walked = _load_ledger_walking(db_session, profile_id, None)
            assert list(load_ledger(db_session, profile_id, purpose)) == list(walked.history(purpose))
            for minutes in range(-10, 1000, 7):
                when = T0 + timedelta(minutes=minutes)
                assert consent_at(db_session, profile_id, purpose, when) == walked.at(purpose, when)
                assert withdrawn_since(db_session, profile_id, purpose, when, when + timedelta(hours=2)) == (
                    walked.withdrawn_since(purpose, when, when + timedelta(hours=2))
                )


def test_one_statement_per_read(db_session: Session, cluster: list[str]) -> None:
    statements: list[str] = []
    connection = db_session.connection()

    def count(*_args: object) -> None:
        statements.append("x")

    event.listen(connection, "before_cursor_execute", count)
    try:
        consent_at(db_session, cluster[1], "ad_user_data", T0)
        load_ledger(db_session, cluster[2])
    finally:
        event.remove(connection, "before_cursor_execute", count)
    assert len(statements) == 2


def test_profile_without_records_and_unknown_profile(db_session: Session) -> None:
    lonely = _profile(db_session, "p-lonely", 0)
    assert list(load_ledger(db_session, lonely)) == []
    assert consent_at(db_session, lonely, "ad_user_data", T0) is None
    with pytest.raises(ProfileNotFound):
        load_ledger(db_session, "p-nobody")
    with pytest.raises(ProfileNotFound):
        consent_at(db_session, "p-nobody", "ad_user_data", T0)


def test_an_unflattened_chain_is_followed_to_its_root(db_session: Session) -> None:
    rng = random.Random(9)
    top = _profile(db_session, "p-top", 0)
    middle = _profile(db_session, "p-middle", 1, top)
    bottom = _profile(db_session, "p-bottom", 2)
    for profile_id in (top, middle, bottom):
        _records(db_session, profile_id, rng, 8)
    # bottom -> middle -> top: merges are normally flattened to one hop; a corrupted chain is still followed.
    db_session.execute(update(Profile).where(Profile.id == bottom).values(merged_into_id=middle))
    db_session.expire_all()
    expected = list(_load_ledger_walking(db_session, top, None))
    for profile_id in (top, middle, bottom):
        assert list(load_ledger(db_session, profile_id)) == expected
        assert list(load_ledger(db_session, profile_id, "ad_user_data")) == [
            fact for fact in expected if fact.purpose == "ad_user_data"
        ]
