"""Validate a mapping before it is saved: field path → a sentence the admin can act on.

The syntax is described in `hub.mappings.apply`. The checks follow Meta's documented rules (reference/capi.md §4,
§6) so that a saved mapping cannot produce an event Meta would reject for its shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub.mappings.apply import (
    ACTION_SOURCES,
    CONTENT_ITEM_FIELDS,
    ENUM_FIELDS,
    INTEGER_FIELDS,
    NUMBER_FIELDS,
    SCALAR_FIELDS,
    STANDARD_EVENTS,
    STRING_FIELDS,
    MappingDefinition,
    coerce_integer,
    coerce_number,
    coerce_string,
    normalize_currency,
    parse_path,
)

# Meta Pixel docs (conversion tracking, custom events): custom event names are strings of at most 50 characters.
MAX_EVENT_NAME_LENGTH = 50

_STANDARD_BY_LOWER = {name.lower(): name for name in STANDARD_EVENTS}


def _validate_event_name(name: Any, problems: dict[str, str]) -> None:
    if not isinstance(name, str) or not name.strip():
        problems["event_name"] = "event_name is required (a Meta standard event such as Purchase, or a custom name)"
        return
    if name != name.strip():
        problems["event_name"] = "event_name must not start or end with spaces (Meta matches names exactly)"
        return
    if len(name) > MAX_EVENT_NAME_LENGTH:
        problems["event_name"] = f"event_name is longer than Meta's {MAX_EVENT_NAME_LENGTH} characters"
        return
    standard = _STANDARD_BY_LOWER.get(name.lower())
    if standard is not None and standard != name:
        # Meta: names are case-sensitive; `purchase` would be a custom event that neither optimises as a purchase
        # nor deduplicates with the Pixel's `Purchase` (capi.md §8).
        problems["event_name"] = f"use Meta's standard spelling {standard!r}; names are case-sensitive"


def _check_path(spec: str, where: str, problems: dict[str, str], *, relative: bool = False) -> bool:
    try:
        segments = parse_path(spec, relative=relative)
    except ValueError as exc:
        problems[where] = str(exc)
        return False
    return any(segment.each for segment in segments)


def _validate_constant(name: str, value: Any, where: str, problems: dict[str, str]) -> None:
    if name == "currency":
        if normalize_currency(value) is None:
            problems[where] = f"{value!r} is not an ISO 4217 currency code (e.g. USD, EUR)"
    elif name in NUMBER_FIELDS:
        if coerce_number(value) is None:
            problems[where] = f"{name} must be a number, got {value!r}"
    elif name in INTEGER_FIELDS:
        integer = coerce_integer(value)
        if integer is None or integer < 0:
            problems[where] = f"{name} must be a non-negative whole number, got {value!r}"
    elif name in STRING_FIELDS:
        if coerce_string(value) is None:
            problems[where] = f"{name} must be non-empty text, got {value!r}"
    elif name in ENUM_FIELDS:
        if value not in ENUM_FIELDS[name]:
            problems[where] = f"{name} must be one of {', '.join(ENUM_FIELDS[name])}, got {value!r}"
    elif name == "content_ids":
        values = value if isinstance(value, list) else [value]
        if not values or any(coerce_string(v) is None for v in values):
            problems[where] = "content_ids must be a list of product ids (text or numbers)"
    elif name == "contents":
        problems[where] = (
            'map contents from the items list: {"each": "properties.items[]", '
            '"fields": {"id": "sku", "quantity": "qty", "item_price": "price"}}'
        )


def _validate_each(name: str, spec: Mapping[str, Any], where: str, problems: dict[str, str]) -> None:
    extra = set(spec) - {"each", "fields"}
    if extra:
        problems[where] = f"unexpected keys {', '.join(sorted(extra))}; an each-entry has only each and fields"
        return
    if name in SCALAR_FIELDS or name == "content_ids":
        problems[where] = f"{name} takes {'a list of ids' if name == 'content_ids' else 'one value'}; use a path"
        return
    each = spec.get("each")
    if not isinstance(each, str):
        problems[f"{where}.each"] = "each must be the path of a list, e.g. properties.items[]"
        return
    try:
        segments = parse_path(each)
    except ValueError as exc:
        problems[f"{where}.each"] = str(exc)
        return
    if not segments[-1].each:
        problems[f"{where}.each"] = f"each must end with [] to walk the list: {each}[]"
        return
    fields = spec.get("fields")
    if not isinstance(fields, Mapping) or not fields:
        problems[f"{where}.fields"] = 'fields must map item keys to paths inside each element, e.g. {"id": "sku"}'
        return
    for field_name, sub_spec in fields.items():
        field_where = f"{where}.fields.{field_name}"
        if name == "contents" and field_name not in CONTENT_ITEM_FIELDS:
            problems[field_where] = f"Meta's contents items have {', '.join(sorted(CONTENT_ITEM_FIELDS))}"
            continue
        if isinstance(sub_spec, str):
            if _check_path(sub_spec, field_where, problems, relative=True):
                problems[field_where] = f"{sub_spec} walks a list; an item field takes one value"
        elif isinstance(sub_spec, Mapping) and set(sub_spec) == {"const"}:
            constant = sub_spec["const"]
            if field_name == "quantity" and coerce_integer(constant) is None:
                problems[field_where] = f"quantity must be a whole number, got {constant!r}"
            elif field_name == "item_price" and coerce_number(constant) is None:
                problems[field_where] = f"item_price must be a number, got {constant!r}"
            elif field_name == "delivery_category" and constant not in ENUM_FIELDS["delivery_category"]:
                problems[field_where] = f"delivery_category must be one of {', '.join(ENUM_FIELDS[field_name])}"
        elif not isinstance(sub_spec, bool | int | float):
            problems[field_where] = 'an item field is a path inside the element or {"const": value}'
    if name == "contents" and "id" not in fields:
        problems[f"{where}.fields.id"] = 'contents items need an id (the product id or SKU), e.g. "id": "sku"'


def _validate_entry(name: Any, spec: Any, problems: dict[str, str]) -> None:
    if not isinstance(name, str) or not name.strip():
        problems["custom_data"] = "custom_data field names must be non-empty text"
        return
    where = f"custom_data.{name}"
    if isinstance(spec, str):
        walks_list = _check_path(spec, where, problems)
        if walks_list and name in SCALAR_FIELDS:
            problems[where] = f"{spec} yields a list but {name} takes one value"
        elif name == "contents" and where not in problems:
            problems[where] = (
                f'contents needs item fields: {{"each": "{spec}", "fields": {{"id": "sku", "quantity": "qty"}}}}'
            )
        return
    if isinstance(spec, bool | int | float):
        _validate_constant(name, spec, where, problems)
        return
    if isinstance(spec, Mapping):
        if set(spec) == {"const"}:
            _validate_constant(name, spec["const"], where, problems)
        elif "each" in spec:
            _validate_each(name, spec, where, problems)
        else:
            problems[where] = (
                'use a path ("properties.total"), a constant ({"const": "EUR"}) '
                'or a list of objects ({"each": "properties.items[]", "fields": {...}})'
            )
        return
    problems[where] = f"unsupported mapping entry {spec!r}"


def validate_mapping(mapping: MappingDefinition) -> dict[str, str]:
    """Problems with `mapping`, keyed by field path; an empty dict means it can be saved."""
    problems: dict[str, str] = {}
    if not isinstance(mapping.source_event, str) or not mapping.source_event.strip():
        problems["source_event"] = "source_event is required: the event name your systems send (e.g. order_completed)"
    _validate_event_name(mapping.event_name, problems)
    if mapping.action_source not in ACTION_SOURCES:
        problems["action_source"] = f"action_source must be one of Meta's values: {', '.join(ACTION_SOURCES)}"
    if isinstance(mapping.version, bool) or not isinstance(mapping.version, int) or mapping.version < 1:
        problems["version"] = "version must be a whole number from 1"
    if not isinstance(mapping.enabled, bool):
        problems["enabled"] = "enabled must be true or false"
    if not isinstance(mapping.custom_data, Mapping):
        problems["custom_data"] = "custom_data must map Meta field names to property paths or constants"
        return problems
    for name, spec in mapping.custom_data.items():
        _validate_entry(name, spec, problems)
    if mapping.event_name == "Purchase":
        # Meta: value and currency are required for Purchase (capi.md §6).
        for required in ("value", "currency"):
            if required not in mapping.custom_data:
                problems.setdefault(
                    f"custom_data.{required}",
                    f"Purchase events need {required} mapped (Meta rejects a Purchase without it)",
                )
    elif "value" in mapping.custom_data and "currency" not in mapping.custom_data:
        problems.setdefault(
            "custom_data.currency",
            "map currency as well: Meta reads value together with an ISO 4217 currency",
        )
    return problems
