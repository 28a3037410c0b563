"""Destinations, the dead-letter queue (service and API) and retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.auth.services import create_api_key
from hub.config import Settings
from hub.db import utcnow
from hub.delivery.dead_letters import DeadLetterFilter, list_dead_letters
from hub.delivery.destinations import (
    DestinationInvalid,
    create_destination,
    default_destination,
    destination_document,
    pause_destination,
    paused_destinations,
    resume_destination,
    update_destination,
)
from hub.delivery.options import delivery_options
from hub.delivery.retention import purge
from hub.encryption import FieldEncryptor
from hub.events.models import Event
from tests.support.delivery import PIXEL, TOKEN, add_destination, add_events, add_mapping, events_by_id


def encryptor_of(settings: Settings) -> FieldEncryptor:
    return FieldEncryptor(settings.encryption_keys)


def test_destination_secrets_are_encrypted_and_never_shown(db_session: Session, settings: Settings) -> None:
    d = create_destination(
        db_session,
        encryptor_of(settings),
        {"name": "shop", "pixel_id": PIXEL, "access_token": TOKEN, "app_secret": "s3cret"},
        settings=settings,
        actor="t",
    )
    assert d.api_version == "v26.0"
    assert d.is_default
    assert TOKEN not in d.access_token_encrypted
    assert encryptor_of(settings).decrypt(d.access_token_encrypted) == TOKEN
    document = destination_document(d)
    assert document["token_set"] is True
    assert document["app_secret_set"] is True
    assert TOKEN not in repr(document)
    assert "s3cret" not in repr(document)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"pixel_id": "12ab"}, "pixel_id"),
        ({"api_version": "v26"}, "api_version"),
        ({"api_version": "26.0"}, "api_version"),
        ({"api_version": "v26.1"}, "api_version"),
        ({"access_token": ""}, "access_token"),
        ({"access_token": "two words"}, "access_token"),
        ({"name": ""}, "name"),
        ({"test_event_code": 5}, "test_event_code"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_destination_validation(db_session: Session, settings: Settings, data: dict[str, Any], field: str) -> None:
    base = {"name": "shop", "pixel_id": PIXEL, "access_token": TOKEN}
    with pytest.raises(DestinationInvalid) as caught:
        create_destination(db_session, encryptor_of(settings), {**base, **data}, settings=settings, actor="t")
    assert field in caught.value.errors


def test_test_event_code_is_refused_in_production_unless_allowed(db_session: Session, settings: Settings) -> None:
    production = settings.with_overrides(env="production")
    base = {"name": "shop", "pixel_id": PIXEL, "access_token": TOKEN, "test_event_code": "TEST123"}
    with pytest.raises(DestinationInvalid) as caught:
        create_destination(db_session, encryptor_of(settings), base, settings=production, actor="t")
    assert "production" in caught.value.errors["test_event_code"]
    allowed = create_destination(
        db_session,
        encryptor_of(settings),
        {**base, "allow_test_events_in_production": True},
        settings=production,
        actor="t",
    )
    assert allowed.test_event_code == "TEST123"
    dev = create_destination(db_session, encryptor_of(settings), {**base, "name": "dev"}, settings=settings, actor="t")
    assert dev.test_event_code == "TEST123"


def test_one_default_destination(db_session: Session, settings: Settings) -> None:
    first = add_destination(db_session, settings)
    second = add_destination(db_session, settings)
    assert default_destination(db_session).id == first
    update_destination(db_session, encryptor_of(settings), second, {"is_default": True}, settings=settings, actor="t")
    db_session.expire_all()
    assert default_destination(db_session).id == second
    with pytest.raises(DestinationInvalid):
        update_destination(
            db_session, encryptor_of(settings), second, {"is_default": False}, settings=settings, actor="t"
        )


def test_pause_and_resume(db_session: Session, settings: Settings) -> None:
    d = add_destination(db_session, settings)
    pause_destination(db_session, d, "token expired")
    assert [p.id for p in paused_destinations(db_session)] == [d]
    resume_destination(db_session, d, actor="t")
    assert paused_destinations(db_session) == []


def dead_event(session: Session, settings: Settings, **fields: Any) -> str:
    payload = encryptor_of(settings).encrypt_json({"event_id": "x", "user_data": {"client_ip_address": "1.2.3.4"}})
    values: dict[str, Any] = {
        "status": "dead",
        "attempts": 3,
        "last_error": {"kind": "invalid", "code": 100, "message": "bad"},
        "dead_payload_encrypted": payload,
    }
    values.update(fields)
    [event_id] = add_events(session, settings, 1, prefix="dead", **values)
    return event_id


@pytest.fixture
def admin(db_session: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(db_session, 'ops', 'admin').secret}"}


def test_dead_letter_api_list_inspect_replay_discard(
    app: Flask, client: FlaskClient, db_session: Session, settings: Settings, admin: dict[str, str]
) -> None:
    add_destination(db_session, settings)
    add_mapping(db_session)
    one = dead_event(db_session, settings)
    two = dead_event(db_session, settings, last_error={"kind": "permanent", "code": 200, "message": "perm"})
    german = dead_event(db_session, settings, region="DE")

    listed = client.get("/api/v1/dead-letters", headers=admin).get_json()
    assert {d["event_id"] for d in listed["dead_letters"]} == {one, two, german}
    by_code = client.get("/api/v1/dead-letters?code=200", headers=admin).get_json()
    assert [d["event_id"] for d in by_code["dead_letters"]] == [two]
    assert len(list_dead_letters(db_session, DeadLetterFilter(limit=1))) == 1

    shown = client.get(f"/api/v1/dead-letters/{one}", headers=admin).get_json()
    assert shown["payload"]["user_data"]["client_ip_address"] == "1.2.3.4"
    assert shown["last_error"]["code"] == 100

    replayed = client.post(f"/api/v1/dead-letters/{one}/replay", headers=admin).get_json()
    assert replayed["status"] == "pending"
    # Consent is decided again first: nobody in Germany consented, so the replay blocks instead of sending.
    blocked = client.post(f"/api/v1/dead-letters/{german}/replay", headers=admin).get_json()
    assert blocked["status"] == "blocked"
    assert blocked["decision"]["reason_code"] == "no_consent"

    refused = client.post(f"/api/v1/dead-letters/{two}/discard", headers=admin, json={})
    assert refused.status_code == 400
    discarded = client.post(f"/api/v1/dead-letters/{two}/discard", headers=admin, json={"reason": "test data"})
    assert discarded.get_json()["decision"]["reason_code"] == "discarded"

    events = events_by_id(db_session, [one, two])
    assert (events[one].status, events[one].attempts) == ("pending", 0)
    assert events[one].next_attempt_at is not None
    assert events[two].status == "blocked"
    assert "test data" in events[two].decision["explanation"]
    assert events[two].dead_payload_encrypted is None
    assert client.get(f"/api/v1/dead-letters/{two}", headers=admin).status_code == 404


def test_destination_api_needs_admin_and_hides_the_token(
    client: FlaskClient, db_session: Session, admin: dict[str, str]
) -> None:
    ingest = {"Authorization": f"Bearer {create_api_key(db_session, 'shop', 'ingest').secret}"}
    assert client.get("/api/v1/destinations", headers=ingest).status_code == 403
    created = client.post(
        "/api/v1/destinations", headers=admin, json={"name": "shop", "pixel_id": PIXEL, "access_token": TOKEN}
    )
    assert created.status_code == 201
    body = created.get_json()
    assert body["token_set"] is True
    assert TOKEN not in created.get_data(as_text=True)
    bad = client.post("/api/v1/destinations", headers=admin, json={"name": "x", "pixel_id": "abc"})
    assert bad.status_code == 400
    assert set(bad.get_json()["error"]["fields"]) == {"pixel_id", "access_token"}
    paused = client.post(f"/api/v1/destinations/{body['id']}/pause", headers=admin, json={"reason": "maintenance"})
    assert paused.get_json()["status"] == "paused"
    resumed = client.post(f"/api/v1/destinations/{body['id']}/resume", headers=admin)
    assert resumed.get_json()["status"] == "active"
    patched = client.patch(f"/api/v1/destinations/{body['id']}", headers=admin, json={"api_version": "v25.0"})
    assert patched.get_json()["api_version"] == "v25.0"


def test_retention_purges_context_then_deletes_old_events(
    session_factory: Any, db_session: Session, settings: Settings
) -> None:
    now = utcnow()
    old = now - timedelta(days=40)
    ancient = now - timedelta(days=100)
    add_destination(db_session, settings)
    recent = add_events(db_session, settings, 1, prefix="recent")
    aged = add_events(db_session, settings, 1, prefix="aged", received_at=old, status="dead")
    gone = add_events(db_session, settings, 1, prefix="gone", received_at=ancient, status="sent")
    kept_due = add_events(db_session, settings, 1, prefix="due", received_at=ancient, status="pending")
    db_session.commit()
    options = delivery_options(settings)

    dry = purge(session_factory, encryptor_of(settings), options, now=now, dry_run=True)
    assert (dry.contexts_purged, dry.events_deleted) == (3, 1)
    assert "would remove" in dry.lines()[0]

    done = purge(session_factory, encryptor_of(settings), options, now=now)
    assert (done.contexts_purged, done.events_deleted) == (3, 1)
    events = events_by_id(db_session, recent + aged + gone + kept_due)
    assert set(events) == {recent[0], aged[0], kept_due[0]}
    stripped = encryptor_of(settings).decrypt_json(events[aged[0]].user_data_encrypted)
    assert stripped["browser"] == {}
    assert stripped["hashes"]["em"]
    assert events[aged[0]].properties is None
    assert events[aged[0]].context_purged_at is not None
    assert events[recent[0]].properties is not None
    assert db_session.scalar(select(func.count()).select_from(Event)) == 3
    assert purge(session_factory, encryptor_of(settings), options, now=now).contexts_purged == 0
