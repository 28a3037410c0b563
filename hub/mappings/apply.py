"""Apply an event mapping: a source event's properties → Meta's event_name, action_source and custom_data.

Mapping syntax for `custom_data` (target field → source), the same in the admin UI and the config YAML:

* a **string** is always a property path, rooted at `properties`: `"properties.total"`,
  `"properties.customer.tier"`; a segment ending in `[]` walks every element of a list:
  `"properties.items[].sku"` → `["SKU-1", "SKU-2"]` (missing or null elements are skipped).
* a **number or boolean** is a constant: `{"value": 0}`.
* `{"const": <any JSON value>}` is a constant of any type; string constants must use it
  (`{"currency": {"const": "EUR"}}`), since a bare string is a path.
* `{"each": "properties.items[]", "fields": {"id": "sku", "quantity": "qty", "item_price": "price"}}` builds a
  list of objects, one per element; field sources are paths *relative to the element* (or `{"const": ...}`).
  This is how `contents` is mapped.

Meta's standard custom_data fields are coerced to the types Meta documents (reference/capi.md §6); a value that
cannot be coerced is dropped with a warning rather than sent wrong. Problems that would make Meta reject the event
(Purchase without value/currency) are `errors`: the dispatcher must not send such an event and records why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pycountry

from hub.delivery.payload import ACTION_SOURCES  # reference/capi.md §4: Meta's 9 values

# Meta's standard events (Pixel / CAPI). Any other name is a custom event; names are case-sensitive and, with
# event_id, form the dedup key (capi.md §8), so `purchase` is a *custom* event that will not dedup with `Purchase`.
STANDARD_EVENTS: tuple[str, ...] = (
    "AddPaymentInfo",
    "AddToCart",
    "AddToWishlist",
    "CompleteRegistration",
    "Contact",
    "CustomizeProduct",
    "Donate",
    "FindLocation",
    "InitiateCheckout",
    "Lead",
    "PageView",
    "Purchase",
    "Schedule",
    "Search",
    "StartTrial",
    "SubmitApplication",
    "Subscribe",
    "ViewContent",
)

NUMBER_FIELDS = frozenset({"value", "predicted_ltv", "net_revenue"})
INTEGER_FIELDS = frozenset({"num_items"})
STRING_FIELDS = frozenset({"order_id", "content_name", "content_category", "search_string", "status", "item_number"})
# capi.md §6: enumerations.
ENUM_FIELDS: dict[str, tuple[str, ...]] = {
    "content_type": ("product", "product_group"),
    "delivery_category": ("in_store", "curbside", "home_delivery"),
}
CONTENT_ITEM_FIELDS = frozenset(
    {"id", "quantity", "item_price", "delivery_category", "title", "description", "brand", "category"}
)
# Fields whose value must be a single scalar (a `[]` path would yield a list).
SCALAR_FIELDS = NUMBER_FIELDS | INTEGER_FIELDS | STRING_FIELDS | frozenset(ENUM_FIELDS) | {"currency"}

# ISO 4217 codes that are not transaction currencies: XTS is reserved for testing, XXX means "no currency".
_NOT_TRANSACTION_CURRENCIES = frozenset({"XTS", "XXX"})

PATH_ROOT = "properties"
_SEGMENT = re.compile(r"^(?P<key>[^.\[\]]+)(?P<each>\[\])?$")
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


@dataclass(frozen=True)
class PathSegment:
    key: str
    each: bool  # the segment ended in `[]`: iterate the list found under `key`


@dataclass(frozen=True)
class MappingDefinition:
    """One version of a mapping from a source event name to a Meta event (DESIGN §3 "mappings")."""

    id: int | str
    version: int
    source_event: str
    event_name: str
    action_source: str
    custom_data: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True


@dataclass(frozen=True)
class MappedEvent:
    event_name: str
    action_source: str
    custom_data: dict[str, Any]
    mapping_id: int | str
    mapping_version: int
    # field path → sentence. Warnings: something was left out, the event is still valid for Meta.
    warnings: dict[str, str] = field(default_factory=dict)
    # field path → sentence. Errors: Meta would reject the event as mapped; do not send it.
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_path(path: str, *, relative: bool = False) -> tuple[PathSegment, ...]:
    """`"properties.items[].sku"` → segments; raises ValueError with a sentence for a malformed path.

    Absolute paths (the default) must start at `properties`; `relative` paths (inside an `each` spec) start at
    the list element.
    """
    if not isinstance(path, str):
        raise ValueError("a property path must be a non-empty string such as properties.total")
    return _parse_path_text(path, relative)


@lru_cache(maxsize=4096)
def _parse_path_text(path: str, relative: bool) -> tuple[PathSegment, ...]:
    # Cached: a mapping's few paths are parsed again for every event it maps (errors are raised, never cached).
    if not path.strip():
        raise ValueError("a property path must be a non-empty string such as properties.total")
    if path != path.strip():
        raise ValueError(f"property path {path!r} has surrounding spaces")
    segments: list[PathSegment] = []
    for raw in path.split("."):
        match = _SEGMENT.match(raw)
        if match is None:
            raise ValueError(
                f"property path {path!r} is malformed at {raw!r}: use dot-separated names, "
                "with [] after a name to walk a list (properties.items[].sku)"
            )
        segments.append(PathSegment(match["key"], match["each"] is not None))
    if not relative:
        if segments[0].key != PATH_ROOT or segments[0].each:
            raise ValueError(f"property path {path!r} must start with {PATH_ROOT}. (e.g. properties.total)")
        if len(segments) == 1:
            raise ValueError(f"property path {path!r} must name a property below {PATH_ROOT}")
    return tuple(segments)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def resolve_path(root: Any, segments: tuple[PathSegment, ...]) -> Any:
    """The value at `segments` below `root`, a list for `[]` paths, or MISSING. Null counts as missing."""
    if not segments:
        return MISSING if root is None else root
    head, rest = segments[0], segments[1:]
    if not isinstance(root, Mapping) or head.key not in root:
        return MISSING
    child = root[head.key]
    if not head.each:
        return resolve_path(child, rest)
    if not isinstance(child, list):
        return MISSING
    nested = any(segment.each for segment in rest)
    values: list[Any] = []
    for element in child:
        value = resolve_path(element, rest)
        if value is MISSING:
            continue
        if nested and isinstance(value, list):
            values.extend(value)
        else:
            values.append(value)
    return values


def normalize_currency(value: Any) -> str | None:
    """ISO 4217 alpha code, uppercased (`usd` → `USD`); None if not a real transaction currency."""
    if not isinstance(value, str):
        return None
    code = value.strip().upper()
    if len(code) != 3 or not code.isalpha() or code in _NOT_TRANSACTION_CURRENCIES:
        return None
    return code if _is_iso_currency(code) else None


@lru_cache(maxsize=1024)
def _is_iso_currency(code: str) -> bool:
    # Cached: pycountry's lookup costs more than the rest of mapping an event; there are ~180 codes.
    return pycountry.currencies.get(alpha_3=code) is not None


def coerce_number(value: Any) -> float | int | None:
    """A finite int/float, or a plain decimal string (`"59.90"`) as float; None otherwise (bools are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and _DECIMAL.match(value.strip()):
        return float(value.strip())
    return None


def coerce_integer(value: Any) -> int | None:
    number = coerce_number(value)
    if number is None or number != int(number):
        return None
    return int(number)


def coerce_string(value: Any) -> str | None:
    """Strings (trimmed, non-empty) and numbers (an order id `1001` → `"1001"`); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return None


def _describe(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping) and "each" in spec:
        return str(spec["each"])
    return "the constant"


class _Applier:
    def __init__(self, properties: Mapping[str, Any]) -> None:
        self.root = {PATH_ROOT: properties}
        self.warnings: dict[str, str] = {}

    def source(self, spec: Any, where: str, *, element: Any = None) -> Any:
        """The raw value for a spec (path, bare constant, {"const"}, {"each"}), or MISSING with a warning."""
        if isinstance(spec, Mapping):
            if "const" in spec:
                return spec["const"]
            if "each" in spec:
                return self.each(spec, where)
            self.warnings[where] = 'the mapping entry is neither a path, {"const": ...} nor {"each": ...}'
            return MISSING
        if isinstance(spec, bool | int | float):
            return spec
        if not isinstance(spec, str):
            self.warnings[where] = f"unsupported mapping entry {spec!r}"
            return MISSING
        try:
            segments = parse_path(spec, relative=element is not None)
        except ValueError as exc:
            self.warnings[where] = str(exc)
            return MISSING
        value = resolve_path(self.root if element is None else element, segments)
        if value is MISSING and element is None:
            self.warnings[where] = f"{spec} is missing in the event; field left out"
        return value

    def each(self, spec: Mapping[str, Any], where: str) -> Any:
        try:
            segments = parse_path(str(spec["each"]))
        except ValueError as exc:
            self.warnings[where] = str(exc)
            return MISSING
        if not segments[-1].each:
            segments = (*segments[:-1], PathSegment(segments[-1].key, True))
        elements = resolve_path(self.root, segments)
        if elements is MISSING:
            self.warnings[where] = f"{spec['each']} is missing in the event or not a list; field left out"
            return MISSING
        fields = spec.get("fields") or {}
        objects = []
        for index, element in enumerate(elements):
            obj = {}
            for name, sub_spec in fields.items():
                value = self.source(sub_spec, f"{where}[{index}].{name}", element=element)
                if value is not MISSING:
                    obj[name] = value
            objects.append(obj)
        return objects


def _coerce_contents(value: Any, where: str, warnings: dict[str, str]) -> list[dict[str, Any]] | None:
    if not isinstance(value, list):
        warnings[where] = "contents must be a list of objects; field left out"
        return None
    contents: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        item_where = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            warnings[item_where] = "not an object; item left out"
            continue
        # Meta identifies each content by its id; an item without one cannot be attributed to a product.
        item_id = coerce_string(item.get("id"))
        if item_id is None:
            warnings[item_where] = "item has no id; item left out"
            continue
        obj: dict[str, Any] = {"id": item_id}
        for name, raw in item.items():
            if name == "id":
                continue
            if name == "quantity":
                quantity = coerce_integer(raw)
                if quantity is None:
                    warnings[f"{item_where}.quantity"] = f"{raw!r} is not a whole number; left out"
                else:
                    obj["quantity"] = quantity
            elif name == "item_price":
                price = coerce_number(raw)
                if price is None:
                    warnings[f"{item_where}.item_price"] = f"{raw!r} is not a number; left out"
                else:
                    obj["item_price"] = price
            elif name == "delivery_category":
                if raw in ENUM_FIELDS["delivery_category"]:
                    obj[name] = raw
                else:
                    allowed = ", ".join(ENUM_FIELDS["delivery_category"])
                    warnings[f"{item_where}.{name}"] = f"{raw!r} is not one of {allowed}; left out"
            else:
                text = coerce_string(raw)
                if text is not None:
                    obj[name] = text
        contents.append(obj)
    return contents


def _coerce_field(name: str, value: Any, warnings: dict[str, str]) -> Any:
    """The value as Meta wants it for a standard field, or MISSING (with a warning) if it cannot be."""
    where = f"custom_data.{name}"
    if name == "currency":
        code = normalize_currency(value)
        if code is None:
            warnings[where] = f"{value!r} is not an ISO 4217 currency code; left out"
            return MISSING
        return code
    if name in NUMBER_FIELDS:
        number = coerce_number(value)
        if number is None:
            warnings[where] = f"{value!r} is not a number; left out"
            return MISSING
        return number
    if name in INTEGER_FIELDS:
        integer = coerce_integer(value)
        if integer is None or integer < 0:
            warnings[where] = f"{value!r} is not a non-negative whole number; left out"
            return MISSING
        return integer
    if name in STRING_FIELDS:
        text = coerce_string(value)
        if text is None:
            warnings[where] = f"{value!r} is not text; left out"
            return MISSING
        return text
    if name in ENUM_FIELDS:
        if value not in ENUM_FIELDS[name]:
            warnings[where] = f"{value!r} is not one of {', '.join(ENUM_FIELDS[name])}; left out"
            return MISSING
        return value
    if name == "content_ids":
        values = value if isinstance(value, list) else [value]
        ids = [text for text in (coerce_string(v) for v in values) if text is not None]
        if len(ids) != len(values):
            warnings[where] = "some content ids were empty or not text/numbers; they were left out"
        if not ids:
            return MISSING
        return list(dict.fromkeys(ids))  # distinct, order kept
    if name == "contents":
        contents = _coerce_contents(value, where, warnings)
        return contents if contents else MISSING
    return value  # a custom key: sent as mapped


def apply_mapping(
    mapping: MappingDefinition,
    event_properties: Mapping[str, Any] | None,
    *,
    event_action_source: str | None = None,
) -> MappedEvent:
    """Map one event's `properties` through `mapping`.

    `event_action_source` is the event's own `action_source` (CONTRACT event shape); when it is one of Meta's
    values it wins over the mapping's default, because the sender knows where this particular conversion
    happened (capi.md §4: "the sender warrants its accuracy"). An invalid one is ignored with a warning.
    """
    applier = _Applier(event_properties or {})
    warnings = applier.warnings
    custom_data: dict[str, Any] = {}
    for name, spec in mapping.custom_data.items():
        raw = applier.source(spec, f"custom_data.{name}")
        if raw is MISSING:
            continue
        if name in SCALAR_FIELDS and isinstance(raw, list):
            warnings[f"custom_data.{name}"] = f"{_describe(spec)} yields a list; {name} takes one value; left out"
            continue
        value = _coerce_field(name, raw, warnings)
        if value is not MISSING:
            custom_data[name] = value

    action_source = mapping.action_source
    if event_action_source is not None:
        if event_action_source in ACTION_SOURCES:
            action_source = event_action_source
        else:
            warnings["action_source"] = (
                f"the event's action_source {event_action_source!r} is not one of Meta's values; "
                f"the mapping's {mapping.action_source!r} was used"
            )

    errors: dict[str, str] = {}
    if mapping.event_name == "Purchase":
        # Meta: value and currency are required for Purchase (capi.md §6).
        for required in ("value", "currency"):
            if required not in custom_data:
                errors[f"custom_data.{required}"] = (
                    f"Meta requires {required} on Purchase events and this event has no valid {required}"
                )
    elif "value" in custom_data and "currency" not in custom_data:
        # capi.md "What a correct sender must do" #23: a value is only meaningful with an ISO 4217 currency.
        del custom_data["value"]
        warnings["custom_data.value"] = "value left out because the event has no valid currency"

    return MappedEvent(
        event_name=mapping.event_name,
        action_source=action_source,
        custom_data=custom_data,
        mapping_id=mapping.id,
        mapping_version=mapping.version,
        warnings=warnings,
        errors=errors,
    )
