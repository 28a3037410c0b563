"""Batches whose identities need no write skip the SAVEPOINT and the look-up of stored ids: duplicates are still
reported with the stored copy's profile and change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.encryption import FieldEncryptor
from hub.events.models import Event
from hub.events.services import ingest_events
from hub.profiles.models import Identity, Profile

ENCRYPTOR = FieldEncryptor([Fernet.generate_key().decode()])
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=3)  # past the last_seen_at refresh interval
ANN = {"email": "ann@shop.example", "external_id": "crm-ann", "fbp": "fb.1.1764300000000.1"}


def ev(event_id: str, user: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": event_id, "event": "page_view", "occurred_at": "2026-11-28T11:59:00Z"}
    if user is not None:
        body["user"] = user
    return body


@contextmanager
def statements(session: Session) -> Iterator[list[str]]:
    seen: list[str] = []
    connection = session.connection()

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split())[:60])

    event.listen(connection, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(connection, "before_cursor_execute", record)


def last_seen(session: Session) -> set[datetime]:
    session.expire_all()
    return set(session.scalars(select(Identity.last_seen_at)))


def test_returning_and_anonymous_events_cost_a_lookup_and_an_insert(db_session: Session, settings: Settings) -> None:
    [first] = ingest_events(db_session, ENCRYPTOR, [ev("e-0", ANN)], settings=settings, now=T0)
    batch = [ev("e-1", ANN), ev("e-2", {"fbp": "fb.1.1764300000000.9"}), ev("e-3"), ev("e-4", {"email": ANN["email"]})]
    with statements(db_session) as seen:
        results = ingest_events(db_session, ENCRYPTOR, batch, settings=settings, now=T0 + timedelta(minutes=5))
    assert [r.status for r in results] == ["accepted"] * 4
    assert [r.profile_id for r in results] == [first.profile_id, None, None, first.profile_id]
    assert len(seen) == 2, seen
    assert seen[0].startswith("SELECT")
    assert seen[1].startswith("INSERT INTO events")
    assert db_session.scalar(select(func.count()).select_from(Event)) == 5


def test_duplicates_on_the_fast_path_report_the_stored_copy_and_change_nothing(
    db_session: Session, settings: Settings
) -> None:
    [first] = ingest_events(db_session, ENCRYPTOR, [ev("d-1", ANN)], settings=settings, now=T0)
    assert last_seen(db_session) == {T0}
    # d-1 again (a returning person: no write needed, so the fast path) and a fresh anonymous event.
    resend = [ev("d-1", {"email": ANN["email"]}), ev("d-2", {"fbp": "fb.1.1764300000000.77"})]
    results = ingest_events(db_session, ENCRYPTOR, resend, settings=settings, now=LATER)
    assert [(r.status, r.profile_id) for r in results] == [("duplicate", first.profile_id), ("accepted", None)]
    # The duplicate refreshed nothing: last_seen_at is only refreshed for stored events.
    assert last_seen(db_session) == {T0}
    results = ingest_events(db_session, ENCRYPTOR, [ev("d-3", {"email": ANN["email"]})], settings=settings, now=LATER)
    assert results[0].status == "accepted"
    email_seen = db_session.scalar(select(Identity.last_seen_at).where(Identity.kind == "email"))
    assert email_seen == LATER
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 1
    assert db_session.scalar(select(func.count()).select_from(Event)) == 3


def test_a_batch_that_creates_people_checks_stored_ids_first(db_session: Session, settings: Settings) -> None:
    ingest_events(db_session, ENCRYPTOR, [ev("n-1", ANN)], settings=settings, now=T0)
    batch = [ev("n-1", {"email": "bob@shop.example"}), ev("n-2", {"email": "cid@shop.example"})]
    results = ingest_events(db_session, ENCRYPTOR, batch, settings=settings, now=T0)
    assert [r.status for r in results] == ["duplicate", "accepted"]
    # bob came only with the duplicate: nothing about him is stored.
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 2
