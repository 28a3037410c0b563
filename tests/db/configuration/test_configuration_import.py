"""Config as code: export → import → export round trip, dry runs, all-or-nothing imports and the diff."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.audit.models import AuditEntry
from hub.cmp.models import CmpSource
from hub.configuration.document import dump_document, parse_document
from hub.configuration.services import export_config, import_config
from hub.delivery.models import Destination
from hub.encryption import FieldEncryptor
from hub.mappings.models import EventMapping, EventMappingVersion

ENCRYPTOR = FieldEncryptor([Fernet.generate_key().decode()])

FULL: dict[str, Any] = {
    "version": 1,
    "purposes": [{"name": "email_marketing", "kind": "consent", "description": "Newsletters"}],
    "destinations": [
        {
            "name": "main pixel",
            "pixel_id": "1234567890123456",
            "api_version": "v26.0",
            "test_event_code": "TEST123",
            "status": "active",
            "is_default": True,
        }
    ],
    "cmp_sources": [
        {
            "name": "didomi",
            "adapter": "didomi",
            "authenticator": "bearer",
            "settings": {"purpose_map": {"cookies": "ad_storage"}},
            "enabled": True,
        }
    ],
    "mappings": [
        {
            "source_event": "order_completed",
            "event_name": "Purchase",
            "action_source": "website",
            "custom_data": {
                "value": "properties.total",
                "currency": "properties.currency",
                "contents": {"each": "properties.items[]", "fields": {"id": "sku", "quantity": "qty"}},
            },
            "destination": "main pixel",
            "enabled": True,
        },
        {
            "source_event": "signup",
            "event_name": "CompleteRegistration",
            "action_source": "website",
            "custom_data": {},
            "destination": None,
            "enabled": False,
        },
    ],
}


def apply(session: Session, document: dict[str, Any], *, dry_run: bool = False) -> Any:
    return import_config(session, document, dry_run=dry_run, actor="test", encryptor=ENCRYPTOR)


def count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_round_trip_export_import_export_is_equal(db_session: Session) -> None:
    result = apply(db_session, FULL)
    assert result.errors == {}
    assert result.applied
    first = export_config(db_session)
    assert first["mappings"][0]["destination"] == "main pixel"
    assert first["purposes"] == FULL["purposes"]
    assert first["destinations"] == FULL["destinations"]
    assert first["cmp_sources"] == FULL["cmp_sources"]
    assert first["mappings"] == sorted(FULL["mappings"], key=lambda m: m["source_event"])
    assert len(first["region_rules"]) == 27  # the shipped defaults
    # Through YAML text and back: the same document, and importing it again changes nothing.
    text = dump_document(first, yaml_format=True)
    again = apply(db_session, parse_document(text, yaml_format=True))
    assert again.changes == ()
    assert export_config(db_session) == first
    # JSON too.
    assert parse_document(dump_document(first, yaml_format=False), yaml_format=False) == first


def test_secrets_are_never_exported(db_session: Session) -> None:
    apply(db_session, FULL)
    destination = db_session.scalar(select(Destination))
    destination.access_token_encrypted = ENCRYPTOR.encrypt("EAAB-super-secret")
    db_session.flush()
    text = dump_document(export_config(db_session), yaml_format=True)
    assert "secret" not in text.lower()
    assert "token" not in text.lower().replace("test_event_code", "")
    source = db_session.scalar(select(CmpSource))
    assert source.secret_encrypted  # a random secret was stored for the new source


def test_dry_run_changes_nothing_and_shows_the_diff(db_session: Session) -> None:
    before = export_config(db_session)
    audits = count(db_session, AuditEntry)
    result = apply(db_session, FULL, dry_run=True)
    assert result.errors == {}
    assert result.dry_run
    assert not result.applied
    assert "+ mapping order_completed" in result.changes
    assert "+ destination main pixel" in result.changes
    assert "+ CMP source didomi" in result.changes
    assert "+ purpose email_marketing" in result.changes
    assert export_config(db_session) == before
    assert count(db_session, AuditEntry) == audits
    assert count(db_session, EventMapping) == 0


def test_change_lines_name_each_field(db_session: Session) -> None:
    apply(db_session, FULL)
    changed = copy.deepcopy(export_config(db_session))
    changed["mappings"][0]["custom_data"]["value"] = "properties.amount"
    changed["region_rules"] = [r for r in changed["region_rules"] if r["region"] != "CN"]
    for rule in changed["region_rules"]:
        if rule["region"] == "US":
            rule["ldu"] = "on_opt_out"
    result = apply(db_session, changed)
    assert result.errors == {}
    assert result.changes == (
        "~ mapping order_completed",
        '    custom_data.value: "properties.total" → "properties.amount"',
        "~ region rule US",
        '    ldu: "never" → "on_opt_out"',
        "- region rule CN",
    )
    mapping = db_session.scalar(select(EventMapping).where(EventMapping.source_event == "order_completed"))
    assert mapping.version == 2
    assert count(db_session, EventMappingVersion) == 3  # two mappings at v1, one at v2


def test_absent_section_is_untouched_present_section_is_complete(db_session: Session) -> None:
    apply(db_session, FULL)
    result = apply(db_session, {"mappings": [FULL["mappings"][0]]})
    assert result.changes == ("- mapping signup",)
    exported = export_config(db_session)
    assert len(exported["region_rules"]) == 27
    assert [m["source_event"] for m in exported["mappings"]] == ["order_completed"]


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        (lambda d: d["mappings"][1].update(event_name="purchase"), "mappings[1].event_name"),
        (lambda d: d["mappings"][0]["custom_data"].pop("currency"), "mappings[0].custom_data.currency"),
        (lambda d: d["mappings"][0].update(destination="nope"), "mappings[0].destination"),
        (lambda d: d["destinations"][0].update(pixel_id="abc"), "destinations[0].pixel_id"),
        (lambda d: d["destinations"][0].update(access_token="EAAB"), "destinations[0].access_token"),
        (lambda d: d["cmp_sources"][0].update(adapter="onetrust"), "cmp_sources[0].adapter"),
        (lambda d: d["cmp_sources"][0]["settings"].update(secret="x"), "cmp_sources[0].settings.secret"),
        (lambda d: d["purposes"][0].update(kind="maybe"), "purposes[0].kind"),
        (
            lambda d: d.update(region_rules=[{"region": "DE", "mode": "opt_in", "required_purposes": ["nope"]}]),
            "region_rules[0].required_purposes",
        ),
        (
            lambda d: d.update(region_rules=[{"region": "DE", "mode": "opt_in"}, {"region": "de", "mode": "block"}]),
            "region_rules[1].region",
        ),
        (lambda d: d.update(extra=[]), "extra"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(mappings={"a": 1}), "mappings"),
    ],
)
def test_invalid_document_changes_nothing(db_session: Session, patch: Any, path: str) -> None:
    document = copy.deepcopy(FULL)
    patch(document)
    before = export_config(db_session)
    audits = count(db_session, AuditEntry)
    result = apply(db_session, document)
    assert path in result.errors, result.errors
    assert not result.applied
    assert export_config(db_session) == before
    assert count(db_session, AuditEntry) == audits


def test_one_bad_object_rolls_back_the_good_ones(db_session: Session) -> None:
    document = copy.deepcopy(FULL)
    document["mappings"].append(
        {"source_event": "lead", "event_name": "Lead", "action_source": "websites", "custom_data": {}}
    )
    result = apply(db_session, document)
    assert set(result.errors) == {"mappings[2].action_source"}
    assert count(db_session, Destination) == 0
    assert count(db_session, EventMapping) == 0
    assert count(db_session, CmpSource) == 0


def test_applied_changes_are_audited(db_session: Session) -> None:
    apply(db_session, FULL)
    actions = set(db_session.scalars(select(AuditEntry.action)))
    assert {
        "config.import",
        "config.destination.add",
        "config.cmp_source.add",
        "config.purpose.add",
        "mapping.create",
    } <= actions
