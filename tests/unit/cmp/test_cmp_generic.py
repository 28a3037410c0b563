"""The generic (hub-shaped) CMP payload from CONTRACT.md."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from hub.cmp.adapters import PayloadError, parse_payload

TC_ALL = "CQSU_AAQSU_AAAHABBENB4FgALMAAEBAAAYgABqAAAAA"  # policy 5, purposes 1, 3, 4, 7, 8
GPP_SALE_OPTED_OUT = "DBABL~CVVaAAAAAABA"  # usnat v2: SaleOptOut 1, SharingOptOut 2, TargetedAdvertisingOptOut 2
HASH = "a" * 64

CONTRACT_EXAMPLE = {
    "id": "cmp-evt-123",
    "collected_at": "2026-11-28T09:59:00Z",
    "subject": {"email": "ann@example.com", "external_id": "crm-42"},
    "region": "DE",
    "purposes": {"ad_user_data": "granted", "ad_personalization": "denied"},
    "tc_string": TC_ALL,
    "gpp_string": None,
    "gpc": False,
}


def parse(body, purpose_map=None, **kwargs):
    return parse_payload("generic", body, purpose_map=purpose_map or {}, body_sha256=HASH, **kwargs)


def test_contract_example():
    [submission] = parse(CONTRACT_EXAMPLE)
    assert submission.source_event_id == "cmp-evt-123"
    assert submission.collected_at == datetime(2026, 11, 28, 9, 59, tzinfo=UTC)
    assert dict(submission.subject) == {"email": "ann@example.com", "external_id": "crm-42"}
    assert dict(submission.cmp_identities) == {}
    assert dict(submission.purposes) == {
        "ad_user_data": "granted",
        "ad_personalization": "denied",  # explicit beats the TC string's grant
        "ad_storage": "granted",  # from the TC string
        "analytics_storage": "granted",
    }
    assert submission.region == "DE"
    assert submission.tc_string == TC_ALL
    assert submission.gpc is False
    assert submission.ignored == ()


def test_submission_is_immutable():
    [submission] = parse(CONTRACT_EXAMPLE)
    with pytest.raises(TypeError):
        submission.purposes["ad_user_data"] = "denied"  # type: ignore[index]


def test_body_hash_when_no_id_and_integer_ids():
    body = {k: v for k, v in CONTRACT_EXAMPLE.items() if k != "id"}
    assert parse(body)[0].source_event_id == HASH
    assert parse({**body, "id": 98765})[0].source_event_id == "98765"


def test_purpose_map_renames():
    body = {**CONTRACT_EXAMPLE, "tc_string": None, "purposes": {"marketing": "granted", "ad_user_data": "denied"}}
    [submission] = parse(body, purpose_map={"marketing": "ad_personalization"})
    assert dict(submission.purposes) == {"ad_personalization": "granted", "ad_user_data": "denied"}


def test_two_names_for_one_purpose_deny_wins():
    body = {**CONTRACT_EXAMPLE, "tc_string": None, "purposes": {"marketing": "denied", "ad_personalization": "granted"}}
    [submission] = parse(body, purpose_map={"marketing": "ad_personalization"})
    assert dict(submission.purposes) == {"ad_personalization": "denied"}


def test_us_signals():
    body = {
        "collected_at": 1764323940,
        "subject": {"phone": "+1 650 555 1212"},
        "region": "us-ca",
        "purposes": {"sale": "granted", "targeted_advertising": "granted"},
        "gpp_string": GPP_SALE_OPTED_OUT,
        "usp_string": "1YNN",
    }
    [submission] = parse(body)
    assert submission.region == "US-CA"
    assert dict(submission.purposes) == {"sale": "denied", "targeted_advertising": "granted", "sharing": "granted"}


def test_gpc_true_overrides_explicit_grants_for_opt_out_purposes_only():
    body = {
        **CONTRACT_EXAMPLE,
        "tc_string": None,
        "gpc": True,
        "purposes": {"sale": "granted", "ad_user_data": "granted"},
    }
    [submission] = parse(body)
    assert dict(submission.purposes) == {
        "sale": "denied",
        "sharing": "denied",
        "targeted_advertising": "denied",
        "ad_user_data": "granted",
    }


def test_optional_fields():
    body = {
        **CONTRACT_EXAMPLE,
        "legal_basis": "consent",
        "regulation": "gdpr",
        "notice_version": "privacy-2026-01",
        "expires_at": "2027-11-28T09:59:00Z",
    }
    [submission] = parse(body)
    assert (submission.legal_basis, submission.regulation, submission.notice_version) == (
        "consent",
        "gdpr",
        "privacy-2026-01",
    )
    assert submission.expires_at == datetime(2027, 11, 28, 9, 59, tzinfo=UTC)


def test_undecided_purposes_are_listed_not_recorded():
    body = {**CONTRACT_EXAMPLE, "tc_string": None, "purposes": {"ad_user_data": "PENDING", "ad_storage": "granted"}}
    [submission] = parse(body)
    assert dict(submission.purposes) == {"ad_storage": "granted"}
    assert submission.ignored == ("purpose:ad_user_data (no decision)",)


def _without(key):
    body = copy.deepcopy(CONTRACT_EXAMPLE)
    del body[key]
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_without("collected_at"), "collected_at"),
        ({**CONTRACT_EXAMPLE, "collected_at": "2026-11-28 09:59"}, "collected_at"),
        (_without("subject"), "subject"),
        ({**CONTRACT_EXAMPLE, "subject": {}}, "subject"),
        ({**CONTRACT_EXAMPLE, "subject": {"email": None}}, "subject"),
        ({**CONTRACT_EXAMPLE, "subject": ["ann@example.com"]}, "subject"),
        ({**CONTRACT_EXAMPLE, "subject": {"email": 42}}, "subject.email"),
        ({**CONTRACT_EXAMPLE, "purposes": {"ad_user_data": "yes please"}}, "purposes.ad_user_data"),
        ({**CONTRACT_EXAMPLE, "purposes": {"ad_user_data": 7}}, "purposes.ad_user_data"),
        ({**CONTRACT_EXAMPLE, "purposes": ["ad_user_data"]}, "purposes"),
        ({**CONTRACT_EXAMPLE, "purposes": {"": "granted"}}, "purposes"),
        ({**CONTRACT_EXAMPLE, "purposes": {}, "tc_string": None}, "purposes"),
        ({**CONTRACT_EXAMPLE, "region": "Germany"}, "region"),
        ({**CONTRACT_EXAMPLE, "region": 49}, "region"),
        ({**CONTRACT_EXAMPLE, "gpc": "true"}, "gpc"),
        ({**CONTRACT_EXAMPLE, "gpc": 1}, "gpc"),
        ({**CONTRACT_EXAMPLE, "tc_string": "CQ..."}, "tc_string"),
        ({**CONTRACT_EXAMPLE, "tc_string": 123}, "tc_string"),
        ({**CONTRACT_EXAMPLE, "gpp_string": "DBABL~"}, "gpp_string"),
        ({**CONTRACT_EXAMPLE, "usp_string": "YYYY"}, "usp_string"),
        ({**CONTRACT_EXAMPLE, "id": ["x"]}, "id"),
        ({**CONTRACT_EXAMPLE, "expires_at": "soon"}, "expires_at"),
        ({**CONTRACT_EXAMPLE, "legal_basis": 1}, "legal_basis"),
    ],
)
def test_invalid_payloads_name_the_field(body, field):
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert info.value.field == field
    assert info.value.message
