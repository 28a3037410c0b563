"""POST /api/v1/consent: recording, idempotency, validation (nothing stored), erased people, merges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.auth.services import create_api_key
from hub.consent.models import ConsentRecord
from hub.profiles.models import Profile


@pytest.fixture
def ingest_key(db_session: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(db_session, 'shop backend', 'ingest').secret}"}


@pytest.fixture
def admin_key(db_session: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(db_session, 'privacy team', 'admin').secret}"}


def body(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "user": {"email": "Ann@Example.com"},
        "purposes": {"ad_user_data": "granted", "ad_personalization": "denied"},
        "collected_at": "2026-11-28T09:59:00Z",
        "source": "api",
        "context": {"region": "FR"},
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


def count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_records_then_repeats(client: FlaskClient, ingest_key: dict[str, str], db_session: Session) -> None:
    first = client.post("/api/v1/consent", json=body(), headers=ingest_key)
    assert first.status_code == 201, first.get_json()
    answer = first.get_json()
    assert answer["status"] == "recorded"
    assert answer["created_profile"] is True
    assert sorted((r["purpose"], r["status"]) for r in answer["records"]) == [
        ("ad_personalization", "denied"),
        ("ad_user_data", "granted"),
    ]
    again = client.post("/api/v1/consent", json=body(), headers=ingest_key)
    assert again.status_code == 200
    assert again.get_json()["status"] == "duplicate"
    assert again.get_json()["records"] == answer["records"]
    assert count(db_session, ConsentRecord) == 2
    record = db_session.scalar(select(ConsentRecord).limit(1))
    assert (record.source, record.region) == ("api", "FR")
    assert record.source_event_id == answer["event_id"]
    assert answer["event_id"].startswith("sha256:")
    assert set(record.proof) == {"request_sha256", "api_key_id"}


def test_event_id_is_the_idempotency_key(client: FlaskClient, ingest_key: dict[str, str], db_session: Session) -> None:
    first = client.post("/api/v1/consent", json=body(event_id="c-1", source="crm"), headers=ingest_key)
    assert first.status_code == 201
    changed = body(event_id="c-1", source="crm", collected_at="2026-11-28T10:30:00Z")
    assert client.post("/api/v1/consent", json=changed, headers=ingest_key).status_code == 200
    assert {r.source for r in db_session.scalars(select(ConsentRecord))} == {"api:crm"}
    assert count(db_session, ConsentRecord) == 2


def test_optional_fields_are_stored(client: FlaskClient, ingest_key: dict[str, str], db_session: Session) -> None:
    document = body(
        collected_at=1764323940,
        expires_at="2027-12-28T09:59:00+01:00",
        legal_basis="consent",
        regulation="gdpr",
        notice_version="privacy-v7",
    )
    assert client.post("/api/v1/consent", json=document, headers=ingest_key).status_code == 201
    record = db_session.scalar(select(ConsentRecord).limit(1))
    assert record.collected_at == datetime.fromtimestamp(1764323940, tz=UTC)
    assert record.expires_at == datetime(2027, 12, 28, 8, 59, tzinfo=UTC)
    assert (record.legal_basis, record.regulation, record.notice_version) == ("consent", "gdpr", "privacy-v7")


FUTURE = (datetime.now(UTC) + timedelta(hours=1)).isoformat()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"purposes": {"ad_user_data": "granted", "nope": "granted"}}, "purposes.nope"),
        ({"purposes": {"ad_user_data": "yes"}}, "purposes.ad_user_data"),
        ({"purposes": {}}, "purposes"),
        ({"collected_at": "yesterday"}, "collected_at"),
        ({"collected_at": "2026-11-28T09:59:00"}, "collected_at"),  # no zone
        ({"collected_at": FUTURE}, "collected_at"),
        ({"expires_at": "2026-11-28T09:00:00Z"}, "expires_at"),
        ({"user": {"fbp": "not-an-fbp"}}, "user.fbp"),
        ({"user": {"first_name": "Ann"}}, "user"),
        ({"user": {"email": "not-an-email"}}, "user.email"),
        ({"legal_basis": "because"}, "legal_basis"),
        ({"source": "Has Spaces"}, "source"),
        ({"context": {"region": "Atlantis"}}, "context.region"),
        ({"event_id": ""}, "event_id"),
        ({"extra": 1}, "extra"),
        ({"collected_at": None}, "collected_at"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_stores_nothing(
    client: FlaskClient, ingest_key: dict[str, str], db_session: Session, changes: dict[str, Any], field: str
) -> None:
    document = body()
    document.update(changes)
    document = {k: v for k, v in document.items() if v is not None}
    response = client.post("/api/v1/consent", json=document, headers=ingest_key)
    assert response.status_code == 400, response.get_json()
    assert field in response.get_json()["error"]["fields"]
    assert count(db_session, ConsentRecord) == 0
    assert count(db_session, Profile) == 0


def test_weak_identifier_nobody_holds_is_400(client: FlaskClient, ingest_key: dict[str, str]) -> None:
    response = client.post(
        "/api/v1/consent", json=body(user={"fbp": "fb.1.1764300000000.123456789"}), headers=ingest_key
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "no_identifier"


def test_authentication_is_required(client: FlaskClient) -> None:
    assert client.post("/api/v1/consent", json=body()).status_code == 401


def test_erased_person_is_422_and_not_recreated(
    client: FlaskClient, ingest_key: dict[str, str], admin_key: dict[str, str], db_session: Session
) -> None:
    profile_id = client.post("/api/v1/consent", json=body(), headers=ingest_key).get_json()["profile_id"]
    assert client.delete(f"/api/v1/profiles/{profile_id}", headers=admin_key).status_code == 200
    response = client.post("/api/v1/consent", json=body(event_id="after"), headers=ingest_key)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "subject_erased"
    assert count(db_session, Profile) == 1
    assert count(db_session, ConsentRecord) == 2  # the evidence from before the erasure, pseudonymised


def test_profile_shows_the_most_restrictive_consent_after_a_merge(
    client: FlaskClient, ingest_key: dict[str, str], admin_key: dict[str, str]
) -> None:
    phone = {"phone": "+4791234567"}
    email = {"email": "ann@example.com"}
    client.post(
        "/api/v1/consent",
        json=body(user=phone, purposes={"ad_user_data": "denied"}, collected_at="2026-11-28T09:00:00Z"),
        headers=ingest_key,
    )
    client.post(
        "/api/v1/consent",
        json=body(user=email, purposes={"ad_user_data": "granted"}, collected_at="2026-11-28T09:30:00Z"),
        headers=ingest_key,
    )
    merged = client.post("/api/v1/identify", json={"user": {**email, **phone}}, headers=ingest_key).get_json()
    assert merged["merged"]
    profile = client.get(f"/api/v1/profiles/{merged['profile_id']}", headers=admin_key).get_json()
    assert profile["consent"]["ad_user_data"]["status"] == "denied"
    assert profile["consent"]["ad_user_data"]["source"] == "merge"
