"""Region rules in the database, and the forwarding decision for a stored event (DESIGN §4.3 to §4.5).

`decide_stored_event` is what the scheduler calls for each due event: it gathers the event's facts (its context
region, else the profile's region; the suppression flag; GPC), loads the person's consent ledger across a merged
cluster, runs the pure `hub.rules.decision.decide`, and records the outcome on the event. It flushes nothing and
commits nothing: the scheduler's batch owns the unit of work (and sends right after a send/send_ldu decision).

Rule CRUD validates with `validate_rule` (known purposes include admins' custom ones) and audits every change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.audit.services import record_audit
from hub.config import Settings
from hub.consent.ledger import load_ledger
from hub.consent.models import Purpose
from hub.consent.policy import OPT_OUT_PURPOSES, PURPOSES, ConsentLedger
from hub.db import utcnow
from hub.delivery.models import Destination
from hub.errors import InvalidFields
from hub.events.models import Event
from hub.mappings.apply import MappingDefinition
from hub.mappings.models import EventMapping
from hub.metrics import Metrics
from hub.profiles.models import Profile
from hub.profiles.services import ProfileNotFound, canonical_profile_id
from hub.rules.decision import Decision, EventFacts, Rule, decide, validate_rule
from hub.rules.models import RegionRule
from hub.rules.regions import normalize_selector

RULE_FIELDS: tuple[str, ...] = (
    "region",
    "mode",
    "required_purposes",
    "opt_out_purposes",
    "ldu",
    "identifiers",
    "destination_id",
    "enabled",
    "note",
)
_DEFAULTS: dict[str, Any] = {
    "required_purposes": ["ad_user_data"],
    "opt_out_purposes": list(OPT_OUT_PURPOSES),
    "ldu": "never",
    "identifiers": None,
    "destination_id": None,
    "enabled": True,
    "note": "",
}


class RuleInvalid(InvalidFields):
    """The rule cannot be saved; `errors` maps field names to sentences."""


class RuleNotFound(LookupError):
    pass


def rule_of(row: RegionRule) -> Rule:
    """The pure `Rule` for a stored row (id = the row id, destination = the destination id)."""
    return Rule(
        id=row.id,
        region=row.region,
        mode=row.mode,
        required_purposes=tuple(row.required_purposes or ()),
        opt_out_purposes=tuple(row.opt_out_purposes or ()),
        ldu=row.ldu,
        identifiers=None if row.identifiers is None else tuple(row.identifiers),
        destination=row.destination_id,
    )


def rule_fields(row: RegionRule) -> dict[str, Any]:
    return {name: getattr(row, name) for name in RULE_FIELDS}


def known_purposes(session: Session) -> tuple[str, ...]:
    custom = session.scalars(select(Purpose.name).order_by(Purpose.name))
    return tuple(dict.fromkeys([*PURPOSES, *custom]))


def _string_list(value: Any, name: str, errors: dict[str, str], *, nullable: bool = False) -> list[str] | None:
    if value is None and nullable:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        errors[name] = f"{name} must be a list of names" + (" or null" if nullable else "")
        return None
    return list(dict.fromkeys(value))


def check_rule(
    session: Session,
    data: Mapping[str, Any],
    *,
    current: RegionRule | None = None,
    purposes: Sequence[str] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The complete rule after applying `data` to `current` (or to defaults), and its problems."""
    errors: dict[str, str] = {}
    for key in data:
        if key not in RULE_FIELDS:
            errors[str(key)] = f"unknown field; a rule has {', '.join(RULE_FIELDS)}"
    merged = rule_fields(current) if current is not None else dict(_DEFAULTS)
    merged.update({k: v for k, v in data.items() if k in RULE_FIELDS})
    region = merged.get("region")
    selector = normalize_selector(region) if isinstance(region, str) else None
    if selector is not None:
        merged["region"] = selector
    required = _string_list(merged.get("required_purposes"), "required_purposes", errors)
    opt_out = _string_list(merged.get("opt_out_purposes"), "opt_out_purposes", errors)
    identifiers = _string_list(merged.get("identifiers"), "identifiers", errors, nullable=True)
    if not isinstance(merged.get("enabled"), bool):
        errors["enabled"] = "enabled must be true or false"
    if not isinstance(merged.get("note"), str):
        errors["note"] = "note must be text"
    elif len(merged["note"]) > 500:
        errors["note"] = "note must be at most 500 characters"
    for name in ("mode", "ldu"):
        if not isinstance(merged.get(name), str):
            errors[name] = f"{name} is required"
    if not errors:
        merged["required_purposes"], merged["opt_out_purposes"], merged["identifiers"] = required, opt_out, identifiers
        rule = Rule(
            id=current.id if current is not None else 0,
            region=region if isinstance(region, str) else "",
            mode=merged["mode"],
            required_purposes=tuple(required or ()),
            opt_out_purposes=tuple(opt_out or ()),
            ldu=merged["ldu"],
            identifiers=None if identifiers is None else tuple(identifiers),
        )
        errors.update(validate_rule(rule, known_purposes=purposes or known_purposes(session)))
    if selector is not None and "region" not in errors:
        clash = session.execute(select(RegionRule.id).where(RegionRule.region == selector)).scalar_one_or_none()
        if clash is not None and (current is None or clash != current.id):
            errors["region"] = f"a rule for {selector} already exists (one rule per region)"
    destination_id = merged.get("destination_id")
    if destination_id is not None:
        if isinstance(destination_id, bool) or not isinstance(destination_id, int):
            errors["destination_id"] = "destination_id must be the id of a destination, or null"
        elif session.get(Destination, destination_id) is None:
            errors["destination_id"] = f"no destination has the id {destination_id}"
    return merged, errors


