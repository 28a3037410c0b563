"""decide_stored_event: the decision for stored events with consent, merges, suppression and regions in the DB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.consent.models import ConsentRecord
from hub.db import new_id
from hub.events.models import Event
from hub.mappings.services import create_mapping, load_mapping_definitions, update_mapping
from hub.metrics import Metrics
from hub.profiles.models import Profile
from hub.rules.defaults import DEFAULT_RULES
from hub.rules.models import RegionRule
from hub.rules.services import (
    RuleInvalid,
    create_rule,
    decide_stored_event,
    delete_rule,
    load_rules,
    rule_of,
    update_rule,
)

T = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
RECEIVED = T + timedelta(seconds=3)
LATER = T + timedelta(minutes=10)
MIN = timedelta(minutes=1)


@pytest.fixture
def purchase_mapping(db_session: Session) -> int:
    mapping = create_mapping(
        db_session,
        {
            "source_event": "order_completed",
            "event_name": "Purchase",
            "action_source": "website",
            "custom_data": {"value": "properties.total", "currency": "properties.currency"},
        },
        actor="test",
    )
    return mapping.id


def profile(session: Session, region: str | None = None, merged_into: str | None = None) -> str:
    row = Profile(id=new_id(), region=region, merged_into_id=merged_into, created_at=T - timedelta(days=30))
    session.add(row)
    session.flush()
    return row.id


def consent(session: Session, profile_id: str, status: str, at: datetime, purpose: str = "ad_user_data") -> int:
    record = ConsentRecord(
        profile_id=profile_id,
        purpose=purpose,
        status=status,
        collected_at=at,
        received_at=at,
        source="cmp:test",
        source_event_id=new_id(),
        proof={},
    )
    session.add(record)
    session.flush()
    return record.id


def event(session: Session, profile_id: str | None, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "event_id": new_id(),
        "source_event": "order_completed",
        "profile_id": profile_id,
        "occurred_at": T,
        "received_at": RECEIVED,
        "status": "pending",
        "attempts": 0,
        "suppressed": False,
        "next_attempt_at": RECEIVED + timedelta(minutes=2),
        "unknown_outcome_resends": 0,
    }
    values.update(fields)
    row = Event(**values)
    session.add(row)
    session.flush()
    return row


def test_seeded_rules_equal_the_shipped_defaults(db_session: Session) -> None:
    def key(rule: Any) -> tuple:
        return (
            rule.region,
            rule.mode,
            tuple(rule.required_purposes),
            tuple(rule.opt_out_purposes),
            rule.ldu,
            None if rule.identifiers is None else tuple(rule.identifiers),
            rule.destination,
        )

    seeded = [rule_of(row) for row in db_session.scalars(select(RegionRule).order_by(RegionRule.id))]
    assert [key(r) for r in seeded] == [key(r) for r in DEFAULT_RULES]
    assert all(row.enabled and row.note for row in db_session.scalars(select(RegionRule)))


@pytest.mark.usefixtures("purchase_mapping")
def test_eea_granted_at_event_is_sent(db_session: Session, settings: Settings) -> None:
    pid = profile(db_session, "DE")
    record = consent(db_session, pid, "granted", T - MIN)
    ev = event(db_session, pid)
    decision = decide_stored_event(db_session, ev, now=LATER, settings=settings)
    assert (decision.outcome, decision.reason_code) == ("send", "consent_granted")
    assert decision.region_source == "profile"
    assert decision.rule_region == "EEA"
    assert ev.decision is not None
    assert ev.decision["consent_record_ids"] == [record]
    assert ev.decided_at == LATER
    assert ev.status == "pending"  # the scheduler sends next
    assert ev.mapping_id is not None
    assert ev.mapping_version == 1
    assert "ad_user_data granted at 2026-11-28 09:59:00 UTC" in ev.decision["explanation"]


@pytest.mark.usefixtures("purchase_mapping")
def test_eea_without_consent_is_blocked_and_recorded(db_session: Session, settings: Settings) -> None:
    pid = profile(db_session, "FR")
    ev = event(db_session, pid)
    decision = decide_stored_event(db_session, ev, now=LATER, settings=settings)
    assert (decision.outcome, decision.reason_code) == ("block", "no_consent")
    assert ev.status == "blocked"
    assert ev.next_attempt_at is None
    assert ev.decided_at == LATER
    assert ev.decision["reason_code"] == "no_consent"
    assert ev.decision["explanation"].startswith("Blocked: rule EEA (opt-in) for FR (region from the profile)")


@pytest.mark.usefixtures("purchase_mapping")
def test_withdrawal_after_event_blocks(db_session: Session, settings: Settings) -> None:
    pid = profile(db_session, "DE")
    granted = consent(db_session, pid, "granted", T - MIN)
    withdrawn = consent(db_session, pid, "denied", T + MIN)
    ev = event(db_session, pid)
    decision = decide_stored_event(db_session, ev, now=LATER, settings=settings)
    assert decision.reason_code == "withdrawn_after_event"
    assert ev.decision["consent_record_ids"] == [granted, withdrawn]


@pytest.mark.usefixtures("purchase_mapping")
def test_consent_arriving_during_grace_period_counts(db_session: Session, settings: Settings) -> None:
    pid = profile(db_session, "DE")
    ev = event(db_session, pid)
    early = decide_stored_event(db_session, ev, now=RECEIVED + MIN, settings=settings)
    assert (early.outcome, early.reason_code) == ("wait", "grace_period")
    assert ev.status == "pending"
    assert ev.decision is None
    assert ev.decided_at is None
    assert ev.next_attempt_at == RECEIVED + timedelta(seconds=settings.consent_grace_seconds)
    # The CMP's webhook arrives late but is stamped (collected) before the event: it covers it.
    consent(db_session, pid, "granted", T - timedelta(seconds=2))
    later = decide_stored_event(db_session, ev, now=LATER, settings=settings)
    assert later.outcome == "send"


@pytest.mark.usefixtures("purchase_mapping")
def test_consent_of_a_merged_away_profile_counts(db_session: Session, settings: Settings) -> None:
    root = profile(db_session, "DE")
    loser = profile(db_session, None, merged_into=root)
    record = consent(db_session, loser, "granted", T - MIN)
    # The event was stored against the profile that was later merged away.
    ev = event(db_session, loser)
    decision = decide_stored_event(db_session, ev, now=LATER, settings=settings)
    assert decision.outcome == "send"
    assert decision.region_used == "DE"  # the root's region
    assert ev.decision["consent_record_ids"] == [record]


@pytest.mark.usefixtures("purchase_mapping")
def test_denial_on_the_other_side_of_a_merge_blocks(db_session: Session, settings: Settings) -> None:
    root = profile(db_session, "DE")
    loser = profile(db_session, None, merged_into=root)
    consent(db_session, root, "granted", T - 2 * MIN)
    consent(db_session, loser, "denied", T - MIN)
    decision = decide_stored_event(db_session, event(db_session, root), now=LATER, settings=settings)
    assert (decision.outcome, decision.reason_code) == ("block", "consent_denied")


@pytest.mark.usefixtures("purchase_mapping")
def test_suppressed_event_is_blocked(db_session: Session, settings: Settings) -> None:
    ev = event(db_session, None, suppressed=True)
    decision = decide_stored_event(db_session, ev, now=LATER, settings=settings)
    assert (decision.outcome, decision.reason_code) == ("block", "suppressed")
    assert ev.status == "blocked"


@pytest.mark.usefixtures("purchase_mapping")
def test_event_region_wins_over_profile_region(db_session: Session, settings: Settings) -> None:
    pid = profile(db_session, "DE")
    ev = event(db_session, pid, region="US-TX")
    decision = decide_stored_event(db_session, ev, now=LATER, settings=settings)
    assert (decision.outcome, decision.reason_code, decision.region_source) == ("send", "no_opt_out", "event")
    assert decision.rule_region == "US-TX"


@pytest.mark.usefixtures("purchase_mapping")
def test_us_ldu_state_opt_out_sends_with_ldu(db_session: Session, settings: Settings) -> None:
    pid = profile(db_session, "US-CA")
    record = consent(db_session, pid, "denied", T - MIN, purpose="sale")
    ev = event(db_session, pid)
    decision = decide_stored_event(db_session, ev, now=LATER, settings=settings)
    assert (decision.outcome, decision.reason_code) == ("send_ldu", "opted_out_ldu")
    assert ev.decision["ldu"] == {
        "data_processing_options": ["LDU"],
        "data_processing_options_country": 1,
        "data_processing_options_state": 1000,
    }
    assert ev.decision["consent_record_ids"] == [record]


@pytest.mark.usefixtures("purchase_mapping")
def test_gpc_on_the_event_in_a_non_ldu_state_blocks(db_session: Session, settings: Settings) -> None:
    pid = profile(db_session, "US-VA")
    decision = decide_stored_event(db_session, event(db_session, pid, gpc=True), now=LATER, settings=settings)
    assert (decision.outcome, decision.reason_code) == ("block", "gpc_opt_out_blocked")


@pytest.mark.usefixtures("purchase_mapping")
def test_anonymous_event_uses_the_wildcard_rule(db_session: Session, settings: Settings) -> None:
    decision = decide_stored_event(db_session, event(db_session, None), now=LATER, settings=settings)
    assert (decision.outcome, decision.reason_code, decision.rule_region) == ("block", "no_consent", "*")
    assert decision.region_source == "default"


def test_unmapped_event_is_blocked_without_mapping_id(db_session: Session, settings: Settings) -> None:
    ev = event(db_session, None, source_event="mystery")
    decision = decide_stored_event(db_session, ev, now=RECEIVED, settings=settings)
    assert (decision.outcome, decision.reason_code) == ("block", "unmapped")
    assert ev.mapping_id is None
    assert ev.status == "blocked"


def test_disabled_mapping_records_its_version(db_session: Session, settings: Settings, purchase_mapping: int) -> None:
    update_mapping(db_session, purchase_mapping, {"enabled": False}, actor="test")
    ev = event(db_session, None)
    decision = decide_stored_event(db_session, ev, now=LATER, settings=settings)
    assert decision.reason_code == "mapping_disabled"
    assert (ev.mapping_id, ev.mapping_version) == (purchase_mapping, 2)


@pytest.mark.usefixtures("purchase_mapping")
def test_blocked_region_and_destination_override(db_session: Session, settings: Settings) -> None:
    from hub.delivery.models import Destination

    destination = Destination(name="eu pixel", pixel_id="123")
    db_session.add(destination)
    db_session.flush()
    create_rule(db_session, {"region": "ru", "mode": "block", "ldu": "never"}, actor="test")
    create_rule(db_session, {"region": "AT", "mode": "opt_out", "destination_id": destination.id}, actor="test")
    blocked = decide_stored_event(db_session, event(db_session, None, region="RU"), now=LATER, settings=settings)
    assert blocked.reason_code == "region_blocked"
    ev = event(db_session, None, region="AT")
    sent = decide_stored_event(db_session, ev, now=LATER, settings=settings)
    assert sent.outcome == "send"
    assert ev.destination_id == destination.id


@pytest.mark.usefixtures("purchase_mapping")
def test_rules_and_mappings_passed_in_are_used_and_metrics_counted(db_session: Session, settings: Settings) -> None:
    rules = [r for r in load_rules(db_session) if r.region != "*"]
    metrics = Metrics()
    ev = event(db_session, None)
    decision = decide_stored_event(
        db_session,
        ev,
        now=LATER,
        settings=settings,
        rules=rules,
        mappings=load_mapping_definitions(db_session),
        metrics=metrics,
    )
    assert decision.reason_code == "no_rule"
    assert metrics.decisions.labels(outcome="block", reason="no_rule")._value.get() == 1


def test_disabled_rules_are_not_loaded(db_session: Session) -> None:
    star = db_session.execute(select(RegionRule).where(RegionRule.region == "*")).scalar_one()
    update_rule(db_session, star.id, {"enabled": False}, actor="test")
    assert "*" not in {r.region for r in load_rules(db_session)}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"region": "Atlantis", "mode": "opt_in"}, "region"),
        ({"region": "DE", "mode": "maybe"}, "mode"),
        ({"region": "DE", "mode": "opt_in", "ldu": "always"}, "ldu"),
        ({"region": "DE", "mode": "opt_in", "required_purposes": []}, "required_purposes"),
        ({"region": "DE", "mode": "opt_in", "required_purposes": ["cookies"]}, "required_purposes"),
        ({"region": "DE", "mode": "opt_in", "required_purposes": "ad_user_data"}, "required_purposes"),
        ({"region": "DE", "mode": "opt_in", "identifiers": ["email"]}, "identifiers"),
        ({"region": "DE", "mode": "opt_in", "destination_id": 999}, "destination_id"),
        ({"region": "DE", "mode": "opt_in", "colour": "red"}, "colour"),
        ({"region": "eea", "mode": "opt_in"}, "region"),  # exists already (seeded)
    ],
)
def test_invalid_rules_are_refused_with_the_field(db_session: Session, data: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleInvalid) as caught:
        create_rule(db_session, data, actor="test")
    assert field in caught.value.errors


def test_rule_crud_is_audited(db_session: Session) -> None:
    from hub.audit.models import AuditEntry

    row = create_rule(db_session, {"region": "us-va", "mode": "opt_out"}, actor="ops@shop.example")
    assert row.region == "US-VA"
    update_rule(db_session, row.id, {"ldu": "on_opt_out"}, actor="ops@shop.example")
    delete_rule(db_session, row.id, actor="ops@shop.example")
    actions = db_session.scalars(
        select(AuditEntry.action).where(AuditEntry.object_type == "region_rule", AuditEntry.object_id == str(row.id))
    ).all()
    assert actions == ["region_rule.create", "region_rule.update", "region_rule.delete"]
