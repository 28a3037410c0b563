from __future__ import annotations

import pytest

from hub.mappings.apply import ACTION_SOURCES, STANDARD_EVENTS, MappingDefinition
from hub.mappings.validate import validate_mapping

GOOD_PURCHASE = {
    "value": "properties.total",
    "currency": "properties.currency",
    "order_id": "properties.order_id",
    "content_ids": "properties.items[].sku",
    "content_type": {"const": "product"},
    "contents": {"each": "properties.items[]", "fields": {"id": "sku", "quantity": "qty", "item_price": "price"}},
}


def mapping(custom_data=None, **overrides):
    fields = {
        "id": 1,
        "version": 1,
        "source_event": "order_completed",
        "event_name": "Purchase",
        "action_source": "website",
        "custom_data": GOOD_PURCHASE if custom_data is None else custom_data,
        "enabled": True,
    }
    return MappingDefinition(**{**fields, **overrides})


def test_good_purchase_mapping_has_no_problems():
    assert validate_mapping(mapping()) == {}


@pytest.mark.parametrize("event_name", [*STANDARD_EVENTS, "SubscribedToNewsletter", "wishlist_shared"])
def test_standard_and_custom_event_names_accepted(event_name):
    assert "event_name" not in validate_mapping(mapping({}, event_name=event_name))


@pytest.mark.parametrize("action_source", ACTION_SOURCES)
def test_all_meta_action_sources_accepted(action_source):
    assert "action_source" not in validate_mapping(mapping(action_source=action_source))


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"event_name": ""}, "event_name", "required"),
        ({"event_name": "   "}, "event_name", "required"),
        ({"event_name": None}, "event_name", "required"),
        ({"event_name": " Lead"}, "event_name", "spaces"),
        ({"event_name": "x" * 51}, "event_name", "50 characters"),
        ({"event_name": "purchase"}, "event_name", "'Purchase'"),
        ({"event_name": "PAGEVIEW"}, "event_name", "'PageView'"),
        ({"action_source": "web"}, "action_source", "website"),
        ({"action_source": "offline"}, "action_source", "physical_store"),
        ({"action_source": ""}, "action_source", "one of Meta's values"),
        ({"source_event": ""}, "source_event", "required"),
        ({"version": 0}, "version", "from 1"),
        ({"version": True}, "version", "from 1"),
        ({"enabled": "yes"}, "enabled", "true or false"),
        ({"custom_data": ["properties.total"]}, "custom_data", "must map"),
    ],
)
def test_top_level_problems(overrides, field, words):
    problems = validate_mapping(mapping(**{"custom_data": {}, "event_name": "Lead", **overrides}))
    assert field in problems
    assert words in problems[field]


@pytest.mark.parametrize(
    ("custom_data", "field", "words"),
    [
        # Purchase needs value and currency (Meta)
        ({"currency": "properties.currency"}, "custom_data.value", "Purchase events need value"),
        ({"value": "properties.total"}, "custom_data.currency", "Purchase events need currency"),
        ({}, "custom_data.value", "Purchase"),
        # currency constants are ISO 4217
        ({"value": 1, "currency": {"const": "XYZ"}}, "custom_data.currency", "not an ISO 4217"),
        ({"value": 1, "currency": {"const": "dollar"}}, "custom_data.currency", "not an ISO 4217"),
        ({"value": 1, "currency": 978}, "custom_data.currency", "not an ISO 4217"),
        # value is numeric and a single value
        ({"value": {"const": "ten"}, "currency": {"const": "USD"}}, "custom_data.value", "must be a number"),
        ({"value": "properties.items[].price", "currency": {"const": "USD"}}, "custom_data.value", "yields a list"),
        ({"value": "total", "currency": {"const": "USD"}}, "custom_data.value", "must start with properties."),
        ({"value": "properties.items[0].price", "currency": {"const": "USD"}}, "custom_data.value", "malformed"),
    ],
)
def test_purchase_value_and_currency_rules(custom_data, field, words):
    problems = validate_mapping(mapping(custom_data))
    assert field in problems, problems
    assert words in problems[field]


