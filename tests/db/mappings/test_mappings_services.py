"""Mapping service: validation on save, versions on every change, deletion rules, loading definitions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.audit.models import AuditEntry
from hub.events.models import Event
from hub.mappings.models import EventMapping
from hub.mappings.services import (
    MappingInUse,
    MappingInvalid,
    MappingNotFound,
    create_mapping,
    delete_mapping,
    list_mappings,
    load_mapping_definitions,
    mapping_versions,
    update_mapping,
)

PURCHASE = {
    "source_event": "order_completed",
    "event_name": "Purchase",
    "action_source": "website",
    "custom_data": {
        "value": "properties.total",
        "currency": "properties.currency",
        "contents": {"each": "properties.items[]", "fields": {"id": "sku", "quantity": "qty"}},
        "content_ids": "properties.items[].sku",
    },
}


def test_create_update_versions_and_audit(db_session: Session) -> None:
    mapping = create_mapping(db_session, PURCHASE, actor="ann@shop.example")
    assert mapping.version == 1
    update_mapping(
        db_session,
        mapping.id,
        {"custom_data": {**PURCHASE["custom_data"], "order_id": "properties.order_id"}},
        actor="bob",
    )
    # Saving the same definition again is not a new version.
    update_mapping(db_session, mapping.id, {"event_name": "Purchase"}, actor="bob")
    assert mapping.version == 2
    versions = mapping_versions(db_session, mapping.id)
    assert [(v.version, v.created_by) for v in versions] == [(1, "ann@shop.example"), (2, "bob")]
    assert "order_id" not in versions[0].definition["custom_data"]
    assert versions[1].definition["custom_data"]["order_id"] == "properties.order_id"
    actions = db_session.scalars(select(AuditEntry.action).where(AuditEntry.object_type == "event_mapping")).all()
    assert actions == ["mapping.create", "mapping.update"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**PURCHASE, "custom_data": {"value": "properties.total"}}, "custom_data.currency"),
        ({**PURCHASE, "custom_data": {"currency": {"const": "EUR"}}}, "custom_data.value"),
        ({**PURCHASE, "custom_data": {"value": 1, "currency": {"const": "EURO"}}}, "custom_data.currency"),
        ({**PURCHASE, "event_name": "purchase"}, "event_name"),
        ({**PURCHASE, "action_source": "web"}, "action_source"),
        ({**PURCHASE, "source_event": " "}, "source_event"),
        ({**PURCHASE, "custom_data": {"value": "total", "currency": "properties.c"}}, "custom_data.value"),
        ({**PURCHASE, "destination_id": 12345}, "destination_id"),
        ({**PURCHASE, "colour": "red"}, "colour"),
        ({"event_name": "Lead"}, "source_event"),
    ],
)
def test_invalid_mappings_are_refused_with_the_field(db_session: Session, data: dict[str, Any], field: str) -> None:
    with pytest.raises(MappingInvalid) as caught:
        create_mapping(db_session, data, actor="t")
    assert field in caught.value.errors, caught.value.errors
    assert db_session.scalar(select(EventMapping.id)) is None


def test_one_mapping_per_source_event(db_session: Session) -> None:
    create_mapping(db_session, PURCHASE, actor="t")
    with pytest.raises(MappingInvalid) as caught:
        create_mapping(db_session, {**PURCHASE, "event_name": "Lead", "custom_data": {}}, actor="t")
    assert "already exists" in caught.value.errors["source_event"]


def test_invalid_update_changes_nothing(db_session: Session) -> None:
    mapping = create_mapping(db_session, PURCHASE, actor="t")
    with pytest.raises(MappingInvalid):
        update_mapping(db_session, mapping.id, {"custom_data": {}}, actor="t")
    assert mapping.version == 1
    assert mapping.custom_data == PURCHASE["custom_data"]


def test_delete_unused_and_refuse_used(db_session: Session) -> None:
    unused = create_mapping(
        db_session, {"source_event": "signup", "event_name": "Lead", "action_source": "website"}, actor="t"
    )
    delete_mapping(db_session, unused.id, actor="t")
    assert [m.source_event for m in list_mappings(db_session)] == []
    used = create_mapping(db_session, PURCHASE, actor="t")
    db_session.add(
        Event(
            event_id="e1",
            source_event="order_completed",
            occurred_at=datetime.now(UTC),
            received_at=datetime.now(UTC),
            mapping_id=used.id,
            mapping_version=1,
            suppressed=False,
            status="sent",
            attempts=1,
            unknown_outcome_resends=0,
        )
    )
    db_session.flush()
    with pytest.raises(MappingInUse, match="disable it"):
        delete_mapping(db_session, used.id, actor="t")
    with pytest.raises(MappingNotFound):
        delete_mapping(db_session, 99999, actor="t")


def test_load_definitions_includes_disabled(db_session: Session) -> None:
    mapping = create_mapping(db_session, PURCHASE, actor="t")
    update_mapping(db_session, mapping.id, {"enabled": False}, actor="t")
    definitions = load_mapping_definitions(db_session)
    assert set(definitions) == {"order_completed"}
    definition = definitions["order_completed"]
    assert (definition.id, definition.version, definition.enabled, definition.event_name) == (
        mapping.id,
        2,
        False,
        "Purchase",
    )
