"""POST /api/v1/events and GET /api/v1/events/{event_id}: per-event results, storage, duplicates, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.auth.services import create_api_key
from hub.encryption import FieldEncryptor
from hub.events.models import Event
from hub.profiles.models import Identity, Profile
from hub.profiles.normalize import sha256_hex

ANN = {"email": "Ann@Example.com", "phone": "+1 650 555 1212", "external_id": "crm-42"}


@pytest.fixture
def ingest_key(db_session: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(db_session, 'shop', 'ingest').secret}"}


def now_iso(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def post(client: FlaskClient, headers: dict[str, str], body: Any, **extra_headers: str) -> Any:
    return client.post("/api/v1/events", json=body, headers={**headers, **extra_headers})


def count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def stored(session: Session, event_id: str) -> Event:
    session.expire_all()
    return session.execute(select(Event).where(Event.event_id == event_id)).scalar_one()


def user_data(app: Flask, event: Event) -> dict[str, Any]:
    encryptor: FieldEncryptor = app.extensions["hub.encryptor"]
    assert event.user_data_encrypted is not None
    return encryptor.decrypt_json(event.user_data_encrypted)


def test_single_contract_event_is_accepted_and_stored(
    app: Flask, client: FlaskClient, ingest_key: dict[str, str], db_session: Session
) -> None:
    body = {
        "event_id": "ord-1001",
        "event": "order_completed",
        "occurred_at": now_iso(-timedelta(minutes=1)),
        "action_source": "website",
        "source_url": "https://shop.example/thanks",
        "user": {**ANN, "ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0 X", "fbp": "fb.1.1764300000000.1"},
        "properties": {"total": 59.9, "currency": "USD"},
        "context": {"region": "us-ca", "gpc": False},
    }
    response = post(client, ingest_key, body)
    assert response.status_code == 202
    [result] = response.get_json()["results"]
    assert result["status"] == "accepted"
    assert result["event_id"] == "ord-1001"
    assert result["errors"] == {}
    assert result["index"] == 0
    event = stored(db_session, "ord-1001")
    assert event.profile_id == result["profile_id"]
    assert event.status == "pending"
    assert event.region == "US-CA"
    assert event.gpc is False
    assert event.suppressed is False
    assert event.properties == {"total": 59.9, "currency": "USD"}
    settings = app.extensions["hub.settings"]
    assert event.next_attempt_at == event.received_at + timedelta(seconds=settings.consent_grace_seconds)
    data = user_data(app, event)
    assert data["hashes"]["em"] == sha256_hex("ann@example.com")
    assert data["hashes"]["ph"] == sha256_hex("16505551212")
    assert data["browser"] == {
        "client_ip_address": "203.0.113.7",
        "client_user_agent": "Mozilla/5.0 X",
        "fbp": "fb.1.1764300000000.1",
    }
    # Nothing personal in plain columns (a Fernet token is URL-safe base64: "@" and "." never appear in one, while a
    # short word turns up now and then by chance).
    assert "ann@example.com" not in event.user_data_encrypted
    assert "@" not in event.user_data_encrypted
    profile_ids = db_session.scalars(select(Identity.profile_id).where(Identity.kind == "email")).all()
    assert profile_ids == [result["profile_id"]]


def test_generated_event_id_and_anonymous_event(
    client: FlaskClient, ingest_key: dict[str, str], db_session: Session
) -> None:
    response = post(client, ingest_key, {"event": "page_view", "occurred_at": int(datetime.now(UTC).timestamp())})
    [result] = response.get_json()["results"]
    assert result["status"] == "accepted"
    assert len(result["event_id"]) == 32
    assert result["profile_id"] is None
    event = stored(db_session, result["event_id"])
    assert event.user_data_encrypted is None
    assert event.profile_id is None


def test_fbc_is_built_from_fbclid_when_no_cookie(
    app: Flask, client: FlaskClient, ingest_key: dict[str, str], db_session: Session
) -> None:
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    post(
        client,
        ingest_key,
        {
            "event_id": "lp-1",
            "event": "page_view",
            "occurred_at": occurred.isoformat(),
            "source_url": "https://shop.example/landing?utm=x&fbclid=IwAR2xYz_AbC",
        },
    )
    # Meta [FBC]: subdomain index 1, creation time in ms, fbclid unaltered (case kept).
    assert user_data(app, stored(db_session, "lp-1"))["browser"]["fbc"] == (
        f"fb.1.{int(occurred.timestamp() * 1000)}.IwAR2xYz_AbC"
    )
    post(
        client,
        ingest_key,
        {
            "event_id": "lp-2",
            "event": "page_view",
            "occurred_at": occurred.isoformat(),
            "source_url": "https://shop.example/landing?fbclid=Other",
            "user": {"fbc": "fb.1.1764300000000.FromCookie"},
        },
    )
    assert user_data(app, stored(db_session, "lp-2"))["browser"]["fbc"] == "fb.1.1764300000000.FromCookie"


def test_browser_posts_take_ip_user_agent_and_sec_gpc_from_the_request(
    app: Flask, client: FlaskClient, ingest_key: dict[str, str], db_session: Session
) -> None:
    body = {"event_id": "b-1", "event": "page_view", "occurred_at": now_iso(), "user": {"fbp": "fb.1.1764300000000.9"}}
    headers = {"X-Hub-Client": "browser", "User-Agent": "Mozilla/5.0 Browser", "Sec-GPC": "1"}
    client.post(
        "/api/v1/events", json=body, headers={**ingest_key, **headers}, environ_base={"REMOTE_ADDR": "198.51.100.4"}
    )
    event = stored(db_session, "b-1")
    assert event.gpc is True
    assert user_data(app, event)["browser"] == {
        "fbp": "fb.1.1764300000000.9",
        "client_ip_address": "198.51.100.4",
        "client_user_agent": "Mozilla/5.0 Browser",
    }
    # context.gpc wins over the header; a server-to-server post never gets the backend's address attached.
    body = {"event_id": "s-1", "event": "page_view", "occurred_at": now_iso(), "context": {"gpc": False}}
    client.post(
        "/api/v1/events",
        json=body,
        headers={**ingest_key, "User-Agent": "python-requests", "Sec-GPC": "1"},
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    event = stored(db_session, "s-1")
    assert event.gpc is False
    assert event.user_data_encrypted is None


def test_sec_gpc_header_alone_sets_gpc_and_absence_leaves_it_unknown(
    client: FlaskClient, ingest_key: dict[str, str], db_session: Session
) -> None:
    post(client, ingest_key, {"event_id": "g-1", "event": "x", "occurred_at": now_iso()}, **{"Sec-GPC": "1"})
    post(client, ingest_key, {"event_id": "g-2", "event": "x", "occurred_at": now_iso()})
    assert stored(db_session, "g-1").gpc is True
    assert stored(db_session, "g-2").gpc is None


def test_duplicates_change_nothing(client: FlaskClient, ingest_key: dict[str, str], db_session: Session) -> None:
    first = post(client, ingest_key, {"event_id": "d-1", "event": "a", "occurred_at": now_iso(), "user": ANN})
    profile_id = first.get_json()["results"][0]["profile_id"]
    before = stored(db_session, "d-1")
    again = post(
        client,
        ingest_key,
        {"event_id": "d-1", "event": "b", "occurred_at": now_iso(), "user": {"email": "someone@else.example"}},
    )
    assert again.status_code == 202
    assert again.get_json()["results"] == [
        {"index": 0, "event_id": "d-1", "status": "duplicate", "profile_id": profile_id, "errors": {}}
    ]
    after = stored(db_session, "d-1")
    assert (after.source_event, after.received_at) == ("a", before.received_at)
    assert count(db_session, Profile) == 1  # the repeat's new email created nobody


def test_rejected_event_stores_nothing(client: FlaskClient, ingest_key: dict[str, str], db_session: Session) -> None:
    response = post(
        client,
        ingest_key,
        {"event_id": "r-1", "event": "a", "occurred_at": now_iso(), "user": {**ANN, "phone": "12"}},
    )
    assert response.status_code == 202
    [result] = response.get_json()["results"]
    assert result["status"] == "rejected"
    assert result["event_id"] == "r-1"
    assert result["profile_id"] is None
    assert set(result["errors"]) == {"user.phone"}
    assert count(db_session, Event) == 0
    assert count(db_session, Profile) == 0
    assert count(db_session, Identity) == 0


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"occurred_at": "2026-11-28T10:00:00Z"}, "event"),
        ({"event": "a"}, "occurred_at"),
        ({"event": "a", "occurred_at": "2026-11-28T10:00:00"}, "occurred_at"),
        ({"event": "a", "occurred_at": 1795860000000}, "occurred_at"),
        ({"event": "a", "occurred_at": 1, "action_source": "web"}, "action_source"),
        ({"event": "a", "occurred_at": 1795860000, "user": {"email": "not-an-email"}}, "user.email"),
        ({"event": "a", "occurred_at": 1795860000, "user": {"mail": "a@b.example"}}, "user.mail"),
        ({"event": "a", "occurred_at": 1795860000, "user": {"fbp": "cookie"}}, "user.fbp"),
        ({"event": "a", "occurred_at": 1795860000, "user": {"ip_address": "300.1.1.1"}}, "user.ip_address"),
        ({"event": "a", "occurred_at": 1795860000, "context": {"region": "Atlantis"}}, "context.region"),
        ({"event": "a", "occurred_at": 1795860000, "context": {"region": "EEA"}}, "context.region"),
        ({"event": "a", "occurred_at": 1795860000, "source_url": "shop.example"}, "source_url"),
        ({"event": "a", "occurred_at": 1795860000, "extra": 1}, "extra"),
        ("not an object", "$"),
    ],
)
def test_bad_events_name_the_field(
    client: FlaskClient, ingest_key: dict[str, str], db_session: Session, event: Any, field: str
) -> None:
    response = post(client, ingest_key, {"events": [event]})
    assert response.status_code == 202
    [result] = response.get_json()["results"]
    assert result["status"] == "rejected"
    assert field in result["errors"], result["errors"]
    assert count(db_session, Event) == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"{", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_body"),
        (b'"event"', 400, "invalid_body"),
        (b'{"events": {}}', 400, "invalid_field"),
        (b'{"events": []}', 400, "invalid_field"),
        (b'{"events": [], "user": {}}', 400, "unknown_fields"),
        (b'{"event": "a", "occurred_at": NaN}', 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
    ],
)
def test_bad_bodies_are_4xx(
    client: FlaskClient, ingest_key: dict[str, str], body: bytes, status: int, code: str
) -> None:
    response = client.post("/api/v1/events", data=body, headers={**ingest_key, "Content-Type": "application/json"})
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_more_than_1000_events_is_413(client: FlaskClient, ingest_key: dict[str, str], db_session: Session) -> None:
    events = [{"event": "a", "occurred_at": 1795860000} for _ in range(1001)]
    response = post(client, ingest_key, {"events": events})
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "too_many_events"
    assert "1000" in error["message"]
    assert "events" in error["fields"]
    assert count(db_session, Event) == 0


def test_authentication_is_required(client: FlaskClient) -> None:
    assert client.post("/api/v1/events", json={"event": "a", "occurred_at": 1}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/api/v1/events", json={"event": "a", "occurred_at": 1}, headers=wrong).status_code == 401
    assert client.get("/api/v1/events/x").status_code == 401


def test_batch_of_1000_with_valid_invalid_and_duplicate_events(
    app: Flask, client: FlaskClient, ingest_key: dict[str, str], db_session: Session
) -> None:
    # Pre-existing events that later batch entries repeat.
    post(
        client,
        ingest_key,
        {"events": [{"event_id": f"old-{i}", "event": "a", "occurred_at": now_iso()} for i in range(5)]},
    )
    events: list[Any] = []
    expected: list[tuple[str, str | None, str | None]] = []  # (status, event_id, error field)
    for i in range(1000):
        kind = i % 10
        if kind in (0, 1, 2, 3, 4):
            events.append(
                {
                    "event_id": f"ok-{i}",
                    "event": "order_completed",
                    "occurred_at": now_iso(-timedelta(seconds=i)),
                    "user": {"email": f"person{i % 37}@shop.example", "external_id": f"crm-{i % 37}"},
                    "properties": {"n": i},
                    "context": {"region": "DE"},
                }
            )
            expected.append(("accepted", f"ok-{i}", None))
        elif kind == 5:
            events.append({"event_id": f"bad-{i}", "event": "", "occurred_at": now_iso()})
            expected.append(("rejected", f"bad-{i}", "event"))
        elif kind == 6:
            events.append({"event_id": f"bad-{i}", "event": "a", "occurred_at": now_iso(), "user": {"phone": "1"}})
            expected.append(("rejected", f"bad-{i}", "user.phone"))
        elif kind == 7:
            # Repeats an accepted event earlier in this batch.
            events.append({"event_id": f"ok-{i - 7}", "event": "other", "occurred_at": now_iso()})
            expected.append(("duplicate", f"ok-{i - 7}", None))
        elif kind == 8:
            events.append({"event_id": f"old-{i % 5}", "event": "a", "occurred_at": now_iso()})
            expected.append(("duplicate", f"old-{i % 5}", None))
        else:
            events.append(17)
            expected.append(("rejected", None, "$"))
    response = post(client, ingest_key, {"events": events})
    assert response.status_code == 202
    results = response.get_json()["results"]
    assert len(results) == 1000
    for index, (result, (status, event_id, field)) in enumerate(zip(results, expected, strict=True)):
        assert result["index"] == index
        assert result["status"] == status, (index, result)
        assert result["event_id"] == event_id
        if field is None:
            assert result["errors"] == {}
        else:
            assert field in result["errors"]
    by_id = {r["event_id"]: r for r in results if r["status"] == "accepted"}
    # Every valid event is stored exactly once with its own profile; nothing invalid is stored.
    db_session.expire_all()
    rows = {e.event_id: e for e in db_session.scalars(select(Event).where(Event.event_id.like("ok-%")))}
    assert set(rows) == set(by_id)
    assert len(rows) == 500
    assert all(rows[eid].profile_id == r["profile_id"] and r["profile_id"] for eid, r in by_id.items())
    assert all(rows[eid].source_event == "order_completed" for eid in rows)  # duplicates changed nothing
    assert db_session.scalar(select(func.count()).select_from(Event).where(Event.event_id.like("bad-%"))) == 0
    assert count(db_session, Event) == 505
    assert count(db_session, Profile) == 37
    # The same person always resolves to the same profile.
    assert len({r["profile_id"] for r in by_id.values()}) == 37
    assert app.extensions["hub.metrics"].events_ingested.labels(result="accepted")._value.get() == 505


def test_get_event_explains_status(client: FlaskClient, ingest_key: dict[str, str], db_session: Session) -> None:
    post(client, ingest_key, {"event_id": "q-1", "event": "order_completed", "occurred_at": now_iso(), "user": ANN})
    response = client.get("/api/v1/events/q-1", headers=ingest_key)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["status"] == "pending"
    assert body["decision"] is None
    assert "grace period" in body["waiting"]
    assert body["attempts"] == 0
    assert body["delivery"]["sent_at"] is None
    assert "user" not in body
    assert "user_data" not in body
    event = stored(db_session, "q-1")
    event.decision = {"outcome": "block", "reason_code": "unmapped", "explanation": "Blocked: no mapping."}
    event.status = "blocked"
    event.decided_at = datetime.now(UTC)
    db_session.flush()
    body = client.get("/api/v1/events/q-1", headers=ingest_key).get_json()
    assert body["status"] == "blocked"
    assert body["decision"]["reason_code"] == "unmapped"
    assert body["waiting"] is None


def test_get_unknown_event_is_404_json(client: FlaskClient, ingest_key: dict[str, str]) -> None:
    response = client.get("/api/v1/events/nope", headers=ingest_key)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_browser_snippet_is_served(client: FlaskClient) -> None:
    response = client.get("/static/hub.js")
    assert response.status_code == 200
    script = response.get_data(as_text=True)
    response.close()
    assert len(script.encode()) < 3072
    # The Pixel gets the same id as hub (Meta's dedup key), and browser posts identify themselves.
    assert "{ eventID: eventId }" in script
    assert '"X-Hub-Client": "browser"' in script
    assert "keepalive: true" in script
    assert "globalPrivacyControl" in script
