"""The profiles JSON API: identify, read, look up, export, erase; authentication and bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.auth.services import create_api_key
from hub.consent.models import ConsentRecord
from hub.events.models import Event
from hub.profiles.models import Identity, Profile, SuppressedIdentifier
from hub.profiles.normalize import sha256_hex

ANN = {
    "email": "Ann@Example.com",
    "phone": "+1 650 555 1212",
    "first_name": "Ann",
    "last_name": "Lee",
    "city": "San Francisco",
    "state": "CA",
    "zip": "94105",
    "country": "US",
}


@pytest.fixture
def ingest_key(db_session: Session) -> dict[str, str]:
    key = create_api_key(db_session, "shop backend", "ingest")
    return {"Authorization": f"Bearer {key.secret}"}


@pytest.fixture
def admin_key(db_session: Session) -> dict[str, str]:
    key = create_api_key(db_session, "privacy team", "admin")
    return {"Authorization": f"Bearer {key.secret}"}


def identify(client: FlaskClient, headers: dict[str, str], user: dict[str, Any], **extra: Any) -> Any:
    return client.post("/api/v1/identify", json={"user": user, **extra}, headers=headers)


def count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


# -- identify ---------------------------------------------------------------------------------------------


def test_identify_creates_then_finds(client: FlaskClient, ingest_key: dict[str, str]) -> None:
    first = identify(client, ingest_key, ANN, context={"region": "US-CA"})
    assert first.status_code == 200
    body = first.get_json()
    assert body["created"] is True
    assert body["merged"] == []
    assert body["notes"] == []
    again = identify(client, ingest_key, {"email": "ann@example.com"})
    assert again.get_json()["profile_id"] == body["profile_id"]
    assert again.get_json()["created"] is False


def test_identify_reports_merges(client: FlaskClient, ingest_key: dict[str, str]) -> None:
    a = identify(client, ingest_key, {"email": "a@shop.example"}).get_json()["profile_id"]
    b = identify(client, ingest_key, {"phone": "+4791234567"}).get_json()["profile_id"]
    both = identify(client, ingest_key, {"email": "a@shop.example", "phone": "+4791234567"}).get_json()
    assert {both["profile_id"], *both["merged"]} == {a, b}


def test_identify_external_id_conflict_is_409_and_stores_nothing(
    client: FlaskClient, ingest_key: dict[str, str], db_session: Session
) -> None:
    identify(client, ingest_key, {"external_id": "crm-1", "email": "one@shop.example"})
    identify(client, ingest_key, {"external_id": "crm-2", "phone": "+4791234567"})
    response = identify(client, ingest_key, {"email": "one@shop.example", "phone": "+4791234567"})
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "identity_conflict"
    assert "user.external_id" in error["fields"]
    assert count(db_session, Profile) == 2
    assert count(db_session, Identity) == 4


def test_identify_blocklisted_value_is_noted(client: FlaskClient, ingest_key: dict[str, str]) -> None:
    body = identify(client, ingest_key, {"email": "test@test.com"}).get_json()
    assert body["profile_id"] is None
    assert body["notes"][0].startswith("user.email: ignored")


def test_identify_suppressed_person(
    client: FlaskClient, ingest_key: dict[str, str], admin_key: dict[str, str], db_session: Session
) -> None:
    pid = identify(client, ingest_key, {"email": "gone@shop.example"}).get_json()["profile_id"]
    assert client.delete(f"/api/v1/profiles/{pid}", headers=admin_key).status_code == 200
    body = identify(client, ingest_key, {"email": "gone@shop.example"}).get_json()
    assert body["suppressed"] is True
    assert body["profile_id"] is None
    assert count(db_session, Identity) == 0


@pytest.mark.parametrize(
    ("payload", "status", "code", "field"),
    [
        ('{"user": {"email": "a@b.co"}', 400, "invalid_json", None),
        ("[1, 2]", 400, "invalid_body", None),
        ('"text"', 400, "invalid_body", None),
        ("", 400, "invalid_json", None),
        ('{"user": {"email": NaN}}', 400, "invalid_json", None),
        ('{"user": {"email": "a@shop.example"}, "extra": 1}', 400, "unknown_fields", "extra"),
        ('{"user": {"email": "a@shop.example", "nickname": "x"}}', 400, "unknown_fields", "user.nickname"),
        ('{"user": {"email": "a@shop.example"}, "context": {"gpc": true}}', 400, "unknown_fields", "context.gpc"),
        ('{"context": {"region": "DE"}}', 400, "missing_fields", "user"),
        ('{"user": ["a@shop.example"]}', 400, "invalid_field", "user"),
        ('{"user": {"email": "a@shop.example"}, "context": "DE"}', 400, "invalid_field", "context"),
        ('{"user": {"email": "not-an-email"}}', 400, "invalid_fields", "user.email"),
        ('{"user": {"email": 42}}', 400, "invalid_fields", "user.email"),
        ('{"user": {"phone": "030 901820"}}', 400, "invalid_fields", "user.phone"),
        (
            '{"user": {"email": "a@shop.example"}, "context": {"region": "Mars"}}',
            400,
            "invalid_fields",
            "context.region",
        ),
        ('{"user": {"first_name": "Ann"}}', 400, "no_identifier", "user"),
        ('{"user": {}}', 400, "no_identifier", "user"),
    ],
)
def test_identify_bad_input_is_a_4xx_json_error_and_stores_nothing(
    client: FlaskClient,
    ingest_key: dict[str, str],
    db_session: Session,
    payload: str,
    status: int,
    code: str,
    field: str | None,
) -> None:
    response = client.post("/api/v1/identify", data=payload, headers={**ingest_key, "Content-Type": "application/json"})
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["message"]
    if field is not None:
        assert field in error["fields"]
    assert count(db_session, Profile) == 0


def test_identify_valid_email_with_bad_phone_stores_nothing(
    client: FlaskClient, ingest_key: dict[str, str], db_session: Session
) -> None:
    response = identify(client, ingest_key, {"email": "ann@shop.example", "phone": "12"})
    assert response.status_code == 400
    assert set(response.get_json()["error"]["fields"]) == {"user.phone"}
    assert count(db_session, Profile) == 0


def test_body_over_the_limit_is_413(client: FlaskClient, ingest_key: dict[str, str]) -> None:
    big = json.dumps({"user": {"email": "a@shop.example", "user_agent": "x" * 10_000_000}})
    response = client.post("/api/v1/identify", data=big, headers={**ingest_key, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert "HUB_MAX_BODY_BYTES" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/v1/identify"),
        ("get", "/api/v1/profiles/abc"),
        ("get", "/api/v1/profiles?email=a@shop.example"),
        ("get", "/api/v1/profiles/abc/export"),
        ("delete", "/api/v1/profiles/abc"),
    ],
)
def test_every_endpoint_needs_a_key(client: FlaskClient, method: str, path: str) -> None:
    assert getattr(client, method)(path, json={"user": {"email": "a@shop.example"}}).status_code == 401
    bad = {"Authorization": "Bearer hub_not-a-key"}
    assert getattr(client, method)(path, json={}, headers=bad).status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/profiles/abc"),
        ("get", "/api/v1/profiles?email=a@shop.example"),
        ("get", "/api/v1/profiles/abc/export"),
        ("delete", "/api/v1/profiles/abc"),
    ],
)
def test_profile_reads_and_erasure_need_admin_scope(
    client: FlaskClient, ingest_key: dict[str, str], method: str, path: str
) -> None:
    response = getattr(client, method)(path, headers=ingest_key)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"


def test_admin_key_may_identify(client: FlaskClient, admin_key: dict[str, str]) -> None:
    assert identify(client, admin_key, {"email": "a@shop.example"}).status_code == 200


# -- reading ----------------------------------------------------------------------------------------------


def _add_event(session: Session, profile_id: str, event_id: str, status: str) -> None:
    now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    session.add(
        Event(
            event_id=event_id,
            source_event="order_completed",
            profile_id=profile_id,
            occurred_at=now,
            received_at=now,
            status=status,
        )
    )
    session.flush()


def test_get_profile_shows_masked_identities_traits_and_events(
    client: FlaskClient, ingest_key: dict[str, str], admin_key: dict[str, str], db_session: Session
) -> None:
    pid = identify(client, ingest_key, ANN, context={"region": "US-CA"}).get_json()["profile_id"]
    _add_event(db_session, pid, "ord-1", "sent")
    response = client.get(f"/api/v1/profiles/{pid}", headers=admin_key)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["id"] == pid
    assert body["merged_into"] is None
    assert body["region"] == "US-CA"
    assert body["traits"] == {
        "fn": "ann",
        "ln": "lee",
        "ct": "sanfrancisco",
        "st": "ca",
        "zp": "94105",
        "country": "us",
    }
    identities = {i["kind"]: i for i in body["identities"]}
    assert identities["email"]["hash"] == sha256_hex("ann@example.com")
    assert identities["email"]["value_masked"] == "a***@example.com"
    assert identities["phone"]["value_masked"] == "*******1212"
    assert "ann@example.com" not in response.get_data(as_text=True)
    assert [(e["event_id"], e["status"]) for e in body["recent_events"]] == [("ord-1", "sent")]
    assert isinstance(body["consent"], dict)


def test_merged_away_id_answers_with_the_root(
    client: FlaskClient, ingest_key: dict[str, str], admin_key: dict[str, str], db_session: Session
) -> None:
    a = identify(client, ingest_key, {"email": "a@shop.example"}).get_json()["profile_id"]
    b = identify(client, ingest_key, {"phone": "+4791234567"}).get_json()["profile_id"]
    _add_event(db_session, b, "evt-on-b", "pending")
    merged = identify(client, ingest_key, {"email": "a@shop.example", "phone": "+4791234567"}).get_json()
    root, loser = merged["profile_id"], merged["merged"][0]
    assert {root, loser} == {a, b}
    body = client.get(f"/api/v1/profiles/{loser}", headers=admin_key).get_json()
    assert body["id"] == root
    assert body["requested_id"] == loser
    assert body["merged_into"] == root
    assert body["merged_profiles"] == [loser]
    assert {i["kind"] for i in body["identities"]} == {"email", "phone"}
    assert [e["event_id"] for e in body["recent_events"]] == ["evt-on-b"]


def test_unknown_profile_is_404(client: FlaskClient, admin_key: dict[str, str]) -> None:
    for method, path in (
        ("get", "/api/v1/profiles/nope"),
        ("get", "/api/v1/profiles/nope/export"),
        ("delete", "/api/v1/profiles/nope"),
    ):
        response = getattr(client, method)(path, headers=admin_key)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("email=%20ANN%40example.com", True),
        ("phone=%2B1%20(650)%20555-1212", True),
        ("phone=6505551212&region=US", True),
        ("external_id=crm-42", True),
        ("external_id=CRM-42", False),
        ("email=nobody%40example.com", False),
    ],
)
def test_lookup_normalizes_the_query(
    client: FlaskClient, ingest_key: dict[str, str], admin_key: dict[str, str], query: str, found: bool
) -> None:
    pid = identify(client, ingest_key, {**ANN, "external_id": "crm-42"}).get_json()["profile_id"]
    response = client.get(f"/api/v1/profiles?{query}", headers=admin_key)
    if found:
        assert response.status_code == 200
        assert response.get_json()["id"] == pid
    else:
        assert response.status_code == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("email=not-an-email", "email"),
        ("phone=12", "phone"),
        ("phone=6505551212", "phone"),
        ("email=a%40b.co&phone=%2B4791234567", "email"),
        ("", "email"),
        ("name=ann", "name"),
        ("phone=6505551212&region=Atlantis", "region"),
    ],
)
def test_lookup_bad_query_is_400_naming_the_parameter(
    client: FlaskClient, admin_key: dict[str, str], query: str, field: str
) -> None:
    response = client.get(f"/api/v1/profiles?{query}", headers=admin_key)
    assert response.status_code == 400
    assert field in response.get_json()["error"]["fields"]


def test_export_holds_everything_decrypted(
    client: FlaskClient, ingest_key: dict[str, str], admin_key: dict[str, str], db_session: Session
) -> None:
    a = identify(client, ingest_key, {"email": "a@shop.example", "first_name": "Ann"}).get_json()["profile_id"]
    identify(client, ingest_key, {"phone": "+4791234567", "last_name": "Lee"})
    merged = identify(client, ingest_key, {"email": "a@shop.example", "phone": "+4791234567"}).get_json()
    root = merged["profile_id"]
    _add_event(db_session, a, "ord-1", "sent")
    db_session.add(
        ConsentRecord(
            profile_id=merged["merged"][0],
            purpose="ad_user_data",
            status="granted",
            collected_at=datetime(2026, 11, 28, 9, 0, tzinfo=UTC),
            source="api",
            source_event_id="c-1",
            proof={"payload_sha256": "ab" * 32},
        )
    )
    db_session.flush()
    response = client.get(f"/api/v1/profiles/{a}/export", headers=admin_key)
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    body = response.get_json()
    assert body["id"] == root
    assert {i["value"] for i in body["identities"]} == {"a@shop.example", "4791234567"}
    assert body["traits"] == {"fn": "ann", "ln": "lee"}
    assert len(body["profiles"]) == 2
    assert len(body["merges"]) == 1
    assert body["merges"][0]["details"]["loser_traits"] in ({"fn": "ann"}, {"ln": "lee"})
    assert [r["purpose"] for r in body["consent_records"]] == ["ad_user_data"]
    assert [e["event_id"] for e in body["events"]] == ["ord-1"]


def test_delete_erases_and_summarises(
    client: FlaskClient, ingest_key: dict[str, str], admin_key: dict[str, str], db_session: Session
) -> None:
    pid = identify(client, ingest_key, ANN).get_json()["profile_id"]
    _add_event(db_session, pid, "ord-1", "pending")
    _add_event(db_session, pid, "ord-2", "sent")
    response = client.delete(f"/api/v1/profiles/{pid}?reason=ticket%2077", headers=admin_key)
    assert response.status_code == 200
    erased = response.get_json()["erased"]
    assert erased["profile_id"] == pid
    assert erased["removed"]["identities"] == 2
    assert erased["removed"]["pending_events"] == 1
    assert erased["kept"]["suppressed_identifiers_added"] == 2
    assert erased["kept"]["profile_tombstones"] == 1
    reasons = set(db_session.scalars(select(SuppressedIdentifier.reason)))
    assert reasons == {"ticket 77"}
    after = client.get(f"/api/v1/profiles/{pid}", headers=admin_key).get_json()
    assert after["erased_at"] is not None
    assert after["identities"] == []
    assert after["traits"] == {}