def _audit(session: Session, actor: str, action: str, rule_id: int, before: Any, after: Any) -> None:
    record_audit(
        session, actor=actor, action=action, object_type="region_rule", object_id=rule_id, before=before, after=after
    )


def create_rule(session: Session, data: Mapping[str, Any], *, actor: str) -> RegionRule:
    merged, errors = check_rule(session, data)
    if errors:
        raise RuleInvalid(errors)
    now = utcnow()
    row = RegionRule(**merged, created_at=now, updated_at=now)
    session.add(row)
    session.flush()
    _audit(session, actor, "region_rule.create", row.id, None, rule_fields(row))
    session.flush()
    return row


def get_rule(session: Session, rule_id: int) -> RegionRule:
    row = session.get(RegionRule, rule_id)
    if row is None:
        raise RuleNotFound(rule_id)
    return row


def update_rule(session: Session, rule_id: int, data: Mapping[str, Any], *, actor: str) -> RegionRule:
    row = get_rule(session, rule_id)
    merged, errors = check_rule(session, data, current=row)
    if errors:
        raise RuleInvalid(errors)
    before = rule_fields(row)
    if merged == before:
        return row
    for name, value in merged.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    _audit(session, actor, "region_rule.update", row.id, before, rule_fields(row))
    session.flush()
    return row


def delete_rule(session: Session, rule_id: int, *, actor: str) -> None:
    """Delete a rule. Events keep the rule id and its explanation in their stored decision."""
    row = get_rule(session, rule_id)
    _audit(session, actor, "region_rule.delete", row.id, rule_fields(row), None)
    session.delete(row)
    session.flush()


def list_rules(session: Session) -> list[RegionRule]:
    return list(session.scalars(select(RegionRule).order_by(RegionRule.region)))


def load_rules(session: Session) -> list[Rule]:
    """The enabled rules, as the pure decision takes them."""
    rows = session.scalars(select(RegionRule).where(RegionRule.enabled.is_(True)).order_by(RegionRule.id))
    return [rule_of(row) for row in rows]


# ----------------------------------------------------------------------------------------------------------
# The decision for a stored event
# ----------------------------------------------------------------------------------------------------------