@pytest.mark.parametrize(
    ("custom_data", "field", "words"),
    [
        ({"value": "properties.total"}, "custom_data.currency", "map currency as well"),
        ({"contents": "properties.items[]"}, "custom_data.contents", "contents needs item fields"),
        ({"contents": {"const": []}}, "custom_data.contents", "map contents from the items list"),
        ({"contents": {"each": "properties.items", "fields": {"id": "sku"}}}, "custom_data.contents.each",
         "must end with []"),
        ({"contents": {"each": "properties.items[]", "fields": {"quantity": "qty"}}}, "custom_data.contents.fields.id",
         "need an id"),
        ({"contents": {"each": "properties.items[]", "fields": {}}}, "custom_data.contents.fields", "fields must map"),
        ({"contents": {"each": "properties.items[]", "fields": {"id": "sku", "sku": "sku"}}},
         "custom_data.contents.fields.sku", "contents items have"),
        ({"contents": {"each": "properties.items[]", "fields": {"id": "variants[].sku"}}},
         "custom_data.contents.fields.id", "walks a list"),
        ({"contents": {"each": "properties.items[]", "fields": {"id": "sku", "quantity": {"const": 1.5}}}},
         "custom_data.contents.fields.quantity", "whole number"),
        ({"contents": {"each": "properties.items[]", "fields": {"id": "sku", "item_price": {"const": "x"}}}},
         "custom_data.contents.fields.item_price", "number"),
        ({"contents": {"each": "properties.items[]", "fields": {"id": "sku", "delivery_category":
         {"const": "drone"}}}}, "custom_data.contents.fields.delivery_category", "curbside"),
        ({"contents": {"each": "properties.items[]", "fields": {"id": ["sku"]}}}, "custom_data.contents.fields.id",
         "path inside the element"),
        ({"contents": {"each": "properties.items[]", "fields": {"id": "sku"}, "limit": 3}}, "custom_data.contents",
         "unexpected keys limit"),
        ({"contents": {"each": 5, "fields": {"id": "sku"}}}, "custom_data.contents.each", "path of a list"),
        ({"order_id": {"each": "properties.items[]", "fields": {"id": "sku"}}}, "custom_data.order_id", "one value"),
        ({"content_ids": {"each": "properties.items[]", "fields": {"id": "sku"}}}, "custom_data.content_ids",
         "a list of ids"),
        ({"content_ids": {"const": []}}, "custom_data.content_ids", "list of product ids"),
        ({"content_ids": {"const": [None]}}, "custom_data.content_ids", "list of product ids"),
        ({"content_type": {"const": "service"}}, "custom_data.content_type", "product, product_group"),
        ({"num_items": {"const": -2}}, "custom_data.num_items", "non-negative whole number"),
        ({"num_items": 2.5}, "custom_data.num_items", "non-negative whole number"),
        ({"order_id": {"const": ""}}, "custom_data.order_id", "non-empty text"),
        ({"order_id": "properties.items[].id"}, "custom_data.order_id", "yields a list"),
        ({"x": {"path": "properties.x"}}, "custom_data.x", "use a path"),
        ({"x": ["properties.x"]}, "custom_data.x", "unsupported"),
        ({"": "properties.x"}, "custom_data", "non-empty"),
    ],
)  # fmt: skip
def test_custom_data_problems(custom_data, field, words):
    problems = validate_mapping(mapping(custom_data, event_name="AddToCart"))
    assert field in problems, problems
    assert words in problems[field]


@pytest.mark.parametrize(
    "custom_data",
    [
        {"value": "properties.total", "currency": {"const": "eur"}},  # case-insensitive; applied as EUR
        {"value": 0, "currency": {"const": "JPY"}},
        {"content_ids": {"const": ["SKU-1", 2]}},
        {"content_ids": "properties.sku"},
        {"contents": {"each": "properties.items[]", "fields": {"id": "product.id", "quantity": {"const": 1}}}},
        {"custom_flag": True, "tier": "properties.customer.tier", "meta": {"const": {"a": 1}}},
        {"delivery_category": {"const": "home_delivery"}},
    ],
)
def test_valid_custom_data(custom_data):
    assert validate_mapping(mapping(custom_data, event_name="AddToCart")) == {}
