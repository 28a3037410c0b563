"""The scheduler against the CAPI sandbox over real HTTP: batching, outcomes, pausing, crash recovery."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.app import create_app
from hub.config import Settings
from hub.db import new_id, session_scope, utcnow
from hub.delivery.dead_letters import dead_letter_document, get_dead_letter
from hub.delivery.destinations import paused_destinations, resume_destination, update_destination
from hub.delivery.dispatch import run_once
from hub.delivery.models import DeliveryAttempt, Destination
from hub.encryption import FieldEncryptor
from hub.profiles.models import Identity, Profile
from hub.profiles.normalize import sha256_hex
from tests.support.databases import TestDatabase
from tests.support.delivery import (
    TOKEN,
    UA,
    Sandbox,
    add_destination,
    add_events,
    add_mapping,
    events_by_id,
    running_sandbox,
)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as running:
        yield running


@pytest.fixture
def hub_app(fresh_database: TestDatabase, settings: Settings, sandbox: Sandbox) -> Iterator[Flask]:
    cfg = settings.with_overrides(
        database_url=fresh_database.url, graph_url=sandbox.url, retry_base_seconds=1.0, retry_max_seconds=10.0
    )
    app = create_app(cfg)
    try:
        yield app
    finally:
        app.extensions["hub.engine"].dispose()


def unit(app: Flask) -> AbstractContextManager[Session]:
    return session_scope(app.extensions["hub.sessionmaker"])


@pytest.fixture
def ready(hub_app: Flask) -> int:
    """A default destination and the order_completed → Purchase mapping; returns the destination id."""
    with unit(hub_app) as session:
        destination_id = add_destination(session, hub_app.extensions["hub.settings"])
        add_mapping(session)
    return destination_id


def statuses(app: Flask, ids: list[str]) -> dict[str, str]:
    with unit(app) as session:
        return {k: v.status for k, v in events_by_id(session, ids).items()}


@pytest.mark.usefixtures("ready")
def test_1500_events_go_out_in_two_requests_and_are_recorded(hub_app: Flask, sandbox: Sandbox) -> None:
    with unit(hub_app) as session:
        ids = add_events(session, hub_app.extensions["hub.settings"], 1500)
    summary = run_once(hub_app)
    assert (summary.sent, summary.requests, summary.dead, summary.retrying) == (1500, 2, 0, 0)
    assert [r["events"] for r in sandbox.requests()] == [1000, 500]
    assert sorted(sandbox.received_ids()) == sorted(ids)
    with unit(hub_app) as session:
        events = events_by_id(session, ids)
        assert {e.status for e in events.values()} == {"sent"}
        assert all(e.attempts == 1 and e.sent_at and e.lease_owner is None for e in events.values())
        attempts = list(session.scalars(select(DeliveryAttempt).order_by(DeliveryAttempt.id)))
        assert [(a.event_count, a.events_received, a.outcome, a.http_status) for a in attempts] == [
            (1000, 1000, "sent", 200),
            (500, 500, "sent", 200),
        ]
        assert {e.delivered_attempt_id for e in events.values()} == {a.id for a in attempts}
    sent = sandbox.received()[0]
    assert sent["event_name"] == "Purchase"
    assert sent["user_data"] == {
        "em": sha256_hex("ann@example.com"),
        "client_ip_address": "203.0.113.7",
        "client_user_agent": UA,
    }
    assert sent["data_processing_options"] == []
    assert sent["custom_data"]["currency"] == "USD"
    assert run_once(hub_app).claimed == 0, "nothing is sent twice"


@pytest.mark.usefixtures("ready")
def test_one_invalid_event_is_isolated_and_dead_lettered_the_rest_delivered(hub_app: Flask, sandbox: Sandbox) -> None:
    cfg = hub_app.extensions["hub.settings"]
    encryptor = FieldEncryptor(cfg.encryption_keys)
    with unit(hub_app) as session:
        good = add_events(session, cfg, 9)
        # Passes local checks, but the sandbox (like Meta) refuses a malformed IP: code 100 for the whole batch.
        bad_token = encryptor.encrypt_json(
            {
                "hashes": {"em": sha256_hex("bob@example.com")},
                "browser": {"client_ip_address": "999.1.1.1", "client_user_agent": UA},
            }
        )
        bad = add_events(session, cfg, 1, prefix="bad", user_data_encrypted=bad_token)
    summary = run_once(hub_app)
    assert summary.sent == 9
    assert summary.dead == 1
    assert sorted(sandbox.received_ids()) == sorted(good)
    assert statuses(hub_app, good + bad) == {**dict.fromkeys(good, "sent"), bad[0]: "dead"}
    with unit(hub_app) as session:
        dead = get_dead_letter(session, bad[0])
        assert dead.last_error["code"] == 100
        assert dead.last_error["kind"] == "invalid"
        document = dead_letter_document(session, encryptor, dead)
        assert document["payload"]["event_id"] == bad[0]
        assert document["payload"]["user_data"]["client_ip_address"] == "999.1.1.1"
        assert document["meta_answer"]["body"]["error"]["code"] == 100


@pytest.mark.usefixtures("ready")
def test_server_error_then_success(hub_app: Flask, sandbox: Sandbox) -> None:
    with unit(hub_app) as session:
        ids = add_events(session, hub_app.extensions["hub.settings"], 5)
    sandbox.fault("http_500")
    start = utcnow()
    first = run_once(hub_app, now=start)
    assert (first.retrying, first.sent) == (5, 0)
    with unit(hub_app) as session:
        events = events_by_id(session, ids).values()
        assert {(e.status, e.attempts) for e in events} == {("retrying", 1)}
        assert all(start < e.next_attempt_at <= start + timedelta(seconds=1.01) for e in events)
        assert {e.last_error["http_status"] for e in events} == {500}
    assert run_once(hub_app, now=start).claimed == 0, "not before the back-off is over"
    second = run_once(hub_app, now=start + timedelta(seconds=2))
    assert second.sent == 5
    assert statuses(hub_app, ids) == dict.fromkeys(ids, "sent")
    assert sorted(sandbox.received_ids()) == sorted(ids)


@pytest.mark.usefixtures("ready")
def test_rate_limit_waits_as_long_as_meta_says_then_succeeds(hub_app: Flask, sandbox: Sandbox) -> None:
    with unit(hub_app) as session:
        ids = add_events(session, hub_app.extensions["hub.settings"], 3)
    sandbox.fault("rate_limit", regain_minutes=2)
    start = utcnow()
    assert run_once(hub_app, now=start).retrying == 3
    with unit(hub_app) as session:
        events = events_by_id(session, ids).values()
        # X-Business-Use-Case-Usage said 2 minutes: honoured even above HUB_RETRY_MAX_SECONDS (10 s here).
        assert all(e.next_attempt_at >= start + timedelta(minutes=2) for e in events)
        assert {e.last_error["code"] for e in events} == {17}
    assert run_once(hub_app, now=start + timedelta(minutes=1)).claimed == 0
    assert run_once(hub_app, now=start + timedelta(minutes=3)).sent == 3
    assert sorted(sandbox.received_ids()) == sorted(ids)


def test_expired_token_pauses_the_destination_and_loses_nothing(hub_app: Flask, sandbox: Sandbox, ready: int) -> None:
    cfg = hub_app.extensions["hub.settings"]
    with unit(hub_app) as session:
        ids = add_events(session, cfg, 4)
    sandbox.fault("expired_token")
    summary = run_once(hub_app)
    assert (summary.held, summary.sent, summary.dead) == (4, 0, 0)
    with unit(hub_app) as session:
        events = events_by_id(session, ids).values()
        assert {(e.status, e.attempts, e.lease_owner) for e in events} == {("pending", 0, None)}
        [paused] = paused_destinations(session)
        assert paused.id == ready
        assert "190" in (paused.paused_reason or "")
    assert run_once(hub_app).claimed == 0, "nothing is sent to a paused destination"
    metrics = hub_app.extensions["hub.metrics"]
    assert metrics.registry.get_sample_value("hub_destination_paused_total", {"destination": paused.name}) == 1
    assert metrics.registry.get_sample_value("hub_meta_errors_total", {"code": "190", "subcode": "463"}) == 1
    with unit(hub_app) as session:
        update_destination(
            session, FieldEncryptor(cfg.encryption_keys), ready, {"access_token": TOKEN}, settings=cfg, actor="t"
        )
        resume_destination(session, ready, actor="test")
    assert run_once(hub_app).sent == 4
    assert sorted(sandbox.received_ids()) == sorted(ids)


@pytest.mark.usefixtures("ready")
def test_expired_lease_is_resent_with_the_same_event_id_and_counted(hub_app: Flask, sandbox: Sandbox) -> None:
    now = utcnow()
    with unit(hub_app) as session:
        crashed = add_events(
            session,
            hub_app.extensions["hub.settings"],
            2,
            lease_owner="host:1:dead",
            lease_expires_at=now - timedelta(seconds=1),
        )
        live = add_events(
            session,
            hub_app.extensions["hub.settings"],
            1,
            prefix="live",
            lease_owner="host:2:alive",
            lease_expires_at=now + timedelta(minutes=5),
        )
    summary = run_once(hub_app, now=now)
    assert summary.sent == 2
    assert summary.unknown_outcome_resends == 2
    assert sorted(sandbox.received_ids()) == sorted(crashed), "a live lease belongs to its worker"
    with unit(hub_app) as session:
        events = events_by_id(session, crashed + live)
        assert [events[i].unknown_outcome_resends for i in crashed] == [1, 1]
        assert events[live[0]].status == "pending"
    assert hub_app.extensions["hub.metrics"].registry.get_sample_value("hub_unknown_outcome_resends_total") == 2


@pytest.mark.usefixtures("ready")
def test_grace_period_waits_and_decision_is_rerun_at_send_time(hub_app: Flask, sandbox: Sandbox) -> None:
    cfg = hub_app.extensions["hub.settings"]
    now = utcnow()
    with unit(hub_app) as session:
        fresh = add_events(session, cfg, 1, prefix="fresh", received_at=now - timedelta(seconds=5), next_attempt_at=now)
        # Decided "send" earlier, but the person is in Germany with no consent on record: re-deciding blocks it.
        german = add_events(
            session, cfg, 1, prefix="de", region="DE", status="retrying", attempts=1, decision={"outcome": "send"}
        )
    summary = run_once(hub_app, now=now)
    assert (summary.waiting, summary.blocked, summary.sent) == (1, 1, 0)
    with unit(hub_app) as session:
        events = events_by_id(session, fresh + german)
        assert events[fresh[0]].status == "pending"
        assert events[fresh[0]].next_attempt_at == events[fresh[0]].received_at + timedelta(
            seconds=cfg.consent_grace_seconds
        )
        assert events[german[0]].status == "blocked"
        assert events[german[0]].decision["reason_code"] == "no_consent"
    assert sandbox.received_ids() == []


@pytest.mark.usefixtures("ready")
def test_payload_meta_would_reject_is_blocked_with_the_reason(hub_app: Flask, sandbox: Sandbox) -> None:
    cfg = hub_app.extensions["hub.settings"]
    encryptor = FieldEncryptor(cfg.encryption_keys)
    no_ua = encryptor.encrypt_json({"hashes": {"em": sha256_hex("ann@example.com")}, "browser": {}})
    with unit(hub_app) as session:
        ids = add_events(session, cfg, 1, user_data_encrypted=no_ua)
        no_value = add_events(session, cfg, 1, prefix="novalue", properties={"currency": "USD"})
    summary = run_once(hub_app)
    assert summary.blocked == 2
    assert summary.requests == 0
    with unit(hub_app) as session:
        events = events_by_id(session, ids + no_value)
        event = events[ids[0]]
        assert event.status == "blocked"
        assert event.decision["reason_code"] == "payload_rejected:website_without_user_agent"
        assert "user agent" in event.decision["explanation"]
        assert events[no_value[0]].decision["reason_code"] == "payload_rejected:mapping_errors"


def test_no_destination_holds_events(hub_app: Flask, sandbox: Sandbox) -> None:
    cfg = hub_app.extensions["hub.settings"]
    now = utcnow()
    with unit(hub_app) as session:
        add_mapping(session)
        ids = add_events(session, cfg, 2)
    summary = run_once(hub_app, now=now)
    assert summary.held == 2
    with unit(hub_app) as session:
        events = events_by_id(session, ids).values()
        assert {e.status for e in events} == {"pending"}
        assert all(e.next_attempt_at > now and e.last_error["reason"] == "no_destination" for e in events)


@pytest.mark.usefixtures("ready")
def test_profile_identifiers_enrich_the_event_within_the_rule(hub_app: Flask, sandbox: Sandbox) -> None:
    cfg = hub_app.extensions["hub.settings"]
    encryptor = FieldEncryptor(cfg.encryption_keys)
    with unit(hub_app) as session:
        root = Profile(id=new_id(), region="US", traits_encrypted=encryptor.encrypt_json({"fn": "ann", "ct": "paris"}))
        merged = Profile(id=new_id(), region="US", merged_into_id=root.id)
        session.add_all([root, merged])
        session.flush()
        session.add_all(
            [
                Identity(profile_id=root.id, kind="phone", value_hash=sha256_hex("16505551212")),
                Identity(profile_id=merged.id, kind="email", value_hash=sha256_hex("ann.work@example.com")),
                Identity(profile_id=root.id, kind="fbp", value_hash=sha256_hex("fb.1.1.1")),
            ]
        )
        ids = add_events(session, cfg, 1, profile_id=merged.id)
    assert run_once(hub_app).sent == 1
    [sent] = sandbox.received()
    assert sent["event_id"] == ids[0]
    user = sent["user_data"]
    assert user["em"] == [sha256_hex("ann@example.com"), sha256_hex("ann.work@example.com")]
    assert user["ph"] == sha256_hex("16505551212")
    assert user["fn"] == sha256_hex("ann")
    assert user["ct"] == sha256_hex("paris")
    assert "fbp" not in user


def test_attempt_rows_never_hold_the_token(hub_app: Flask, sandbox: Sandbox, ready: int) -> None:
    with unit(hub_app) as session:
        add_events(session, hub_app.extensions["hub.settings"], 1)
        sandbox.fault("expired_token")
    run_once(hub_app)
    with unit(hub_app) as session:
        rows = session.scalars(select(DeliveryAttempt)).all()
        assert rows
        assert all(TOKEN not in repr(r.response) for r in rows)
        destination = session.get(Destination, ready)
        assert TOKEN not in (destination.access_token_encrypted or "")
        assert session.scalar(select(func.count()).select_from(DeliveryAttempt)) == 1
