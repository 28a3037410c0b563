"""Didomi webhook payloads (event.* and user.*), field names from reference/consent.md §1.2."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from hub.cmp.adapters import PayloadError, parse_payload

HASH = "b" * 64
TC_ALL = "CQSU_AAQSU_AAAHABBENB4FgALMAAEBAAAYgABqAAAAA"  # policy 5, purposes 1, 3, 4, 7, 8
PURPOSE_MAP = {
    "measure_ad_performance": "ad_user_data",
    "advertising_personalization": "ad_personalization",
    "c:facebook-xyz": "ad_user_data",
}

EVENT_CREATED = {
    "type": "event.created",
    "regulation": "gdpr",
    "parameters": {
        "entity": {
            "id": "evt_9c1f0b7e",
            "created_at": "2025-06-02T09:14:55Z",
            "organization_id": "acme",
            "regulation": "gdpr",
            "user": {"id": "d1f5a6c2-44aa-4d3e-9b0e-0c2d8e7f6a11", "organization_user_id": "crm-000123"},
            "consents": {
                "purposes": [
                    {"id": "cookies", "enabled": True},
                    {"id": "advertising_personalization", "enabled": False},
                    {"id": "measure_ad_performance", "enabled": True},
                ],
                "vendors": {"enabled": ["google", "c:facebook-xyz"], "disabled": []},
            },
        }
    },
}


def parse(body, purpose_map=PURPOSE_MAP, **kwargs):
    return parse_payload("didomi", body, purpose_map=purpose_map, body_sha256=HASH, **kwargs)


def test_event_created():
    [submission] = parse(EVENT_CREATED)
    assert submission.source_event_id == "evt_9c1f0b7e"
    assert submission.collected_at == datetime(2025, 6, 2, 9, 14, 55, tzinfo=UTC)
    assert dict(submission.subject) == {"external_id": "crm-000123"}
    assert dict(submission.cmp_identities) == {"didomi_user_id": "d1f5a6c2-44aa-4d3e-9b0e-0c2d8e7f6a11"}
    assert dict(submission.purposes) == {"ad_user_data": "granted", "ad_personalization": "denied"}
    assert submission.regulation == "gdpr"
    assert submission.ignored == ("purpose:cookies", "vendor:google")


def test_event_updated_reads_new_entity():
    body = {
        "type": "event.updated",
        "parameters": {
            "source": {"type": "api"},
            "old_entity": EVENT_CREATED["parameters"]["entity"],
            "new_entity": {
                **EVENT_CREATED["parameters"]["entity"],
                "created_at": "2025-06-03T10:00:00Z",
                "regulation": "cpra",
                "consents": {"purposes": [{"id": "advertising_personalization", "enabled": True}]},
            },
        },
    }
    [submission] = parse(body)
    assert dict(submission.purposes) == {"ad_personalization": "granted"}
    assert submission.regulation == "cpra"
    assert submission.collected_at == datetime(2025, 6, 3, 10, tzinfo=UTC)


def test_vendor_and_purpose_feeding_one_hub_purpose_deny_wins():
    body = copy.deepcopy(EVENT_CREATED)
    body["parameters"]["entity"]["consents"]["vendors"] = {"enabled": [], "disabled": ["c:facebook-xyz"]}
    [submission] = parse(body)
    assert submission.purposes["ad_user_data"] == "denied"


def test_null_enabled_is_no_decision():
    body = copy.deepcopy(EVENT_CREATED)
    body["parameters"]["entity"]["consents"]["purposes"] = [{"id": "measure_ad_performance", "enabled": None}]
    body["parameters"]["entity"]["consents"]["vendors"] = {}
    [submission] = parse(body)
    assert dict(submission.purposes) == {}
    assert submission.ignored == ("purpose:measure_ad_performance (no decision)",)


def test_tc_string_fills_unmapped_purposes():
    body = copy.deepcopy(EVENT_CREATED)
    body["parameters"]["entity"]["consents"]["tcfcs"] = TC_ALL
    [submission] = parse(body)
    assert submission.tc_string == TC_ALL
    assert dict(submission.purposes) == {
        "ad_user_data": "granted",
        "ad_personalization": "denied",  # explicit Didomi choice wins over the TC string
        "ad_storage": "granted",
        "analytics_storage": "granted",
    }


def test_consent_md_example_tc_string_is_rejected_by_policy():
    # The research example's tcfcs is the TCF 2.3 spec example: created 2025 with policy version 2 → invalid.
    body = copy.deepcopy(EVENT_CREATED)
    body["parameters"]["entity"]["consents"]["tcfcs"] = (
        "CQSbk4AQSbk4ANwAAAENAwCgAAAAAAAAAAYgACPAAAAA.IDKQA4AAgAKAGQAygAAA"
    )
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert info.value.field == "parameters.entity.consents.tcfcs"


def test_user_updated_uses_body_hash_and_updated_at():
    body = {
        "type": "user.updated",
        "parameters": {
            "old_entity": {"id": "d1f5", "organization_user_id": "crm-000123"},
            "new_entity": {
                "id": "d1f5",
                "organization_user_id": "crm-000123",
                "created_at": "2025-01-01T00:00:00Z",
                "updated_at": "2025-06-02T09:14:55Z",
                "consents": {"purposes": [{"id": "measure_ad_performance", "enabled": False}]},
            },
        },
    }
    [submission] = parse(body)
    assert submission.source_event_id == HASH  # the user id would collapse every update of this user
    assert submission.collected_at == datetime(2025, 6, 2, 9, 14, 55, tzinfo=UTC)
    assert dict(submission.cmp_identities) == {"didomi_user_id": "d1f5"}
    assert dict(submission.purposes) == {"ad_user_data": "denied"}


def test_user_created_without_organization_user_id():
    body = {"type": "user.created", "parameters": {"entity": {"id": "d1f5", "created_at": 1748855695}}}
    [submission] = parse(body)
    assert dict(submission.subject) == {}
    assert dict(submission.cmp_identities) == {"didomi_user_id": "d1f5"}
    assert dict(submission.purposes) == {}


@pytest.mark.parametrize("kind", ["event.deleted", "user.deleted"])
def test_deletions_record_nothing(kind):
    assert parse({"type": kind, "parameters": {"entity": {"id": "x"}}}) == []


def _mutated(path, value):
    body = copy.deepcopy(EVENT_CREATED)
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


ENTITY = ("parameters", "entity")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**EVENT_CREATED, "type": "consent.created"}, "type"),
        ({**EVENT_CREATED, "type": None}, "type"),
        ({"parameters__entity__id": "x", "type": "event.created"}, ""),
        ({"type": "event.created"}, "parameters"),
        ({"type": "event.updated", "parameters": {"entity": {}}}, "parameters.new_entity"),
        (_mutated((*ENTITY, "created_at"), KeyError), "parameters.entity.created_at"),
        (_mutated((*ENTITY, "created_at"), "2025-06-02T09:14:55"), "parameters.entity.created_at"),
        (_mutated((*ENTITY, "user"), KeyError), "parameters.entity.user"),
        (_mutated((*ENTITY, "user"), {}), "parameters.entity.user"),
        (_mutated((*ENTITY, "user", "id"), 5), "parameters.entity.user.id"),
        (_mutated((*ENTITY, "consents", "purposes"), {"id": "x"}), "parameters.entity.consents.purposes"),
        (
            _mutated((*ENTITY, "consents", "purposes"), [{"id": "measure_ad_performance", "enabled": "sometimes"}]),
            "parameters.entity.consents.purposes[0].enabled",
        ),
        (_mutated((*ENTITY, "consents", "purposes"), [{"enabled": True}]), "parameters.entity.consents.purposes[0].id"),
        (_mutated((*ENTITY, "consents", "purposes"), ["cookies"]), "parameters.entity.consents.purposes[0]"),
        (
            _mutated((*ENTITY, "consents", "vendors"), {"enabled": "google"}),
            "parameters.entity.consents.vendors.enabled",
        ),
        (
            _mutated((*ENTITY, "consents", "vendors"), {"disabled": [None]}),
            "parameters.entity.consents.vendors.disabled[0]",
        ),
        (_mutated((*ENTITY, "consents", "tcfcs"), "CQ"), "parameters.entity.consents.tcfcs"),
    ],
)
def test_invalid_payloads_name_the_field(body, field):
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert info.value.field == field
