"""The scheduler writes a batch's changes in one statement per set of columns: what it stores must be exactly what
row-by-row UPDATEs store (on PostgreSQL the rows travel as one JSON document)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from hub.app import create_app
from hub.config import Settings
from hub.db import session_scope
from hub.delivery.dispatch import _write_changes
from hub.events.models import Event
from tests.support.databases import TestDatabase
from tests.support.delivery import add_destination, add_events

COMPARED = (
    "status",
    "attempts",
    "next_attempt_at",
    "decided_at",
    "decision",
    "destination_id",
    "mapping_version",
    "last_error",
    "lease_owner",
    "lease_expires_at",
    "unknown_outcome_resends",
)


@pytest.fixture
def hub_app(fresh_database: TestDatabase, settings: Settings) -> Iterator[Flask]:
    app = create_app(settings.with_overrides(database_url=fresh_database.url))
    try:
        yield app
    finally:
        app.extensions["hub.engine"].dispose()


def _changes(destination_id: int) -> list[dict[str, Any]]:
    moment = datetime(2026, 11, 28, 15, 4, 5, 123456, tzinfo=UTC)
    return [
        {
            "status": "retrying",
            "attempts": 3,
            # Any offset is stored as the same instant.
            "next_attempt_at": moment.astimezone(timezone(timedelta(hours=-5))),
            "decided_at": moment,
            "decision": {
                "outcome": "send",
                "explanation": 'Sent: « quotes " and \\ backslashes », émojis 🙂 and \u2028 separators',
                "consent_record_ids": [1, "x"],
                "ldu": None,
                "score": 0.1 + 0.2,
                "nested": {"empty": {}, "list": [], "big": 2**53 + 1},
            },
            "destination_id": destination_id,
            "mapping_version": None,
            "last_error": {"reason": "no_destination", "at": "2026-11-28T15:04:05Z"},
            "lease_owner": "host:123:abcdef12",
            "lease_expires_at": None,
            "unknown_outcome_resends": 1,
        },
        {
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": None,
            "decided_at": moment + timedelta(microseconds=1),
            "decision": {"outcome": "block", "explanation": ""},
            "destination_id": None,
            "mapping_version": 7,
            "last_error": {},
            "lease_owner": None,
            "lease_expires_at": moment + timedelta(minutes=2),
            "unknown_outcome_resends": 0,
        },
    ]


def _stored(app: Flask, ids: list[int]) -> list[tuple[Any, ...]]:
    columns = [Event.__table__.c[name] for name in COMPARED]
    with session_scope(app.extensions["hub.sessionmaker"]) as session:
        rows = session.execute(select(*columns).where(Event.id.in_(ids)).order_by(Event.id))
        return [tuple(row) for row in rows]


def test_batch_update_stores_what_row_by_row_updates_store(hub_app: Flask) -> None:
    settings = hub_app.extensions["hub.settings"]
    dialect = hub_app.extensions["hub.engine"].dialect.name
    with session_scope(hub_app.extensions["hub.sessionmaker"]) as session:
        destination_id = add_destination(session, settings)
        add_events(session, settings, 4)
        ids = list(session.scalars(select(Event.id).order_by(Event.id)))
    batch, row_by_row = ids[:2], ids[2:]
    with session_scope(hub_app.extensions["hub.sessionmaker"]) as session:
        changes = _changes(destination_id)
        _write_changes(session, [{"id": i, **c} for i, c in zip(batch, changes, strict=True)], dialect)
        # The executemany path, whatever the database.
        _write_changes(session, [{"id": i, **c} for i, c in zip(row_by_row, changes, strict=True)], "sqlite")

    first, second = _stored(hub_app, batch), _stored(hub_app, row_by_row)
    assert first == second
    assert first[0][COMPARED.index("decision")]["explanation"].startswith("Sent: « quotes")
    assert first[0][COMPARED.index("next_attempt_at")] == datetime(2026, 11, 28, 15, 4, 5, 123456, tzinfo=UTC)


def test_batch_update_keeps_json_null_for_none(hub_app: Flask) -> None:
    settings = hub_app.extensions["hub.settings"]
    dialect = hub_app.extensions["hub.engine"].dialect.name
    with session_scope(hub_app.extensions["hub.sessionmaker"]) as session:
        add_events(session, settings, 4)
        ids = list(session.scalars(select(Event.id).order_by(Event.id)))
    with session_scope(hub_app.extensions["hub.sessionmaker"]) as session:
        _write_changes(session, [{"id": i, "last_error": None, "status": "dead"} for i in ids[:2]], dialect)
        _write_changes(session, [{"id": i, "last_error": None, "status": "dead"} for i in ids[2:]], "sqlite")
    first, second = _stored(hub_app, ids[:2]), _stored(hub_app, ids[2:])
    assert first == second


def test_naive_datetimes_are_refused(hub_app: Flask) -> None:
    settings = hub_app.extensions["hub.settings"]
    dialect = hub_app.extensions["hub.engine"].dialect.name
    with session_scope(hub_app.extensions["hub.sessionmaker"]) as session:
        add_events(session, settings, 2)
        ids = list(session.scalars(select(Event.id).order_by(Event.id)))
    with pytest.raises(Exception, match="naive datetime"), session_scope(hub_app.extensions["hub.sessionmaker"]) as s:
        _write_changes(s, [{"id": i, "decided_at": datetime(2026, 1, 1)} for i in ids], dialect)
