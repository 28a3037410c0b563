"""The configuration document (config as code, DESIGN §4.10): its shape, parsing, and the readable diff. Pure.

```yaml
version: 1
purposes:       [{name, kind, description}]                       # custom purposes only
destinations:   [{name, pixel_id, api_version, test_event_code, status, is_default}]
cmp_sources:    [{name, adapter, authenticator, settings, enabled}]
mappings:       [{source_event, event_name, action_source, custom_data, destination, enabled}]
region_rules:   [{region, mode, required_purposes, opt_out_purposes, ldu, identifiers, destination, enabled, note}]
```

Secrets (access tokens, app secrets, webhook secrets) are never part of the document: they are set in the admin
UI. Each object is identified by its key (`name`, `source_event`, `region`); `destination` refers to a destination
by name. A section that is *absent* leaves that kind of object untouched; a section that is present is the whole
desired state, so objects missing from it are removed (the diff shows each removal before anything is applied).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

DOCUMENT_VERSION = 1
# Applied in this order: what others refer to first.
SECTIONS: tuple[str, ...] = ("purposes", "destinations", "cmp_sources", "mappings", "region_rules")
SECTION_KEYS: dict[str, str] = {
    "purposes": "name",
    "destinations": "name",
    "cmp_sources": "name",
    "mappings": "source_event",
    "region_rules": "region",
}
SECTION_FIELDS: dict[str, tuple[str, ...]] = {
    "purposes": ("name", "kind", "description"),
    "destinations": ("name", "pixel_id", "api_version", "test_event_code", "status", "is_default"),
    "cmp_sources": ("name", "adapter", "authenticator", "settings", "enabled"),
    "mappings": ("source_event", "event_name", "action_source", "custom_data", "destination", "enabled"),
    "region_rules": (
        "region",
        "mode",
        "required_purposes",
        "opt_out_purposes",
        "ldu",
        "identifiers",
        "destination",
        "enabled",
        "note",
    ),
}
SECTION_LABELS: dict[str, str] = {
    "purposes": "purpose",
    "destinations": "destination",
    "cmp_sources": "CMP source",
    "mappings": "mapping",
    "region_rules": "region rule",
}
# Keys that would carry a secret; refused anywhere in the document so nobody commits one to git by mistake.
SECRET_WORDS = ("secret", "token", "password", "passwd", "private_key", "api_key")


class DocumentError(ValueError):
    """The text is not a configuration document; `fields` names where (path → sentence)."""

    def __init__(self, message: str, fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = dict(fields or {})


def is_yaml_type(content_type: str | None) -> bool:
    kind = (content_type or "").split(";")[0].strip().lower()
    return kind in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def parse_document(text: str, *, yaml_format: bool) -> dict[str, Any]:
    """Parse YAML (safe_load) or JSON text into the document object; raises DocumentError."""
    try:
        document = yaml.safe_load(text) if yaml_format else json.loads(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise DocumentError(f"The document is not valid YAML{where}.") from None
    except ValueError as error:
        raise DocumentError(f"The document is not valid JSON ({error}).") from None
    if not isinstance(document, dict):
        raise DocumentError("The document must be a mapping with mappings, region_rules, destinations, ...")
    return document


def dump_document(document: Mapping[str, Any], *, yaml_format: bool) -> str:
    if yaml_format:
        return yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True, default_flow_style=False)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _secret_keys(value: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, inner in value.items():
            inner_path = f"{path}.{key}"
            if isinstance(key, str) and any(word in key.lower() for word in SECRET_WORDS):
                found.append(inner_path)
            found.extend(_secret_keys(inner, inner_path))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found.extend(_secret_keys(inner, f"{path}[{index}]"))
    return found


def check_shape(document: Mapping[str, Any]) -> dict[str, str]:
    """Structural problems (path → sentence): unknown keys, wrong types, missing or repeated object keys, secrets.

    Values are checked afterwards by the domain services, which know Meta's rules and the database."""
    errors: dict[str, str] = {}
    for key in document:
        if key != "version" and key not in SECTIONS:
            errors[str(key)] = f"unknown section; a document has version, {', '.join(SECTIONS)}"
    version = document.get("version", DOCUMENT_VERSION)
    if version != DOCUMENT_VERSION:
        errors["version"] = f"this hub reads version {DOCUMENT_VERSION} documents"
    for section in SECTIONS:
        if section not in document:
            continue
        items = document[section]
        if items is None:
            items = []
        if not isinstance(items, list):
            errors[section] = "must be a list"
            continue
        key_field = SECTION_KEYS[section]
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            path = f"{section}[{index}]"
            if not isinstance(item, dict):
                errors[path] = "must be a mapping"
                continue
            for field in item:
                if field not in SECTION_FIELDS[section]:
                    errors[f"{path}.{field}"] = (
                        "secrets are never part of the configuration document; set them in the admin UI"
                        if isinstance(field, str) and any(word in field.lower() for word in SECRET_WORDS)
                        else f"unknown field; allowed: {', '.join(SECTION_FIELDS[section])}"
                    )
            for secret_path in _secret_keys(item.get("settings"), f"{path}.settings"):
                errors[secret_path] = "secrets are never part of the configuration document; set them in the admin UI"
            key = item.get(key_field)
            if not isinstance(key, str) or not key.strip():
                errors[f"{path}.{key_field}"] = "is required (text)"
                continue
            identity = key.strip().upper() if section == "region_rules" else key.strip()
            if identity in seen:
                errors[f"{path}.{key_field}"] = f"{key!r} is already defined at {section}[{seen[identity]}]"
            else:
                seen[identity] = index
    return errors


# ----------------------------------------------------------------------------------------------------------
# Diff
# ----------------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def field_changes(before: Any, after: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted path, old, new) for every leaf that differs; lists are compared whole."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        changes: list[tuple[str, Any, Any]] = []
        for key in list(before) + [k for k in after if k not in before]:
            path = f"{prefix}.{key}" if prefix else str(key)
            changes.extend(field_changes(before.get(key), after.get(key), path))
        return changes
    return [] if before == after else [(prefix, before, after)]


def diff_section(
    section: str, current: Sequence[Mapping[str, Any]], desired: Sequence[Mapping[str, Any]]
) -> tuple[list[tuple[str, str, Mapping[str, Any] | None, Mapping[str, Any] | None]], list[str]]:
    """What importing `desired` over `current` does in one section.

    Returns (operations, lines): operations are ("add" | "change" | "remove", key, before, after) in application
    order; lines are the human diff ("+ mapping order_completed", "~ ...: field: old → new", "- ...")."""
    label = SECTION_LABELS[section]
    key_field = SECTION_KEYS[section]
    before_by_key = {item[key_field]: item for item in current}
    after_by_key = {item[key_field]: item for item in desired}
    operations: list[tuple[str, str, Mapping[str, Any] | None, Mapping[str, Any] | None]] = []
    lines: list[str] = []
    for key, after in after_by_key.items():
        before = before_by_key.get(key)
        if before is None:
            operations.append(("add", key, None, after))
            lines.append(f"+ {label} {key}")
            lines.extend(f"    {field}: {_show(value)}" for field, value in after.items() if field != key_field)
            continue
        changes = field_changes(before, after)
        if changes:
            operations.append(("change", key, before, after))
            lines.append(f"~ {label} {key}")
            lines.extend(f"    {path}: {_show(old)} → {_show(new)}" for path, old, new in changes)
    for key, before in before_by_key.items():
        if key not in after_by_key:
            operations.append(("remove", key, before, None))
            lines.append(f"- {label} {key}")
    return operations, lines