def event_facts(session: Session, event: Event) -> tuple[EventFacts, ConsentLedger]:
    """The decision's inputs for a stored event: its facts and the person's ledger (empty without a profile)."""
    profile_region: str | None = None
    ledger = ConsentLedger(())
    if event.profile_id is not None:
        try:
            root = canonical_profile_id(session, event.profile_id)
        except ProfileNotFound:
            root = None  # erased and removed since ingestion: decided as an unknown person (no consent)
        if root is not None:
            profile_region = session.execute(select(Profile.region).where(Profile.id == root)).scalar_one_or_none()
            ledger = load_ledger(session, root)
    return facts_of(event, profile_region), ledger


def facts_of(event: Event, profile_region: str | None) -> EventFacts:
    """What the decision knows of a stored event, given its person's region (None: no person)."""
    return EventFacts(
        event_id=event.event_id,
        source_event=event.source_event,
        occurred_at=event.occurred_at,
        received_at=event.received_at,
        region=event.region,
        profile_region=profile_region,
        gpc=event.gpc,
        suppressed=bool(event.suppressed),
    )


def decide_stored_event(
    session: Session,
    event: Event,
    *,
    now: datetime,
    settings: Settings,
    rules: Sequence[Rule] | None = None,
    mappings: Mapping[str, MappingDefinition] | None = None,
    metrics: Metrics | None = None,
) -> Decision:
    """Decide `event` now and record the outcome on it; returns the `Decision`.

    * `wait` (inside the grace period): nothing recorded except `next_attempt_at = received_at + grace`; status
      stays `pending`, `decision`/`decided_at` stay empty.
    * `block`: `status = "blocked"`, `decision`, `decided_at`, mapping id/version, `next_attempt_at = None`.
    * `send` / `send_ldu`: `decision`, `decided_at`, mapping id/version and `destination_id` (the rule's override,
      else the mapping's destination, else left as it was, meaning the default destination) are recorded; the
      status is left to the scheduler, which sends next.

    `rules` / `mappings` default to `load_rules(session)` / `load_mapping_definitions(session)`; a scheduler
    deciding a batch loads them once and passes them in. No flush, no commit.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if rules is None:
        rules = load_rules(session)
    if mappings is None:
        from hub.mappings.services import load_mapping_definitions

        mappings = load_mapping_definitions(session)
    grace = timedelta(seconds=settings.consent_grace_seconds)
    facts, ledger = event_facts(session, event)
    decision = decide(facts, ledger, rules, mappings, now, grace)
    if metrics is not None:
        metrics.decisions.labels(outcome=decision.outcome, reason=decision.reason_code).inc()

    def mapping_destination(mapping_id: int) -> int | None:
        # session.get: the identity map answers (load_mapping_definitions loaded the rows), not one query per event.
        mapping_row = session.get(EventMapping, mapping_id)
        return mapping_row.destination_id if mapping_row is not None else None

    for name, value in decision_changes(
        decision, received_at=event.received_at, now=now, grace=grace, mapping_destination=mapping_destination
    ).items():
        setattr(event, name, value)
    return decision


def decision_changes(
    decision: Decision,
    *,
    received_at: datetime,
    now: datetime,
    grace: timedelta,
    mapping_destination: Callable[[int], int | None],
) -> dict[str, Any]:
    """The `events` columns `decide_stored_event` records for `decision` (column name → new value).

    `mapping_destination(mapping_id)` is the mapping's destination id (None: none); it is only asked when the rule
    names no destination. A scheduler batch writes these for many events in one statement.
    """
    if decision.outcome == "wait":
        return {"next_attempt_at": received_at + grace}
    mapping_id = decision.mapping_id if isinstance(decision.mapping_id, int) else None
    changes: dict[str, Any] = {
        "decision": decision.to_record(),
        "decided_at": now,
        "mapping_id": mapping_id,
        "mapping_version": decision.mapping_version if mapping_id is not None else None,
    }
    if decision.outcome == "block":
        changes["status"] = "blocked"
        changes["next_attempt_at"] = None
        return changes
    destination = decision.destination if isinstance(decision.destination, int) else None
    if destination is None and mapping_id is not None:
        destination = mapping_destination(mapping_id)
    if destination is not None:
        changes["destination_id"] = destination
    return changes
