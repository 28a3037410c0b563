from __future__ import annotations

import math

import pytest

from hub.mappings.apply import (
    MISSING,
    MappingDefinition,
    PathSegment,
    apply_mapping,
    coerce_integer,
    coerce_number,
    normalize_currency,
    parse_path,
    resolve_path,
)

PROPERTIES = {
    "total": 59.9,
    "currency": "usd",
    "order_id": 1001,
    "coupon": None,
    "customer": {"tier": "gold"},
    "items": [
        {"sku": "SKU-1", "qty": 1, "price": 59.9, "name": "Mug"},
        {"sku": "SKU-2", "qty": "2", "price": "10.00"},
        {"qty": 1, "price": 5},  # no sku
        {"sku": 42, "qty": 1.5, "price": "free"},
    ],
}


def mapping(custom_data, event_name="Purchase", action_source="website", **kwargs):
    return MappingDefinition(
        id=1,
        version=2,
        source_event="order_completed",
        event_name=event_name,
        action_source=action_source,
        custom_data=custom_data,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("properties.total", (("properties", False), ("total", False))),
        ("properties.items[].sku", (("properties", False), ("items", True), ("sku", False))),
        ("properties.a.b.c", (("properties", False), ("a", False), ("b", False), ("c", False))),
        ("properties.items[]", (("properties", False), ("items", True))),
    ],
)
def test_parse_path(path, segments):
    assert parse_path(path) == tuple(PathSegment(key, each) for key, each in segments)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "non-empty"),
        ("total", "must start with properties."),
        ("user.email", "must start with properties."),
        ("properties", "must name a property below"),
        ("properties[].x", "must start with properties."),
        ("properties..total", "malformed"),
        ("properties.items[0].sku", "malformed"),
        ("properties.items[]x", "malformed"),
        (" properties.total", "surrounding spaces"),
    ],
)
def test_parse_path_rejects(path, message):
    with pytest.raises(ValueError, match=message):
        parse_path(path)


def test_relative_path_inside_element():
    assert parse_path("sku", relative=True) == (PathSegment("sku", False),)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("properties.total", 59.9),
        ("properties.customer.tier", "gold"),
        ("properties.coupon", MISSING),  # null counts as missing
        ("properties.nope", MISSING),
        ("properties.total.deeper", MISSING),
        ("properties.items[].sku", ["SKU-1", "SKU-2", 42]),  # elements without sku are skipped
        ("properties.customer[].tier", MISSING),  # [] on a non-list
        ("properties.items[].name", ["Mug"]),
    ],
)
def test_resolve_path(path, expected):
    assert resolve_path({"properties": PROPERTIES}, parse_path(path)) == expected


def test_resolve_nested_lists_flatten():
    root = {"properties": {"orders": [{"items": [{"sku": "a"}, {"sku": "b"}]}, {"items": [{"sku": "c"}]}]}}
    assert resolve_path(root, parse_path("properties.orders[].items[].sku")) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("usd", "USD"), (" eur ", "EUR"), ("JPY", "JPY"), ("XYZ", None), ("US", None), ("XXX", None), ("XTS", None),
     ("dollars", None), (840, None), (None, None), ("U$D", None)],
)  # fmt: skip
def test_normalize_currency(value, expected):
    assert normalize_currency(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(59.9, 59.9), (10, 10), ("59.90", 59.9), (" 5 ", 5.0), ("-3.5", -3.5), (".5", 0.5), (True, None),
     ("1e3", None), ("12,50", None), (math.nan, None), (math.inf, None), ("", None), (None, None), ([1], None)],
)  # fmt: skip
def test_coerce_number(value, expected):
    assert coerce_number(value) == expected


@pytest.mark.parametrize(("value", "expected"), [(2, 2), ("2", 2), (2.0, 2), (1.5, None), ("x", None), (False, None)])
def test_coerce_integer(value, expected):
    assert coerce_integer(value) == expected


def test_purchase_with_contents_and_content_ids():
    result = apply_mapping(
        mapping(
            {
                "value": "properties.total",
                "currency": "properties.currency",
                "order_id": "properties.order_id",
                "content_ids": "properties.items[].sku",
                "content_type": {"const": "product"},
                "contents": {
                    "each": "properties.items[]",
                    "fields": {"id": "sku", "quantity": "qty", "item_price": "price", "title": "name"},
                },
                "num_items": 2,
            }
        ),
        PROPERTIES,
    )
    assert result.ok
    assert result.event_name == "Purchase"
    assert (result.mapping_id, result.mapping_version) == (1, 2)
    assert result.custom_data == {
        "value": 59.9,
        "currency": "USD",  # uppercased from "usd"
        "order_id": "1001",  # Meta: order_id is a string
        "content_ids": ["SKU-1", "SKU-2", "42"],
        "content_type": "product",
        "contents": [
            {"id": "SKU-1", "quantity": 1, "item_price": 59.9, "title": "Mug"},
            {"id": "SKU-2", "quantity": 2, "item_price": 10.0},
            {"id": "42"},
        ],
        "num_items": 2,
    }
    assert result.warnings == {
        "custom_data.contents[2]": "item has no id; item left out",
        "custom_data.contents[3].quantity": "1.5 is not a whole number; left out",
        "custom_data.contents[3].item_price": "'free' is not a number; left out",
    }


