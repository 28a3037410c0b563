"""POST /webhooks/cmp/<source> through the real app: every adapter, every authenticator, the inbox, replays,
out-of-order deliveries, failures that keep the raw body, and erased subjects."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from hub.cmp.auth import sign_hmac
from hub.cmp.models import CmpInboxItem
from hub.cmp.services import cmp_identity, inbox_body
from hub.cmp.sources import create_source, update_source
from hub.consent.models import ConsentRecord
from hub.consent.services import add_purpose, current_consent, verify_projection
from hub.db import utcnow
from hub.encryption import FieldEncryptor
from hub.profiles.models import Identity, Profile
from hub.profiles.normalize import sha256_hex
from hub.profiles.services import erase_profile, find_profile_by_identity

SECRET = "s3cret-s3cret-s3cret-s3cret"
DIDOMI_IP = "35.159.1.63"
TC_ALL = "CQSU_AAQSU_AAAHABBENB4FgALMAAEBAAAYgABqAAAAA"  # policy 5, purposes 1, 3, 4, 7, 8
UC_DOC_TC = (
    "CQP6E8AQP6E8AAFADAENBlFkAHJAAEBAAIYgF5wBAABAAGAXeAvMFfYAYC7wF5gV9ADHQAYAAgr6FAAwABBX0kABgACCvoAA.YAAAAAAAAAAA"
)
GPP_SALE_OPTED_OUT = "DBABL~CVVaAAAAAABA"  # usnat: SaleOptOut 1


def generic_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "cmp-evt-123",
        "collected_at": "2026-11-28T09:59:00Z",
        "subject": {"email": "ann@example.com", "external_id": "crm-42"},
        "region": "DE",
        "purposes": {"ad_user_data": "granted", "ad_personalization": "denied"},
        "tc_string": None,
        "gpp_string": None,
        "gpc": False,
    }
    body.update(changes)
    return body


DIDOMI_EVENT = {
    "type": "event.created",
    "regulation": "gdpr",
    "parameters": {
        "entity": {
            "id": "evt_9c1f0b7e",
            "created_at": "2025-06-02T09:14:55Z",
            "organization_id": "acme",
            "regulation": "gdpr",
            "user": {"id": "d1f5a6c2-44aa-4d3e-9b0e-0c2d8e7f6a11", "organization_user_id": "crm-000123"},
            "consents": {
                "purposes": [
                    {"id": "cookies", "enabled": True},
                    {"id": "advertising_personalization", "enabled": False},
                    {"id": "measure_ad_performance", "enabled": True},
                ],
                "vendors": {"enabled": ["google", "c:facebook-xyz"], "disabled": []},
                "tcfcs": TC_ALL,
            },
        }
    },
}

USERCENTRICS = {
    "controller_id": "5b1f0e7a2c9d4e3f8a6b7c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f",
    "configuration_id": "AbCdEf123",
    "timestamp": 1748855695120,
    "consent_string": UC_DOC_TC,
    "ac_string": "2~43.89~dv.",
    "consents": [
        {"consent_status": True, "dps_id": "BJ59EidsWQ"},
        {"consent_status": False, "dps_id": "ko1w5PpFl"},
    ],
    "webhook_version": "v1",
}

KETCH = {
    "apiVersion": "consent/v1",
    "kind": "ConsentRequest",
    "metadata": {"uid": "0b4f6c3e-1f2a-4d5b-9c8e-7a6b5c4d3e2f", "tenant": "acme"},
    "request": {
        "property": "acme_web",
        "environment": "production",
        "regulation": "ccpa",
        "jurisdiction": "ca_ccpa",
        "identities": [
            {"identitySpace": "crm_id", "identityFormat": "raw", "identityValue": "000123"},
            {"identitySpace": "ketch_device", "identityFormat": "raw", "identityValue": "dev-77"},
        ],
        "purposes": {"targeted_advertising": "denied", "analytics": "granted"},
        "legalBasis": {"targeted_advertising": "consent_optout", "analytics": "disclosure"},
        "vendors": [],
        "collectedAt": 1748855695,
    },
}


@pytest.fixture
def encryptor(app: Flask) -> FieldEncryptor:
    return app.extensions["hub.encryptor"]


def make_source(session: Session, encryptor: FieldEncryptor, name: str, adapter: str, auth: str, **settings: Any):
    return create_source(
        session,
        encryptor,
        name=name,
        adapter=adapter,
        authenticator=auth,
        secret=SECRET,
        settings=settings,
        now=utcnow(),
    )


@pytest.fixture
def generic(db_session: Session, encryptor: FieldEncryptor):
    return make_source(db_session, encryptor, "shop-cmp", "generic", "hmac")


def raw(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def post_hmac(client: FlaskClient, name: str, body: Any, *, t: int | None = None, secret: str = SECRET, **kw: Any):
    data = raw(body)
    header = sign_hmac(secret.encode(), data, int(time.time()) if t is None else t)
    headers = {"X-Hub-Signature": header, "Content-Type": "application/json", **kw.pop("headers", {})}
    return client.post(f"/webhooks/cmp/{name}", data=data, headers=headers, **kw)


def bearer(token: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str = SECRET) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def count(session: Session, model: type, *where: Any) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def inbox(session: Session) -> list[CmpInboxItem]:
    session.expire_all()
    return list(session.scalars(select(CmpInboxItem).order_by(CmpInboxItem.id)))


def states(session: Session, profile_id: str) -> dict[str, str]:
    return {p: v["status"] for p, v in current_consent(session, profile_id, datetime.now(UTC)).items()}


# -- adapters ---------------------------------------------------------------------------------------------


def test_generic_delivery_records_consent_and_creates_the_profile(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, generic: Any
) -> None:
    body = generic_body()
    response = post_hmac(client, "shop-cmp", body)
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert (answer["status"], answer["records"]) == ("processed", 2)
    profile_id = answer["profile_id"]
    assert find_profile_by_identity(db_session, "email", sha256_hex("ann@example.com")) == profile_id
    assert states(db_session, profile_id) == {"ad_user_data": "granted", "ad_personalization": "denied"}

    [item] = inbox(db_session)
    assert item.status == "processed"
    assert item.event_key == "cmp-evt-123"
    assert b"ann@example.com" not in item.body  # encrypted at rest: the payload carries identifiers
    assert inbox_body(encryptor, item) == raw(body)
    assert "Authorization" not in item.headers

    records = list(db_session.scalars(select(ConsentRecord).where(ConsentRecord.profile_id == profile_id)))
    assert {r.source for r in records} == {"cmp:shop-cmp"}
    assert {r.source_event_id for r in records} == {"cmp-evt-123"}
    assert {r.region for r in records} == {"DE"}
    assert records[0].collected_at == datetime(2026, 11, 28, 9, 59, tzinfo=UTC)
    proof = records[0].proof
    assert proof["inbox_id"] == item.id
    assert proof["body_sha256"] == item.body_sha256
    assert "ann@example.com" not in json.dumps(proof)
    assert "crm-42" not in json.dumps(proof)
    assert verify_projection(db_session) == []


def test_generic_us_signals_become_opt_out_records(client: FlaskClient, db_session: Session, generic: Any) -> None:
    body = generic_body(
        id="evt-us",
        region="US-CA",
        purposes={"sale": "granted", "targeted_advertising": "granted"},
        gpp_string=GPP_SALE_OPTED_OUT,
        gpc=None,
    )
    answer = post_hmac(client, "shop-cmp", body).get_json()
    assert states(db_session, answer["profile_id"]) == {
        "sale": "denied",
        "sharing": "granted",
        "targeted_advertising": "granted",
    }
    gpc = generic_body(id="evt-gpc", collected_at="2026-11-28T10:00:00Z", purposes={}, gpc=True)
    post_hmac(client, "shop-cmp", gpc)
    assert states(db_session, answer["profile_id"])["targeted_advertising"] == "denied"
    record = db_session.scalar(select(ConsentRecord).where(ConsentRecord.source_event_id == "evt-us").limit(1))
    assert record.proof["gpp_string"] == GPP_SALE_OPTED_OUT


def test_didomi_bearer_ip_allow_list_and_cmp_identity(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor
) -> None:
    make_source(
        db_session,
        encryptor,
        "didomi",
        "didomi",
        "bearer",
        ip_allow_list=[DIDOMI_IP],
        purpose_map={
            "measure_ad_performance": "ad_user_data",
            "advertising_personalization": "ad_personalization",
            "c:facebook-xyz": "ad_user_data",
        },
    )
    response = client.post(
        "/webhooks/cmp/didomi", json=DIDOMI_EVENT, headers=bearer(), environ_base={"REMOTE_ADDR": DIDOMI_IP}
    )
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    profile_id = answer["profile_id"]
    # Explicit choices win; the TC string fills ad_storage and analytics_storage (purposes 1, 8 consented).
    assert states(db_session, profile_id) == {
        "ad_user_data": "granted",
        "ad_personalization": "denied",
        "ad_storage": "granted",
        "analytics_storage": "granted",
    }
    assert find_profile_by_identity(db_session, "external_id", sha256_hex("crm-000123")) == profile_id
    kind, value = cmp_identity("didomi", "didomi_user_id", "d1f5a6c2-44aa-4d3e-9b0e-0c2d8e7f6a11")
    assert kind == "cmp:didomi"
    assert find_profile_by_identity(db_session, kind, sha256_hex(value)) == profile_id
    record = db_session.scalar(select(ConsentRecord).where(ConsentRecord.profile_id == profile_id).limit(1))
    assert (record.regulation, record.proof["tc_string"]) == ("gdpr", TC_ALL)
    assert any("ignored vendor:google" in note for note in answer["notes"])


def test_usercentrics_controller_id_alone_creates_then_finds_a_profile(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor
) -> None:
    make_source(
        db_session,
        encryptor,
        "uc",
        "usercentrics",
        "basic",
        basic_username="hub",
        purpose_map={"BJ59EidsWQ": "analytics_storage", "ko1w5PpFl": "ad_user_data"},
    )
    first = client.post("/webhooks/cmp/uc", json=USERCENTRICS, headers=basic("hub"))
    assert first.status_code == 200, first.get_json()
    profile_id = first.get_json()["profile_id"]
    assert states(db_session, profile_id)["analytics_storage"] == "granted"
    assert states(db_session, profile_id)["ad_user_data"] == "denied"
    identity = db_session.scalar(select(Identity).where(Identity.profile_id == profile_id))
    assert identity.kind == "cmp:usercentrics"
    assert identity.value_hash == sha256_hex(USERCENTRICS["controller_id"])
    # A later change by the same browser lands on the same person (no event id: the body hash dedupes).
    later = {**USERCENTRICS, "timestamp": USERCENTRICS["timestamp"] + 60_000, "consents": [
        {"consent_status": True, "dps_id": "ko1w5PpFl"}
    ]}  # fmt: skip
    second = client.post("/webhooks/cmp/uc", json=later, headers=basic("hub"))
    assert second.get_json()["profile_id"] == profile_id
    assert states(db_session, profile_id)["ad_user_data"] == "granted"
    assert count(db_session, Profile) == 1


def test_ketch_identities_and_legal_basis(client: FlaskClient, db_session: Session, encryptor: FieldEncryptor) -> None:
    make_source(
        db_session,
        encryptor,
        "ketch",
        "ketch",
        "bearer",
        purpose_map={"targeted_advertising": "targeted_advertising", "analytics": "analytics_storage"},
    )
    response = client.post("/webhooks/cmp/ketch", json=KETCH, headers=bearer())
    assert response.status_code == 200, response.get_json()
    profile_id = response.get_json()["profile_id"]
    assert find_profile_by_identity(db_session, "external_id", sha256_hex("000123")) == profile_id
    kind, value = cmp_identity("ketch", "ketch_ketch_device", "dev-77")
    assert (kind, value) == ("cmp:ketch", "ketch_device:dev-77")
    assert find_profile_by_identity(db_session, kind, sha256_hex(value)) == profile_id
    bases = dict(db_session.execute(select(ConsentRecord.purpose, ConsentRecord.legal_basis)).all())
    assert bases == {"targeted_advertising": "opt_out_right", "analytics_storage": "disclosure"}
    assert states(db_session, profile_id) == {"targeted_advertising": "denied", "analytics_storage": "granted"}


# -- authentication: nothing stored -------------------------------------------------------------------------


def _nothing_stored(session: Session) -> None:
    assert count(session, CmpInboxItem) == 0
    assert count(session, ConsentRecord) == 0
    assert count(session, Profile) == 0


@pytest.mark.parametrize(
    "case",
    ["bad_signature", "wrong_secret", "missing_header", "stale_timestamp", "future_timestamp", "tampered_body"],
)
def test_hmac_failures_are_401_and_store_nothing(
    client: FlaskClient, db_session: Session, generic: Any, case: str
) -> None:
    data = raw(generic_body())
    now = int(time.time())
    headers = {"X-Hub-Signature": sign_hmac(SECRET.encode(), data, now)}
    if case == "bad_signature":
        headers["X-Hub-Signature"] = f"t={now},v1={'0' * 64}"
    elif case == "wrong_secret":
        headers["X-Hub-Signature"] = sign_hmac(b"another-secret-entirely", data, now)
    elif case == "missing_header":
        headers = {}
    elif case == "stale_timestamp":
        headers["X-Hub-Signature"] = sign_hmac(SECRET.encode(), data, now - 301)
    elif case == "future_timestamp":
        headers["X-Hub-Signature"] = sign_hmac(SECRET.encode(), data, now + 301)
    elif case == "tampered_body":
        data = data.replace(b"granted", b"denied!")
    response = client.post("/webhooks/cmp/shop-cmp", data=data, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthenticated"
    _nothing_stored(db_session)


def test_rotated_secret_refuses_the_old_one_at_once(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, generic: Any
) -> None:
    update_source(db_session, encryptor, generic.id, secret="a-brand-new-secret-value", now=utcnow())
    db_session.flush()
    assert post_hmac(client, "shop-cmp", generic_body()).status_code == 401
    _nothing_stored(db_session)
    assert post_hmac(client, "shop-cmp", generic_body(), secret="a-brand-new-secret-value").status_code == 200


def test_hmac_within_tolerance_is_accepted(client: FlaskClient, db_session: Session, generic: Any) -> None:
    assert post_hmac(client, "shop-cmp", generic_body(), t=int(time.time()) - 290).status_code == 200


@pytest.mark.parametrize(
    ("auth", "headers"),
    [
        ("bearer", {}),
        ("bearer", {"Authorization": "Bearer wrong-token-wrong-token"}),
        ("bearer", {"Authorization": f"Basic {SECRET}"}),
        ("basic", basic("hub", "wrong-password-wrong")),
        ("basic", basic("someone-else")),
        ("basic", bearer()),
    ],
)
def test_bearer_and_basic_failures_are_401(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, auth: str, headers: dict[str, str]
) -> None:
    make_source(db_session, encryptor, "src", "generic", auth, **({"basic_username": "hub"} if auth == "basic" else {}))
    response = client.post("/webhooks/cmp/src", json=generic_body(), headers=headers)
    assert response.status_code == 401
    _nothing_stored(db_session)


def test_wrong_ip_is_403_even_with_valid_credentials(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor
) -> None:
    make_source(db_session, encryptor, "didomi", "didomi", "bearer", ip_allow_list=[DIDOMI_IP])
    response = client.post(
        "/webhooks/cmp/didomi", json=DIDOMI_EVENT, headers=bearer(), environ_base={"REMOTE_ADDR": "203.0.113.9"}
    )
    assert response.status_code == 403
    # A forged X-Forwarded-For is not trusted unless the source says proxies append it.
    forged = client.post(
        "/webhooks/cmp/didomi",
        json=DIDOMI_EVENT,
        headers={**bearer(), "X-Forwarded-For": DIDOMI_IP},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert forged.status_code == 403
    _nothing_stored(db_session)


def test_forwarded_for_is_used_with_configured_proxy_hops(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor
) -> None:
    source = make_source(db_session, encryptor, "didomi", "didomi", "bearer", ip_allow_list=[DIDOMI_IP])
    update_source(
        db_session,
        encryptor,
        source.id,
        settings={"ip_allow_list": [DIDOMI_IP], "forwarded_hops": 1, "purpose_map": {}},
        now=utcnow(),
    )
    response = client.post(
        "/webhooks/cmp/didomi",
        json=DIDOMI_EVENT,
        headers={**bearer(), "X-Forwarded-For": f"198.51.100.1, {DIDOMI_IP}"},
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
    )
    assert response.status_code == 200, response.get_json()


def test_unknown_and_disabled_sources_are_404(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, generic: Any, app: Flask
) -> None:
    assert post_hmac(client, "nobody", generic_body()).status_code == 404
    update_source(db_session, encryptor, generic.id, enabled=False, now=utcnow())
    assert post_hmac(client, "shop-cmp", generic_body()).status_code == 404
    _nothing_stored(db_session)
    metrics = app.extensions["hub.metrics"].webhooks
    assert metrics.labels("_unknown", "not_found")._value.get() == 2


# -- the inbox keeps what cannot be processed ----------------------------------------------------------------


def test_malformed_json_is_400_and_the_raw_body_is_kept_failed(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, generic: Any
) -> None:
    data = b'{"id": "evt-1", "collected_at": '
    response = post_hmac(client, "shop-cmp", data)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    [item] = inbox(db_session)
    assert item.status == "failed"
    assert "not valid JSON" in item.error
    assert inbox_body(encryptor, item) == data
    assert count(db_session, ConsentRecord) == 0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"collected_at": "2026-11-28T09:59:00"}, "collected_at"),
        ({"subject": {}}, "subject"),
        ({"purposes": {"ad_user_data": "maybe"}}, "purposes.ad_user_data"),
        ({"purposes": {"newsletter": "granted"}}, "purposes.newsletter"),  # not a hub purpose
        ({"tc_string": "CQSU_AAQSU_AAAHABBENB4FgA"}, "tc_string"),  # truncated: an error, never consent
        ({"subject": {"email": "not-an-email"}}, "subject.email"),
    ],
)
def test_payload_errors_are_400_naming_the_field_and_kept_failed(
    client: FlaskClient, db_session: Session, generic: Any, changes: dict[str, Any], field: str
) -> None:
    response = post_hmac(client, "shop-cmp", generic_body(**changes))
    assert response.status_code == 400, response.get_json()
    assert field in response.get_json()["error"]["fields"]
    [item] = inbox(db_session)
    assert item.status == "failed"
    assert field in item.error
    assert count(db_session, ConsentRecord) == 0
    assert count(db_session, Profile) == 0  # the identity work was rolled back with the records


def test_a_failed_delivery_is_processed_when_retried_after_a_fix(
    client: FlaskClient, db_session: Session, generic: Any
) -> None:
    body = generic_body(purposes={"newsletter": "granted"})
    assert post_hmac(client, "shop-cmp", body).status_code == 400
    add_purpose(db_session, "newsletter", now=utcnow())
    retried = post_hmac(client, "shop-cmp", body)
    assert retried.get_json()["status"] == "processed"
    assert [i.status for i in inbox(db_session)] == ["failed", "processed"]


def test_an_internal_error_keeps_the_inbox_row_failed(
    client: FlaskClient, db_session: Session, generic: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    # Broken in the group commit and in the one-by-one path it falls back to.
    monkeypatch.setattr("hub.cmp.batch.record_consent_many", broken)
    monkeypatch.setattr("hub.cmp.services.record_consent", broken)
    with pytest.raises(RuntimeError):
        post_hmac(client, "shop-cmp", generic_body())
    [item] = inbox(db_session)
    assert item.status == "failed"
    assert "disk on fire" in item.error
    assert count(db_session, Profile) == 0


def test_a_delivery_is_one_unit_of_work(
    client: FlaskClient,
    db_session: Session,
    session_factory: sessionmaker[Session],
    db_connection: Any,
    generic: Any,
) -> None:
    # A returning subject: the inbox row, the identity lookup, the consent records and the projection are
    # written by a handful of statements and committed together, once (a batch of one: hub.cmp.batch).
    assert post_hmac(client, "shop-cmp", generic_body(id="evt-1")).status_code == 200
    statements: list[str] = []
    commits: list[object] = []

    def commit(session: Session) -> None:
        commits.append(session)

    def statement(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        if not sql.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):  # the test harness's nesting
            statements.append(" ".join(sql.split()[:3]))

    event.listen(db_connection, "before_cursor_execute", statement)
    event.listen(session_factory, "after_commit", commit)
    try:
        later = generic_body(id="evt-2", collected_at="2026-11-28T10:30:00Z")
        response = post_hmac(client, "shop-cmp", later)
    finally:
        event.remove(db_connection, "before_cursor_execute", statement)
        event.remove(session_factory, "after_commit", commit)
    assert response.status_code == 200
    assert response.get_json()["records"] == 2
    assert len(commits) == 1
    expected = [
        "SELECT cmp_sources.id, cmp_sources.name,",  # the source
        "INSERT INTO cmp_inbox",  # the raw body, written processed, with an earlier copy looked up
        "SELECT %(param_1)s::VARCHAR AS",  # the identity lookup
        "SELECT profiles.id, profiles.merged_into_id,",  # the person's lock and the purpose catalogue
        "SELECT %(param_1)s::VARCHAR AS",  # repeats and the projection
        "INSERT INTO consent_records",
        "INSERT INTO consent_state",
    ]
    if db_session.get_bind().dialect.name == "postgresql":
        # The source's check (the request thread prepared the delivery with the source as first read), the raw
        # body and the look-up of earlier copies are one statement.
        # The ledger ids are drawn with the lock; the lock and the read probe each key (their PostgreSQL forms).
        # These statements go to libpq as compiled, with its own placeholders.
        draw = "SELECT nextval(pg_get_serial_sequence($1::VARCHAR, $2::VARCHAR))"
        lookup, lock, read = "SELECT $1::VARCHAR AS", "SELECT root.id, root.merged_into_id,", "SELECT $1::VARCHAR AS"
        assert statements == ["WITH inserted AS", lookup, lock, read, draw, *expected[5:]]
    else:  # SQLite's driver inserts the ledger rows one at a time, and renders parameters as "?"
        assert [s.split()[0] for s in statements if not s.startswith("INSERT INTO consent_records")] == [
            e.split()[0] for e in expected if not e.startswith("INSERT INTO consent_records")
        ]
    [_first, item] = inbox(db_session)
    assert (item.status, item.event_key, item.error) == ("processed", "evt-2", None)
    assert item.processed_at is not None
    assert verify_projection(db_session) == []


def test_notes_are_kept_on_the_inbox_row(client: FlaskClient, db_session: Session, encryptor: FieldEncryptor) -> None:
    make_source(db_session, encryptor, "didomi", "didomi", "bearer", purpose_map={"cookies": "ad_storage"})
    response = client.post("/webhooks/cmp/didomi", json=DIDOMI_EVENT, headers=bearer())
    assert response.status_code == 200, response.get_json()
    notes = response.get_json()["notes"]
    assert any("ignored vendor:google" in note for note in notes)
    [item] = inbox(db_session)
    assert item.status == "processed"
    assert item.error == "; ".join(notes)


# -- replays and ordering ------------------------------------------------------------------------------------


def test_replay_is_a_2xx_no_op(client: FlaskClient, db_session: Session, generic: Any, app: Flask) -> None:
    body = generic_body()
    first = post_hmac(client, "shop-cmp", body)
    assert first.get_json()["records"] == 2
    again = post_hmac(client, "shop-cmp", body)
    assert again.status_code == 200
    assert again.get_json()["status"] == "duplicate"
    # Same CMP event id, re-serialised body: still a repeat.
    reordered = json.dumps(body, indent=2).encode()
    third = post_hmac(client, "shop-cmp", reordered)
    assert third.get_json()["status"] == "duplicate"
    assert count(db_session, ConsentRecord) == 2
    assert [i.status for i in inbox(db_session)] == ["processed", "duplicate", "duplicate"]
    assert app.extensions["hub.metrics"].webhooks.labels("shop-cmp", "duplicate")._value.get() == 2


def test_out_of_order_pair_ends_in_the_later_decision(client: FlaskClient, db_session: Session, generic: Any) -> None:
    later = generic_body(id="evt-2", collected_at="2026-11-28T10:05:00Z", purposes={"ad_user_data": "denied"})
    earlier = generic_body(id="evt-1", collected_at="2026-11-28T10:00:00Z", purposes={"ad_user_data": "granted"})
    profile_id = post_hmac(client, "shop-cmp", later).get_json()["profile_id"]
    assert post_hmac(client, "shop-cmp", earlier).get_json()["records"] == 1
    assert states(db_session, profile_id) == {"ad_user_data": "denied"}
    assert verify_projection(db_session) == []


def test_erased_subject_is_not_recreated(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, generic: Any
) -> None:
    profile_id = post_hmac(client, "shop-cmp", generic_body()).get_json()["profile_id"]
    erase_profile(db_session, profile_id, "request", now=utcnow())
    db_session.flush()
    response = post_hmac(client, "shop-cmp", generic_body(id="evt-after-erasure"))
    assert response.status_code == 200
    assert response.get_json()["records"] == 0
    assert any("erased" in note for note in response.get_json()["notes"])
    assert count(db_session, Profile) == 1
    assert count(db_session, ConsentRecord, ConsentRecord.source_event_id == "evt-after-erasure") == 0


def test_erasure_empties_the_raw_webhook_bodies_that_name_the_person(
    client: FlaskClient, db_session: Session, generic: Any
) -> None:
    profile_id = post_hmac(client, "shop-cmp", generic_body()).get_json()["profile_id"]
    other = post_hmac(client, "shop-cmp", generic_body(id="evt-other", subject={"email": "bob@example.com"}))
    assert other.get_json()["profile_id"] != profile_id
    digest_before = {item.id: item.body_sha256 for item in inbox(db_session)}

    summary = erase_profile(db_session, profile_id, "request", now=utcnow())
    db_session.flush()
    db_session.expire_all()

    assert summary.cmp_deliveries_redacted == 1
    erased, kept = inbox(db_session)
    assert erased.body == b""
    assert kept.body != b"", "another person's delivery is untouched"
    assert {item.id: item.body_sha256 for item in inbox(db_session)} == digest_before, "the evidence hash stays"
    assert count(db_session, ConsentRecord, ConsentRecord.profile_id == profile_id) > 0


def test_a_webhook_opens_no_cookie_session(client: FlaskClient, generic: Any) -> None:
    # A CMP carries no cookie; a signed-in admin's cookie sent along is not read (the delivery is not theirs), and
    # no answer sets one.
    with client.session_transaction() as cookie_session:
        cookie_session["user_id"] = "someone"
    response = post_hmac(client, "shop-cmp", generic_body(id="evt-cookie"))
    assert response.status_code == 200, response.get_json()
    assert "Set-Cookie" not in response.headers
    with client.application.test_request_context("/webhooks/cmp/shop-cmp", method="POST"):
        from flask import session

        assert session.get("user_id") is None
        with pytest.raises(RuntimeError):  # Flask's null session refuses writes
            session["user_id"] = "someone"
    with client.application.test_request_context("/"):
        from flask import session

        session["user_id"] = "someone"  # the admin UI's sessions are as before
