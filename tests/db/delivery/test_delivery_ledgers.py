"""load_people_consent (one read for a batch's people) gives what the per-event reads give: the cluster root
(canonical_profile_id), the root's region and the cluster's ledger (load_ledger)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from hub.consent.ledger import load_ledger
from hub.consent.models import ConsentRecord
from hub.db import new_id
from hub.delivery.ledgers import load_people_consent
from hub.profiles.models import Profile
from hub.profiles.services import ProfileNotFound, canonical_profile_id

T = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)


def add_profile(
    session: Session, region: str | None = None, *, merged_into: str | None = None, age_days: int = 30
) -> str:
    row = Profile(id=new_id(), region=region, merged_into_id=merged_into, created_at=T - timedelta(days=age_days))
    session.add(row)
    session.flush()
    return row.id


def add_consent(session: Session, profile_id: str, purpose: str, status: str, at: datetime, **extra: object) -> None:
    session.add(
        ConsentRecord(
            profile_id=profile_id,
            purpose=purpose,
            status=status,
            collected_at=at,
            received_at=at,
            source=str(extra.pop("source", "cmp:test")),
            source_event_id=new_id(),
            proof={},
            **extra,
        )
    )
    session.flush()


def lone_person(session: Session) -> list[str]:
    pid = add_profile(session, "DE")
    add_consent(session, pid, "ad_user_data", "granted", T - 3 * H)
    add_consent(session, pid, "ad_user_data", "denied", T - 2 * H)
    add_consent(session, pid, "sale", "granted", T - H, expires_at=T + H)
    return [pid]


def person_without_records(session: Session) -> list[str]:
    return [add_profile(session, "US-CA")]


def person_without_region(session: Session) -> list[str]:
    pid = add_profile(session, None)
    add_consent(session, pid, "sale", "denied", T - H, source="gpc")
    return [pid]


def merged_cluster(session: Session) -> list[str]:
    """Root and two members (created in another order than their ids) with conflicting decisions spread over the
    members: the batch read must gather every member's records, as the per-event read does."""
    root = add_profile(session, "US-TX", age_days=40)
    newer = add_profile(session, "DE", merged_into=root, age_days=5)
    older = add_profile(session, None, merged_into=root, age_days=20)
    add_consent(session, root, "ad_user_data", "granted", T - 5 * H)
    add_consent(session, older, "ad_user_data", "denied", T - 4 * H)
    add_consent(session, newer, "ad_user_data", "granted", T - 3 * H)
    add_consent(session, newer, "sale", "denied", T - 2 * H)
    add_consent(session, root, "sale", "granted", T - H)
    # Every id of the cluster is asked about (an event may carry a member's id).
    return [root, newer, older]


def interleaved_members(session: Session) -> list[str]:
    """Three members whose decisions interleave in time, asked about through the newest member's id."""
    root = add_profile(session, "US-CA", age_days=60)
    older = add_profile(session, "US-CA", merged_into=root, age_days=30)
    newer = add_profile(session, "US-CA", merged_into=root, age_days=10)
    add_consent(session, root, "sale", "denied", T - 5 * H)
    add_consent(session, newer, "sale", "denied", T - 3 * H)
    add_consent(session, older, "sale", "granted", T - 2 * H)
    return [newer]


def member_without_records(session: Session) -> list[str]:
    root = add_profile(session, "FR")
    member = add_profile(session, "DE", merged_into=root)
    add_consent(session, root, "ad_user_data", "granted", T - H)
    return [member]


def unflattened_chain(session: Session) -> list[str]:
    """A merge chain of two hops (merges are normally flattened): both reads follow it to the top."""
    top = add_profile(session, "GB", age_days=50)
    middle = add_profile(session, "GB", merged_into=top, age_days=40)
    bottom = add_profile(session, "GB", merged_into=middle, age_days=30)
    add_consent(session, top, "ad_user_data", "denied", T - 2 * H)
    add_consent(session, middle, "ad_user_data", "granted", T - H)
    add_consent(session, bottom, "ad_user_data", "granted", T - H)
    return [bottom, middle, top]


CASES: dict[str, Callable[[Session], list[str]]] = {
    "lone person": lone_person,
    "no records": person_without_records,
    "no region": person_without_region,
    "merged cluster": merged_cluster,
    "interleaved members": interleaved_members,
    "member without records": member_without_records,
    "unflattened chain": unflattened_chain,
}


@pytest.mark.parametrize("build", CASES.values(), ids=CASES.keys())
def test_batch_read_equals_per_event_reads(db_session: Session, build: Callable[[Session], list[str]]) -> None:
    ids = build(db_session)
    # Another person in the same batch must not leak into this one's ledger.
    other = lone_person(db_session)
    people = load_people_consent(db_session, [*ids, *other, ids[0]])
    for pid in [*ids, *other]:
        root = canonical_profile_id(db_session, pid)
        person = people[pid]
        assert person.root_id == root
        assert person.region == db_session.get(Profile, root).region
        expected = load_ledger(db_session, root)
        assert list(person.ledger) == list(expected)
        assert len(person.ledger) == len(expected)


def test_unknown_profiles_are_left_out(db_session: Session) -> None:
    known = add_profile(db_session, "DE")
    missing = new_id()
    with pytest.raises(ProfileNotFound):
        canonical_profile_id(db_session, missing)
    people = load_people_consent(db_session, [known, missing])
    assert set(people) == {known}


def test_a_merge_cycle_is_an_unknown_person_as_for_canonical_profile_id(db_session: Session) -> None:
    a = add_profile(db_session, "DE")
    b = add_profile(db_session, "DE", merged_into=a)
    db_session.execute(update(Profile).where(Profile.id == a).values(merged_into_id=b))
    db_session.expire_all()
    with pytest.raises(ProfileNotFound):
        canonical_profile_id(db_session, a)
    assert load_people_consent(db_session, [a, b]) == {}


def test_no_profiles_no_queries(db_session: Session) -> None:
    assert load_people_consent(db_session, []) == {}


def test_more_people_than_one_in_list(db_session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ids are read in chunks; a cluster split across chunks still comes out whole."""
    import hub.delivery.ledgers as ledgers

    monkeypatch.setattr(ledgers, "IN_CHUNK", 2)
    ids = merged_cluster(db_session) + lone_person(db_session) + merged_cluster(db_session)
    people = load_people_consent(db_session, ids)
    for pid in ids:
        root = canonical_profile_id(db_session, pid)
        assert list(people[pid].ledger) == list(load_ledger(db_session, root))
