"""Export and import of the configuration document (see `hub.configuration.document` for its shape).

`import_config` is all or nothing: the document's shape is checked first, then every change is applied through
the domain services (which validate Meta's rules and references) inside one SAVEPOINT. Any error — or a dry run —
rolls the SAVEPOINT back, so the session is left exactly as it was; errors carry paths such as
`mappings[2].custom_data.value`. The diff is computed from the current export and the (completed) document before
anything is written, so a dry run shows exactly what a real import would do. Every applied change is audited
(mappings and rules by their services, the rest here), with secrets masked — the document has none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.audit.services import record_audit
from hub.cmp.models import CmpSource
from hub.configuration.document import (
    DOCUMENT_VERSION,
    SECTION_KEYS,
    SECTIONS,
    check_shape,
    diff_section,
)
from hub.consent.models import Purpose
from hub.db import utcnow
from hub.delivery.models import DEFAULT_API_VERSION, DeliveryAttempt, Destination
from hub.encryption import FieldEncryptor
from hub.events.models import Event
from hub.mappings.models import EventMapping
from hub.mappings.services import MappingInUse, MappingInvalid, create_mapping, delete_mapping, update_mapping
from hub.rules.models import RegionRule
from hub.rules.regions import normalize_selector
from hub.rules.services import RuleInvalid, create_rule, delete_rule, update_rule

DESTINATION_STATUSES = ("active", "paused")
_PIXEL_ID = re.compile(r"[0-9]{1,32}")
_API_VERSION = re.compile(r"v[0-9]{1,3}\.[0-9]")


@dataclass(frozen=True)
class ImportResult:
    """`changes`: the readable diff, one line per object plus indented field lines. `errors`: path → sentence
    (nothing was applied when not empty). `applied`: the changes were written (not a dry run, no errors).
    `notes`: follow-ups for a person, e.g. a new destination still needs its access token."""

    changes: tuple[str, ...]
    errors: Mapping[str, str] = field(default_factory=dict)
    applied: bool = False
    dry_run: bool = False
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "applied": self.applied,
            "changes": list(self.changes),
            "errors": dict(self.errors),
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------


def _destination_names(session: Session) -> dict[int, str]:
    return {row.id: row.name for row in session.execute(select(Destination.id, Destination.name))}


def export_config(session: Session) -> dict[str, Any]:
    """The whole configuration as a document (no secrets), in a stable order so exports diff cleanly in git."""
    names = _destination_names(session)
    purposes = [
        {"name": p.name, "kind": p.kind, "description": p.description}
        for p in session.scalars(select(Purpose).where(Purpose.builtin.is_(False)).order_by(Purpose.name))
    ]
    destinations = [
        {
            "name": d.name,
            "pixel_id": d.pixel_id,
            "api_version": d.api_version,
            "test_event_code": d.test_event_code,
            "status": d.status,
            "is_default": d.is_default,
        }
        for d in session.scalars(select(Destination).order_by(Destination.name))
    ]
    cmp_sources = [
        {
            "name": s.name,
            "adapter": s.adapter,
            "authenticator": s.authenticator,
            "settings": dict(s.settings or {}),
            "enabled": s.enabled,
        }
        for s in session.scalars(select(CmpSource).order_by(CmpSource.name))
    ]
    mappings = [
        {
            "source_event": m.source_event,
            "event_name": m.event_name,
            "action_source": m.action_source,
            "custom_data": dict(m.custom_data or {}),
            "destination": names.get(m.destination_id) if m.destination_id is not None else None,
            "enabled": m.enabled,
        }
        for m in session.scalars(select(EventMapping).order_by(EventMapping.source_event))
    ]
    rules = [
        {
            "region": r.region,
            "mode": r.mode,
            "required_purposes": list(r.required_purposes or []),
            "opt_out_purposes": list(r.opt_out_purposes or []),
            "ldu": r.ldu,
            "identifiers": None if r.identifiers is None else list(r.identifiers),
            "destination": names.get(r.destination_id) if r.destination_id is not None else None,
            "enabled": r.enabled,
            "note": r.note,
        }
        for r in session.scalars(select(RegionRule).order_by(RegionRule.region))
    ]
    return {
        "version": DOCUMENT_VERSION,
        "purposes": purposes,
        "destinations": destinations,
        "cmp_sources": cmp_sources,
        "mappings": mappings,
        "region_rules": rules,
    }


# ----------------------------------------------------------------------------------------------------------
# Completing a document: defaults filled in, keys normalized, so the diff shows only real changes
# ----------------------------------------------------------------------------------------------------------

_DEFAULTS: dict[str, dict[str, Any]] = {
    "purposes": {"kind": "consent", "description": ""},
    "destinations": {
        "api_version": DEFAULT_API_VERSION,
        "test_event_code": None,
        "status": "active",
        "is_default": False,
    },
    "cmp_sources": {"settings": {}, "enabled": True},
    "mappings": {"custom_data": {}, "destination": None, "enabled": True},
    "region_rules": {
        "required_purposes": ["ad_user_data"],
        "opt_out_purposes": ["sale", "sharing", "targeted_advertising"],
        "ldu": "never",
        "identifiers": None,
        "destination": None,
        "enabled": True,
        "note": "",
    },
}


def _complete(section: str, item: Mapping[str, Any]) -> dict[str, Any]:
    from hub.configuration.document import SECTION_FIELDS

    completed = {name: item.get(name, _DEFAULTS[section].get(name)) for name in SECTION_FIELDS[section]}
    key_field = SECTION_KEYS[section]
    completed[key_field] = str(completed[key_field]).strip()
    if section == "region_rules":
        completed["region"] = normalize_selector(completed["region"]) or completed["region"]
    return completed


# ----------------------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------------------


class _Errors(dict):
    def add(self, path: str, fields: Mapping[str, str], *, rename: Mapping[str, str] | None = None) -> None:
        for key, message in fields.items():
            key = (rename or {}).get(key, key)
            self[f"{path}.{key}" if key else path] = message


def _audit(session: Session, actor: str, action: str, kind: str, key: str, before: Any, after: Any) -> None:
    record_audit(session, actor=actor, action=action, object_type=kind, object_id=key, before=before, after=after)


def _check_destination(item: Mapping[str, Any]) -> dict[str, str]:
    problems: dict[str, str] = {}
    name = item["name"]
    if len(name) > 120:
        problems["name"] = "must be at most 120 characters"
    if not isinstance(item["pixel_id"], str | int) or not _PIXEL_ID.fullmatch(str(item["pixel_id"])):
        problems["pixel_id"] = "must be the numeric id of the Meta pixel (dataset), as text"
    if not isinstance(item["api_version"], str) or not _API_VERSION.fullmatch(item["api_version"]):
        problems["api_version"] = f"must be a Graph API version such as {DEFAULT_API_VERSION}"
    code = item["test_event_code"]
    if code is not None and (not isinstance(code, str) or not code.strip() or len(code) > 64):
        problems["test_event_code"] = "must be text of at most 64 characters, or null"
    if item["status"] not in DESTINATION_STATUSES:
        problems["status"] = f"must be one of {', '.join(DESTINATION_STATUSES)}"
    if not isinstance(item["is_default"], bool):
        problems["is_default"] = "must be true or false"
    return problems


def _destination_in_use(session: Session, destination_id: int) -> bool:
    checks = (
        select(func.count()).select_from(Event).where(Event.destination_id == destination_id),
        select(func.count()).select_from(DeliveryAttempt).where(DeliveryAttempt.destination_id == destination_id),
        select(func.count()).select_from(EventMapping).where(EventMapping.destination_id == destination_id),
        select(func.count()).select_from(RegionRule).where(RegionRule.destination_id == destination_id),
    )
    return any(session.scalar(query) for query in checks)


class _Importer:
    def __init__(self, session: Session, encryptor: FieldEncryptor, actor: str) -> None:
        self.session = session
        self.encryptor = encryptor
        self.actor = actor
        self.errors = _Errors()
        self.notes: list[str] = []
        self.now = utcnow()

    def destination_id(self, name: Any, path: str) -> int | None:
        if name is None:
            return None
        if not isinstance(name, str):
            self.errors[path] = "must be the name of a destination, or null"
            return None
        found = self.session.scalar(select(Destination.id).where(Destination.name == name))
        if found is None:
            self.errors[path] = f"no destination is named {name!r}"
        return found

    # -- purposes ----------------------------------------------------------------------------------------
    def purposes(self, operations: list, index_of: dict[str, int], removals: bool) -> None:
        from hub.consent.services import PURPOSE_KINDS, PurposeError, add_purpose, remove_purpose

        for op, key, before, after in operations:
            if (op == "remove") != removals:
                continue
            path = f"purposes[{index_of.get(key, 0)}]"
            if op != "remove":
                existing = self.session.get(Purpose, key)
                if existing is not None and existing.builtin:
                    self.errors[f"{path}.name"] = "is a built-in purpose; only custom purposes are configured"
                    continue
                if not isinstance(after["description"], str) or len(after["description"]) > 500:
                    self.errors[f"{path}.description"] = "must be text of at most 500 characters"
                    continue
                if after["kind"] not in PURPOSE_KINDS:
                    self.errors[f"{path}.kind"] = f"must be one of {', '.join(PURPOSE_KINDS)}"
                    continue
            try:
                if op == "remove":
                    remove_purpose(self.session, key)
                elif op == "add":
                    add_purpose(self.session, key, kind=after["kind"], description=after["description"], now=self.now)
                else:
                    purpose = self.session.get(Purpose, key)
                    assert purpose is not None  # the diff came from this session's export
                    purpose.kind, purpose.description = after["kind"], after["description"].strip()
            except PurposeError as error:
                if op == "remove":
                    self.errors[f"purposes.{key}"] = f"cannot be removed: {error.message}"
                else:
                    self.errors.add(path, error.fields)
                continue
            _audit(self.session, self.actor, f"config.purpose.{op}", "purpose", key, before, after)

    # -- destinations --------------------------------------------------------------------------------------
    def destinations(self, operations: list, index_of: dict[str, int], removals: bool) -> None:
        for op, key, before, after in operations:
            path = f"destinations[{index_of.get(key, 0)}]"
            if op == "remove":
                if not removals:
                    continue
                row = self.session.scalar(select(Destination).where(Destination.name == key))
                if row is not None and _destination_in_use(self.session, row.id):
                    self.errors[f"destinations.{key}"] = (
                        "cannot be removed: events, delivery attempts, mappings or rules refer to it; "
                        "pause it (status: paused) instead"
                    )
                    continue
                if row is not None:
                    self.session.delete(row)
            elif removals:
                continue
            else:
                problems = _check_destination(after)
                if problems:
                    self.errors.add(path, problems)
                    continue
                values = {
                    "pixel_id": str(after["pixel_id"]),
                    "api_version": after["api_version"],
                    "test_event_code": after["test_event_code"],
                    "status": after["status"],
                    "is_default": after["is_default"],
                }
                if op == "add":
                    self.session.add(Destination(name=key, created_at=self.now, updated_at=self.now, **values))
                    self.notes.append(f"destination {key}: set its access token in the admin UI before it can send")
                else:
                    row = self.session.scalar(select(Destination).where(Destination.name == key))
                    assert row is not None  # the diff came from this session's export
                    for name, value in values.items():
                        setattr(row, name, value)
                    row.updated_at = self.now
            _audit(self.session, self.actor, f"config.destination.{op}", "destination", key, before, after)
        self.session.flush()
        if not removals:
            defaults = self.session.scalar(
                select(func.count()).select_from(Destination).where(Destination.is_default.is_(True))
            )
            if defaults and defaults > 1:
                self.errors["destinations"] = "at most one destination can be the default (is_default: true)"

    # -- CMP sources ---------------------------------------------------------------------------------------
    def cmp_sources(self, operations: list, index_of: dict[str, int], removals: bool) -> None:
        from hub.cmp.sources import SourceError, create_source, delete_source, generate_secret, update_source

        for op, key, before, after in operations:
            path = f"cmp_sources[{index_of.get(key, 0)}]"
            row = self.session.scalar(select(CmpSource).where(CmpSource.name == key))
            try:
                if op == "remove":
                    if not removals or row is None:
                        continue
                    delete_source(self.session, row.id)
                elif removals:
                    continue
                elif op == "add":
                    create_source(
                        self.session,
                        self.encryptor,
                        name=key,
                        adapter=after["adapter"],
                        authenticator=after["authenticator"],
                        # The document never carries secrets: a fresh random one is stored, to be replaced by the
                        # CMP's own secret in the admin UI (until then no webhook authenticates).
                        secret=generate_secret(),
                        settings=after["settings"],
                        enabled=after["enabled"],
                        now=self.now,
                    )
                    self.notes.append(f"CMP source {key}: set the secret the CMP signs with in the admin UI")
                else:
                    assert row is not None  # the diff came from this session's export
                    update_source(
                        self.session,
                        self.encryptor,
                        row.id,
                        adapter=after["adapter"],
                        authenticator=after["authenticator"],
                        settings=after["settings"],
                        enabled=after["enabled"],
                        now=self.now,
                    )
            except SourceError as error:
                if op == "remove":
                    self.errors[f"cmp_sources.{key}"] = f"cannot be removed: {error.message}"
                else:
                    self.errors.add(path, {k: v for k, v in error.fields.items() if k != "secret"})
                continue
            _audit(self.session, self.actor, f"config.cmp_source.{op}", "cmp_source", key, before, after)

    # -- mappings ------------------------------------------------------------------------------------------
    def mappings(self, operations: list, index_of: dict[str, int], removals: bool) -> None:
        for op, key, _before, after in operations:
            path = f"mappings[{index_of.get(key, 0)}]"
            row = self.session.scalar(select(EventMapping).where(EventMapping.source_event == key))
            if op == "remove":
                if removals and row is not None:
                    try:
                        delete_mapping(self.session, row.id, actor=self.actor)
                    except MappingInUse as error:
                        self.errors[f"mappings.{key}"] = f"cannot be removed: {error}"
                continue
            if removals:
                continue
            destination_id = self.destination_id(after["destination"], f"{path}.destination")
            data = {
                "source_event": key,
                "event_name": after["event_name"],
                "action_source": after["action_source"],
                "custom_data": after["custom_data"],
                "enabled": after["enabled"],
                "destination_id": destination_id,
            }
            try:
                if op == "add":
                    create_mapping(self.session, data, actor=self.actor)
                else:
                    assert row is not None  # the diff came from this session's export
                    update_mapping(self.session, row.id, data, actor=self.actor)
            except MappingInvalid as error:
                self.errors.add(path, error.errors, rename={"destination_id": "destination"})

    # -- region rules --------------------------------------------------------------------------------------
    def region_rules(self, operations: list, index_of: dict[str, int], removals: bool) -> None:
        for op, key, _before, after in operations:
            path = f"region_rules[{index_of.get(key, 0)}]"
            row = self.session.scalar(select(RegionRule).where(RegionRule.region == key))
            if op == "remove":
                if removals and row is not None:
                    delete_rule(self.session, row.id, actor=self.actor)
                continue
            if removals:
                continue
            data = {name: after[name] for name in after if name != "destination"}
            data["destination_id"] = self.destination_id(after["destination"], f"{path}.destination")
            try:
                if op == "add":
                    create_rule(self.session, data, actor=self.actor)
                else:
                    assert row is not None  # the diff came from this session's export
                    update_rule(self.session, row.id, data, actor=self.actor)
            except RuleInvalid as error:
                self.errors.add(path, error.errors, rename={"destination_id": "destination"})


def import_config(
    session: Session,
    document: Mapping[str, Any],
    *,
    dry_run: bool,
    actor: str,
    encryptor: FieldEncryptor,
) -> ImportResult:
    """Bring the configuration to `document` (see the module docstring). Flushes only; the caller commits.

    Returns the diff in every case; `errors` non-empty means nothing was changed."""
    shape_errors = check_shape(document)
    if shape_errors:
        return ImportResult(changes=(), errors=shape_errors, dry_run=dry_run)
    current = export_config(session)
    plan: list[tuple[str, list, dict[str, int]]] = []
    lines: list[str] = []
    for section in SECTIONS:
        if section not in document:
            continue  # an absent section leaves that kind of object untouched
        desired = [_complete(section, item) for item in document[section] or []]
        index_of = {item[SECTION_KEYS[section]]: index for index, item in enumerate(desired)}
        operations, section_lines = diff_section(section, current[section], desired)
        plan.append((section, operations, index_of))
        lines.extend(section_lines)
    if not lines:
        return ImportResult(changes=(), dry_run=dry_run)

    importer = _Importer(session, encryptor, actor)
    savepoint = session.begin_nested()
    try:
        # Adds and changes first, in dependency order; removals after, in reverse (a mapping leaves a destination
        # before the destination goes).
        for section, operations, index_of in plan:
            getattr(importer, section)(operations, index_of, False)
        for section, operations, index_of in reversed(plan):
            getattr(importer, section)(operations, index_of, True)
        session.flush()
        if not importer.errors:
            _audit(session, actor, "config.import", "configuration", "document", None, {"changes": len(lines)})
            session.flush()
    except BaseException:
        savepoint.rollback()
        raise
    if importer.errors or dry_run:
        savepoint.rollback()
        return ImportResult(
            changes=tuple(lines), errors=dict(importer.errors), dry_run=dry_run, notes=tuple(importer.notes)
        )
    savepoint.commit()
    return ImportResult(changes=tuple(lines), applied=True, notes=tuple(importer.notes))