def test_constant_currency_and_value():
    result = apply_mapping(mapping({"value": 0, "currency": {"const": "eur"}}), {})
    assert result.custom_data == {"value": 0, "currency": "EUR"}
    assert result.ok


@pytest.mark.parametrize(
    ("properties", "field", "warning"),
    [
        ({"total": 10, "currency": "XYZ"}, "custom_data.currency", "'XYZ' is not an ISO 4217 currency code"),
        ({"total": "ten", "currency": "USD"}, "custom_data.value", "'ten' is not a number"),
        ({"total": True, "currency": "USD"}, "custom_data.value", "True is not a number"),
        ({"currency": "USD"}, "custom_data.value", "properties.total is missing"),
        ({"total": 10}, "custom_data.currency", "properties.currency is missing"),
    ],
)
def test_purchase_without_valid_value_or_currency_is_an_error(properties, field, warning):
    result = apply_mapping(mapping({"value": "properties.total", "currency": "properties.currency"}), properties)
    assert not result.ok
    assert warning in result.warnings[field]
    assert field in result.errors
    assert "Meta requires" in result.errors[field]


def test_value_without_currency_is_dropped_for_other_events():
    result = apply_mapping(
        mapping({"value": "properties.total", "currency": "properties.currency"}, event_name="AddToCart"),
        {"total": 10, "currency": "bitcoin"},
    )
    assert result.ok
    assert result.custom_data == {}
    assert result.warnings["custom_data.value"] == "value left out because the event has no valid currency"


def test_list_path_for_scalar_field_is_left_out():
    result = apply_mapping(mapping({"order_id": "properties.items[].sku"}, event_name="Lead"), PROPERTIES)
    assert "order_id" not in result.custom_data
    assert "yields a list" in result.warnings["custom_data.order_id"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"content_ids": "properties.order_id"}, {"content_ids": ["1001"]}),  # a scalar becomes a one-item list
        ({"content_ids": {"const": ["a", "a", "b"]}}, {"content_ids": ["a", "b"]}),  # distinct, order kept
        ({"content_type": {"const": "product_group"}}, {"content_type": "product_group"}),
        ({"content_type": {"const": "service"}}, {}),
        ({"num_items": {"const": -1}}, {}),
        ({"num_items": "properties.items[]"}, {}),
        ({"tier": "properties.customer.tier"}, {"tier": "gold"}),  # custom key passes through
        ({"flag": True}, {"flag": True}),
        ({"meta": {"const": {"a": 1}}}, {"meta": {"a": 1}}),
        ({"coupon": "properties.coupon"}, {}),
        ({"contents": {"each": "properties.nope[]", "fields": {"id": "sku"}}}, {}),
        ({"contents": {"each": "properties.items", "fields": {"id": "sku"}}}, {"contents": [{"id": "SKU-1"},
         {"id": "SKU-2"}, {"id": "42"}]}),  # missing [] is tolerated at apply time
        ({"contents": {"each": "properties.items[]", "fields": {"id": "sku", "delivery_category":
         {"const": "curbside"}}}}, {"contents": [{"id": "SKU-1", "delivery_category": "curbside"},
         {"id": "SKU-2", "delivery_category": "curbside"}, {"id": "42", "delivery_category": "curbside"}]}),
    ],
)  # fmt: skip
def test_field_coercions(spec, expected):
    result = apply_mapping(mapping(spec, event_name="ViewContent"), PROPERTIES)
    assert result.custom_data == expected


def test_malformed_spec_is_a_warning_not_a_crash():
    result = apply_mapping(mapping({"value": "total", "x": {"bogus": 1}, "y": [1, 2]}, event_name="Lead"), {})
    assert result.custom_data == {}
    assert "must start with properties." in result.warnings["custom_data.value"]
    assert "neither a path" in result.warnings["custom_data.x"]
    assert "unsupported" in result.warnings["custom_data.y"]


@pytest.mark.parametrize(
    ("event_source", "expected", "warned"),
    [(None, "website", False), ("physical_store", "physical_store", False), ("store", "website", True)],
)
def test_event_action_source_overrides_mapping_when_valid(event_source, expected, warned):
    result = apply_mapping(mapping({}, event_name="Lead"), {}, event_action_source=event_source)
    assert result.action_source == expected
    assert ("action_source" in result.warnings) is warned


def test_none_properties():
    result = apply_mapping(mapping({"order_id": "properties.order_id"}, event_name="Lead"), None)
    assert result.custom_data == {}
    assert result.ok
