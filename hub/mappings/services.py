"""Event mappings in the database: create, update, delete, list, with validation and versions (DESIGN §3).

Every save that changes a mapping bumps `version` and writes an `EventMappingVersion` with the full definition,
so an event can say exactly which mapping it was sent with (`events.mapping_id` + `mapping_version`). Saves are
validated with `hub.mappings.validate.validate_mapping` (Meta's rules: Purchase needs value and currency, ISO
4217 currencies, known action sources, ...). Services flush only; the caller commits. Each change is audited.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.audit.services import record_audit
from hub.db import utcnow
from hub.delivery.models import Destination
from hub.errors import InvalidFields
from hub.events.models import Event
from hub.mappings.apply import MappingDefinition
from hub.mappings.models import EventMapping, EventMappingVersion
from hub.mappings.validate import validate_mapping

MAPPING_FIELDS: tuple[str, ...] = (
    "source_event",
    "event_name",
    "action_source",
    "custom_data",
    "enabled",
    "destination_id",
)
# What a version records (the definition an event was mapped with).
_DEFINITION_FIELDS = ("source_event", "event_name", "action_source", "custom_data", "enabled", "destination_id")


class MappingInvalid(InvalidFields):
    """The mapping cannot be saved; `errors` maps field paths to sentences."""


class MappingNotFound(LookupError):
    pass


class MappingInUse(ValueError):
    """Events were mapped with this mapping; it can be disabled but not deleted (their history points at it)."""


def definition_of(mapping: EventMapping) -> dict[str, Any]:
    return {name: getattr(mapping, name) for name in _DEFINITION_FIELDS}


def mapping_definition(mapping: EventMapping) -> MappingDefinition:
    return MappingDefinition(
        id=mapping.id,
        version=mapping.version,
        source_event=mapping.source_event,
        event_name=mapping.event_name,
        action_source=mapping.action_source,
        custom_data=dict(mapping.custom_data or {}),
        enabled=mapping.enabled,
    )


def check_mapping(
    session: Session, data: Mapping[str, Any], *, current: EventMapping | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The complete definition after applying `data` to `current` (or to defaults), and its problems."""
    errors: dict[str, str] = {}
    for key in data:
        if key not in MAPPING_FIELDS:
            errors[str(key)] = f"unknown field; a mapping has {', '.join(MAPPING_FIELDS)}"
    merged: dict[str, Any] = (
        definition_of(current)
        if current is not None
        else {"custom_data": {}, "enabled": True, "destination_id": None, "action_source": "website"}
    )
    merged.update({k: v for k, v in data.items() if k in MAPPING_FIELDS})
    if isinstance(merged.get("source_event"), str):
        merged["source_event"] = merged["source_event"].strip()
    definition = MappingDefinition(
        id=current.id if current is not None else 0,
        version=current.version if current is not None else 1,
        source_event=merged.get("source_event"),  # type: ignore[arg-type]
        event_name=merged.get("event_name"),  # type: ignore[arg-type]
        action_source=merged.get("action_source"),  # type: ignore[arg-type]
        custom_data=merged.get("custom_data") if merged.get("custom_data") is not None else {},  # type: ignore[arg-type]
        enabled=merged.get("enabled"),  # type: ignore[arg-type]
    )
    errors.update(validate_mapping(definition))
    source_event = merged.get("source_event")
    if isinstance(source_event, str) and len(source_event) > 255:
        errors["source_event"] = "source_event must be at most 255 characters"
    elif isinstance(source_event, str) and source_event and "source_event" not in errors:
        clash = session.execute(
            select(EventMapping.id).where(EventMapping.source_event == source_event)
        ).scalar_one_or_none()
        if clash is not None and (current is None or clash != current.id):
            errors["source_event"] = f"a mapping for {source_event!r} already exists (one mapping per source event)"
    destination_id = merged.get("destination_id")
    if destination_id is not None:
        if isinstance(destination_id, bool) or not isinstance(destination_id, int):
            errors["destination_id"] = "destination_id must be the id of a destination, or null for the default"
        elif session.get(Destination, destination_id) is None:
            errors["destination_id"] = f"no destination has the id {destination_id}"
    return merged, errors


