"""``record_consent``'s fewer round trips keep its answers: input errors before profile errors, every field at
fault named together, projection rows already loaded in the session refreshed, and the statement count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from hub.consent.models import ConsentState
from hub.consent.services import ConsentInputError, SubjectErased, record_consent, verify_projection
from hub.profiles.models import Profile
from hub.profiles.services import ProfileNotFound

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _profile(session: Session, profile_id: str, **values: object) -> str:
    session.add(Profile(id=profile_id, created_at=T0, updated_at=T0, **values))
    session.flush()
    return profile_id


def _record(session: Session, profile_id: str, purposes: dict[str, str], minutes: int, **extra: object) -> list:
    values: dict[str, object] = {
        "collected_at": T0 + timedelta(minutes=minutes),
        "source": "api",
        "source_event_id": f"evt-{minutes}-{sorted(purposes.items())}",
        "now": T0 + timedelta(days=1),
    }
    values.update(extra)
    return record_consent(session, profile_id, purposes=purposes, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("profile", "purposes", "extra", "fields"),
    [
        ("missing", {"newsletter": "granted"}, {}, {"purposes.newsletter"}),
        ("erased", {"newsletter": "granted"}, {}, {"purposes.newsletter"}),
        ("live", {"newsletter": "maybe"}, {"region": ""}, {"purposes.newsletter", "region"}),
        ("live", {"ad_user_data": "maybe"}, {}, {"purposes.ad_user_data"}),
        ("missing", {}, {}, {"purposes"}),
    ],
)
def test_input_errors_come_first_and_name_every_field(
    db_session: Session, profile: str, purposes: dict[str, str], extra: dict[str, object], fields: set[str]
) -> None:
    _profile(db_session, "live")
    _profile(db_session, "erased", erased_at=T0)
    with pytest.raises(ConsentInputError) as raised:
        _record(db_session, profile, purposes, 0, **extra)
    assert set(raised.value.fields) == fields
    assert raised.value.fields.get("purposes.newsletter", "unknown purpose").startswith("unknown purpose")


def test_profile_errors_after_valid_input(db_session: Session) -> None:
    _profile(db_session, "erased", erased_at=T0)
    _profile(db_session, "merged-away", merged_into_id="erased")
    with pytest.raises(ProfileNotFound):
        _record(db_session, "missing", {"ad_user_data": "granted"}, 0)
    with pytest.raises(SubjectErased):
        _record(db_session, "merged-away", {"ad_user_data": "granted"}, 0)


def test_loaded_projection_rows_see_the_new_decision(db_session: Session) -> None:
    pid = _profile(db_session, "live")
    _record(db_session, pid, {"ad_user_data": "granted", "sale": "granted"}, 0)
    loaded = {row.purpose: row for row in db_session.scalars(select(ConsentState))}
    [later] = _record(db_session, pid, {"ad_user_data": "denied"}, 10)
    _record(db_session, pid, {"sale": "denied"}, -10)  # older than the projection's fact: no change
    assert (loaded["ad_user_data"].status, loaded["ad_user_data"].record_id) == ("denied", later.id)
    assert loaded["sale"].status == "granted"
    assert verify_projection(db_session) == []


def test_statements_per_decision(db_session: Session) -> None:
    pid = _profile(db_session, "live")
    _record(db_session, pid, {"ad_user_data": "granted"}, 0)
    statements: list[str] = []
    connection = db_session.connection()

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement.split()[0])

    event.listen(connection, "before_cursor_execute", count)
    try:
        _record(db_session, pid, {"ad_user_data": "denied", "ad_personalization": "granted"}, 5)
        repeat = _record(db_session, pid, {"ad_user_data": "denied", "ad_personalization": "granted"}, 5)
    finally:
        event.remove(connection, "before_cursor_execute", count)
    assert repeat == []
    # Lock + catalogue, seen + projection, records, projection upsert; a repeat stops after the second.
    # (SQLite's driver inserts the records one row at a time; PostgreSQL takes them in one statement.)
    if db_session.get_bind().dialect.name == "postgresql":
        assert statements == ["SELECT", "SELECT", "INSERT", "INSERT", "SELECT", "SELECT"]
    else:
        assert [s for s in statements if s != "INSERT"] == ["SELECT"] * 4
