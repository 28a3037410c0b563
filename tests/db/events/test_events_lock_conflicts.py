"""Lock conflicts in ingestion: recognised on both databases, the batch retried transparently, and a real
PostgreSQL lock timeout that outlasts the retries surfaces as a retryable error with nothing half-stored."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import psycopg.errors
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.db import is_lock_conflict, make_sessionmaker
from hub.encryption import FieldEncryptor
from hub.events import services
from hub.events.models import Event
from hub.events.services import ingest_events
from hub.profiles.models import Identity, Profile
from tests.support.databases import TestDatabase

ENCRYPTOR = FieldEncryptor([Fernet.generate_key().decode()])
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def ev(event_id: str, email: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event": "order_completed",
        "occurred_at": "2026-11-28T11:59:00Z",
        "user": {"email": email},
    }


def wrapped(orig: BaseException, kind: type[DBAPIError] = OperationalError) -> DBAPIError:
    return kind("INSERT INTO identities ...", {}, orig)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (wrapped(psycopg.errors.DeadlockDetected("deadlock detected")), True),
        (wrapped(psycopg.errors.SerializationFailure("could not serialize access")), True),
        (wrapped(psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")), True),
        (wrapped(sqlite3.OperationalError("database is locked")), True),
        (wrapped(sqlite3.OperationalError("database table is locked")), True),
        (psycopg.errors.DeadlockDetected("unwrapped driver error"), True),
        (wrapped(psycopg.errors.UniqueViolation("duplicate key"), IntegrityError), False),
        (wrapped(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")), False),
        (wrapped(sqlite3.OperationalError("no such table: identities")), False),
        (wrapped(psycopg.errors.UndefinedTable("relation does not exist")), False),
        (ValueError("database is locked"), False),
    ],
)
def test_lock_conflicts_are_recognised(error: BaseException, retryable: bool) -> None:
    assert is_lock_conflict(error) is retryable


def test_a_deadlocked_batch_is_retried_and_stored_once(
    db_session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt writes profiles, then is chosen as a deadlock victim: its SAVEPOINT goes, the retry
    stores every event once and no profile of the failed attempt remains."""
    real_complete_many = services.complete_many
    attempts = {"n": 0}

    def deadlocking_once(*args: Any, **kwargs: Any) -> Any:
        attempts["n"] += 1
        resolutions = real_complete_many(*args, **kwargs)
        if attempts["n"] == 1:
            raise wrapped(psycopg.errors.DeadlockDetected("deadlock detected"))
        return resolutions

    monkeypatch.setattr(services, "complete_many", deadlocking_once)
    monkeypatch.setattr(services, "LOCK_CONFLICT_BACKOFF_SECONDS", 0.0)
    events = [ev("d-1", "ann@shop.example"), ev("d-2", "bob@shop.example"), ev("d-3", "ann@shop.example")]
    results = ingest_events(db_session, ENCRYPTOR, events, settings=settings, now=NOW)
    assert attempts["n"] == 2
    assert [r.status for r in results] == ["accepted"] * 3
    assert results[0].profile_id == results[2].profile_id != results[1].profile_id
    assert db_session.scalar(select(func.count()).select_from(Event)) == 3
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 2
    assert db_session.scalar(select(func.count()).select_from(Identity)) == 2


def test_retries_are_bounded_and_other_errors_are_not_retried(
    db_session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}

    def always(error: BaseException) -> Any:
        def fail(*_args: Any, **_kwargs: Any) -> Any:
            calls["n"] += 1
            raise error

        return fail

    monkeypatch.setattr(services, "LOCK_CONFLICT_BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(services, "complete_many", always(wrapped(psycopg.errors.LockNotAvailable("lock timeout"))))
    with pytest.raises(OperationalError) as raised:
        ingest_events(db_session, ENCRYPTOR, [ev("b-1", "ann@shop.example")], settings=settings, now=NOW)
    assert is_lock_conflict(raised.value)
    assert calls["n"] == services.LOCK_CONFLICT_ATTEMPTS

    calls["n"] = 0
    monkeypatch.setattr(services, "complete_many", always(wrapped(psycopg.errors.UndefinedTable("no relation"))))
    with pytest.raises(OperationalError):
        ingest_events(db_session, ENCRYPTOR, [ev("b-2", "ann@shop.example")], settings=settings, now=NOW)
    assert calls["n"] == 1


def test_real_lock_timeout_on_postgresql(fresh_database: TestDatabase, settings: Settings) -> None:
    """Request A has created ann and not committed; request B (lock_timeout 50 ms) needs ann's identity entry.
    B's attempts time out, B gets a retryable error with nothing of its batch kept, and once A has committed the
    same batch goes through and joins A's profile."""
    if fresh_database.backend != "postgresql":
        pytest.skip("lock_timeout is PostgreSQL's; SQLite serializes writers with BEGIN IMMEDIATE")
    factory = make_sessionmaker(fresh_database.engine)
    with factory() as first, factory() as second:
        [held] = ingest_events(first, ENCRYPTOR, [ev("a-1", "ann@shop.example")], settings=settings, now=NOW)
        second.execute(text("SET lock_timeout = '50ms'"))
        batch = [ev("b-1", "bob@shop.example"), ev("b-2", "ann@shop.example")]
        with pytest.raises(OperationalError) as raised:
            ingest_events(second, ENCRYPTOR, batch, settings=settings, now=NOW)
        assert is_lock_conflict(raised.value)
        # The batch's SAVEPOINT was rolled back: the transaction is usable and holds nothing of the batch.
        assert second.scalar(select(func.count()).select_from(Profile)) == 0
        first.commit()
        results = ingest_events(second, ENCRYPTOR, batch, settings=settings, now=NOW)
        second.commit()
    assert [r.status for r in results] == ["accepted", "accepted"]
    assert results[1].profile_id == held.profile_id
    with factory() as check:
        assert check.scalar(select(func.count()).select_from(Profile)) == 2
        assert check.scalar(select(func.count()).select_from(Event)) == 3