def _audit(session: Session, actor: str, action: str, mapping_id: int, before: Any, after: Any) -> None:
    record_audit(
        session,
        actor=actor,
        action=action,
        object_type="event_mapping",
        object_id=mapping_id,
        before=before,
        after=after,
    )


def _write_version(session: Session, mapping: EventMapping, actor: str) -> None:
    session.add(
        EventMappingVersion(
            mapping_id=mapping.id,
            version=mapping.version,
            definition=definition_of(mapping),
            created_by=actor,
            created_at=utcnow(),
        )
    )


def create_mapping(session: Session, data: Mapping[str, Any], *, actor: str) -> EventMapping:
    """Validate and add a mapping at version 1. Raises MappingInvalid."""
    merged, errors = check_mapping(session, data)
    if errors:
        raise MappingInvalid(errors)
    now = utcnow()
    mapping = EventMapping(**merged, version=1, created_at=now, updated_at=now)
    session.add(mapping)
    session.flush()
    _write_version(session, mapping, actor)
    _audit(session, actor, "mapping.create", mapping.id, None, definition_of(mapping))
    session.flush()
    return mapping


def get_mapping(session: Session, mapping_id: int) -> EventMapping:
    mapping = session.get(EventMapping, mapping_id)
    if mapping is None:
        raise MappingNotFound(mapping_id)
    return mapping


def update_mapping(session: Session, mapping_id: int, data: Mapping[str, Any], *, actor: str) -> EventMapping:
    """Apply the given fields; a real change bumps the version and records it. Raises MappingInvalid/NotFound."""
    mapping = get_mapping(session, mapping_id)
    merged, errors = check_mapping(session, data, current=mapping)
    if errors:
        raise MappingInvalid(errors)
    before = definition_of(mapping)
    if merged == before:
        return mapping
    for name, value in merged.items():
        setattr(mapping, name, value)
    mapping.version += 1
    mapping.updated_at = utcnow()
    session.flush()
    _write_version(session, mapping, actor)
    _audit(session, actor, "mapping.update", mapping.id, before, definition_of(mapping))
    session.flush()
    return mapping


def events_using(session: Session, mapping_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Event).where(Event.mapping_id == mapping_id)) or 0


def delete_mapping(session: Session, mapping_id: int, *, actor: str) -> None:
    """Delete a mapping no event was mapped with; otherwise raise MappingInUse (disable it instead)."""
    mapping = get_mapping(session, mapping_id)
    used = events_using(session, mapping_id)
    if used:
        raise MappingInUse(
            f"{used} event(s) were decided with the mapping for {mapping.source_event!r}; "
            "disable it (enabled: false) instead of deleting it, so their history stays explainable"
        )
    before = definition_of(mapping)
    session.execute(
        EventMappingVersion.__table__.delete().where(EventMappingVersion.mapping_id == mapping_id)  # type: ignore[attr-defined]
    )
    session.delete(mapping)
    _audit(session, actor, "mapping.delete", mapping_id, before, None)
    session.flush()


def list_mappings(session: Session) -> list[EventMapping]:
    return list(session.scalars(select(EventMapping).order_by(EventMapping.source_event)))


def mapping_versions(session: Session, mapping_id: int) -> list[EventMappingVersion]:
    return list(
        session.scalars(
            select(EventMappingVersion)
            .where(EventMappingVersion.mapping_id == mapping_id)
            .order_by(EventMappingVersion.version)
        )
    )


def load_mapping_definitions(session: Session) -> dict[str, MappingDefinition]:
    """Every mapping (enabled or not: a disabled one explains its block) keyed by source event name."""
    return {m.source_event: mapping_definition(m) for m in session.scalars(select(EventMapping))}
