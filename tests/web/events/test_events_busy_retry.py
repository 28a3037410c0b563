"""A lock conflict during a request is a 503 busy_retry with Retry-After, never a 500."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg.errors
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from hub.auth.services import create_api_key
from hub.events import api as events_api

EVENT = {"event_id": "busy-1", "event": "page_view", "occurred_at": "2026-11-28T11:59:00Z"}


@pytest.fixture
def ingest_key(db_session: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(db_session, 'shop', 'ingest').secret}"}


def raising(error: BaseException) -> Any:
    def ingest(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    return ingest


@pytest.mark.parametrize(
    "orig",
    [
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
        sqlite3.OperationalError("database is locked"),
    ],
    ids=["deadlock", "serialization", "lock-timeout", "sqlite-busy"],
)
def test_lock_conflict_is_503_busy_retry(
    client: FlaskClient, ingest_key: dict[str, str], monkeypatch: pytest.MonkeyPatch, orig: BaseException
) -> None:
    monkeypatch.setattr(events_api, "ingest_events", raising(OperationalError("INSERT ...", {}, orig)))
    response = client.post("/api/v1/events", json=EVENT, headers=ingest_key)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == "busy_retry"


def test_other_database_errors_are_not_disguised(
    app: Flask, client: FlaskClient, ingest_key: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    error = OperationalError("SELECT ...", {}, sqlite3.OperationalError("no such table: events"))
    monkeypatch.setattr(events_api, "ingest_events", raising(error))
    app.config.update(PROPAGATE_EXCEPTIONS=False)
    response = client.post("/api/v1/events", json=EVENT, headers=ingest_key)
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] != "busy_retry"
