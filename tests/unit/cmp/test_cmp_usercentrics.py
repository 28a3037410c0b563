"""Usercentrics Consent Webhook payloads (field names from reference/consent.md §1.2)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.cmp.adapters import PayloadError, parse_payload

HASH = "c" * 64
# The TC string of Usercentrics' documented example (tcf_vectors.json): purposes 2, 3, 4, 7, 10 — no purpose 1.
UC_DOC_TC = (
    "CQP6E8AQP6E8AAFADAENBlFkAHJAAEBAAIYgF5wBAABAAGAXeAvMFfYAYC7wF5gV9ADHQAYAAgr6FAAwABBX0kABgACCvoAA.YAAAAAAAAAAA"
)
PURPOSE_MAP = {"BJ59EidsWQ": "analytics_storage", "ko1w5PpFl": "ad_user_data"}

DOC_EXAMPLE = {
    "controller_id": "5b1f0e7a2c9d4e3f8a6b7c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f",
    "configuration_id": "AbCdEf123",
    "timestamp": 1748855695120,
    "consent_string": UC_DOC_TC,
    "ac_string": "2~43.89~dv.",
    "consents": [
        {"consent_status": True, "dps_id": "BJ59EidsWQ"},
        {"consent_status": False, "dps_id": "ko1w5PpFl"},
    ],
    "webhook_version": "v1",
}


def parse(body, purpose_map=PURPOSE_MAP, **kwargs):
    return parse_payload("usercentrics", body, purpose_map=purpose_map, body_sha256=HASH, **kwargs)


def test_documented_example():
    [submission] = parse(DOC_EXAMPLE)
    assert submission.source_event_id == HASH  # Usercentrics sends no event id
    assert submission.collected_at == datetime(2025, 6, 2, 9, 14, 55, 120000, tzinfo=UTC)  # epoch ms
    assert dict(submission.subject) == {}
    assert dict(submission.cmp_identities) == {
        "usercentrics_controller_id": "5b1f0e7a2c9d4e3f8a6b7c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f"
    }
    assert dict(submission.purposes) == {
        "analytics_storage": "granted",  # explicit dps choice beats the TC string (which lacks purpose 1)
        "ad_user_data": "denied",
        "ad_personalization": "denied",  # from the TC string: no purpose 1
        "ad_storage": "denied",
    }
    assert submission.tc_string == UC_DOC_TC


def test_unmapped_services_are_listed():
    body = {**DOC_EXAMPLE, "consent_string": None}
    [submission] = parse(body, purpose_map={"BJ59EidsWQ": "analytics_storage"})
    assert dict(submission.purposes) == {"analytics_storage": "granted"}
    assert submission.ignored == ("dps:ko1w5PpFl",)


def test_without_version_and_consents():
    body = {"controller_id": "ctrl-1", "timestamp": "2025-06-02T09:14:55Z"}
    [submission] = parse(body)
    assert dict(submission.purposes) == {}
    assert submission.collected_at == datetime(2025, 6, 2, 9, 14, 55, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"webhook_version": "v2"}, "webhook_version"),
        ({"controller_id": None}, "controller_id"),
        ({"controller_id": ""}, "controller_id"),
        ({"timestamp": None}, "timestamp"),
        ({"timestamp": "2025-06-02"}, "timestamp"),
        ({"timestamp": True}, "timestamp"),
        ({"consents": {"BJ59EidsWQ": True}}, "consents"),
        ({"consents": [{"consent_status": True}]}, "consents[0].dps_id"),
        ({"consents": [{"dps_id": "BJ59EidsWQ", "consent_status": "perhaps"}]}, "consents[0].consent_status"),
        ({"consents": [{"dps_id": "BJ59EidsWQ", "consent_status": 5}]}, "consents[0].consent_status"),
        ({"consents": [None]}, "consents[0]"),
        ({"consent_string": UC_DOC_TC[:60]}, "consent_string"),
    ],
)
def test_invalid_payloads_name_the_field(changes, field):
    with pytest.raises(PayloadError) as info:
        parse({**DOC_EXAMPLE, **changes})
    assert info.value.field == field
