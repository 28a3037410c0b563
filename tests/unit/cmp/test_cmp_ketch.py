"""Ketch Forwarder consent/v1 payloads (field names from reference/consent.md §1.2)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from hub.cmp.adapters import PayloadError, parse_payload

HASH = "d" * 64
PURPOSE_MAP = {"targeted_advertising": "targeted_advertising", "analytics": "analytics_storage", "sale": "sale"}

DOC_EXAMPLE = {
    "apiVersion": "consent/v1",
    "kind": "ConsentRequest",
    "metadata": {"uid": "0b4f6c3e-1f2a-4d5b-9c8e-7a6b5c4d3e2f", "tenant": "acme"},
    "request": {
        "property": "acme_web",
        "environment": "production",
        "regulation": "ccpa",
        "jurisdiction": "ca_ccpa",
        "identities": [{"identitySpace": "crm_id", "identityFormat": "raw", "identityValue": "000123"}],
        "purposes": {"targeted_advertising": "denied", "analytics": "granted"},
        "legalBasis": {"targeted_advertising": "consent_optout", "analytics": "disclosure"},
        "vendors": [],
        "collectedAt": 1748855695,
    },
}


def parse(body, purpose_map=PURPOSE_MAP, **kwargs):
    return parse_payload("ketch", body, purpose_map=purpose_map, body_sha256=HASH, **kwargs)


def test_documented_example_splits_by_legal_basis():
    submissions = parse(DOC_EXAMPLE)
    by_basis = {s.legal_basis: s for s in submissions}
    assert set(by_basis) == {"opt_out_right", "disclosure"}
    assert dict(by_basis["opt_out_right"].purposes) == {"targeted_advertising": "denied"}
    assert dict(by_basis["disclosure"].purposes) == {"analytics_storage": "granted"}
    for submission in submissions:
        assert submission.source_event_id == "0b4f6c3e-1f2a-4d5b-9c8e-7a6b5c4d3e2f"
        assert submission.collected_at == datetime(2025, 6, 2, 9, 14, 55, tzinfo=UTC)
        assert dict(submission.subject) == {"external_id": "000123"}
        assert submission.regulation == "ccpa"
        assert submission.region is None


@pytest.mark.parametrize(
    ("identity", "subject", "cmp_identities"),
    [
        ({"identitySpace": "email", "identityValue": "Jane.Doe@example.com"}, {"email": "Jane.Doe@example.com"}, {}),
        (
            {"identitySpace": "Phone_Number", "identityFormat": "raw", "identityValue": "+16505551212"},
            {"phone": "+16505551212"},
            {},
        ),
        (
            {"identitySpace": "email", "identityFormat": "sha256", "identityValue": "ab12"},
            {},
            {"ketch_email_sha256": "ab12"},
        ),
        (
            {"identitySpace": "swb_acme", "identityFormat": "raw", "identityValue": "anon-7"},
            {},
            {"ketch_swb_acme": "anon-7"},
        ),
    ],
)
def test_identity_spaces(identity, subject, cmp_identities):
    body = copy.deepcopy(DOC_EXAMPLE)
    body["request"]["identities"] = [identity]
    [first, *_] = parse(body)
    assert dict(first.subject) == subject
    assert dict(first.cmp_identities) == cmp_identities


def test_status_synonyms_and_unmapped_purposes():
    body = copy.deepcopy(DOC_EXAMPLE)
    body["request"]["purposes"] = {"sale": "DENIED", "analytics": True, "email_marketing": "granted"}
    body["request"]["legalBasis"] = {}
    [submission] = parse(body)
    assert submission.legal_basis is None
    assert dict(submission.purposes) == {"sale": "denied", "analytics_storage": "granted"}
    assert submission.ignored == ("purpose:email_marketing",)


def test_no_uid_uses_body_hash_and_ms_timestamp():
    body = copy.deepcopy(DOC_EXAMPLE)
    del body["metadata"]
    body["request"]["collectedAt"] = 1748855695120
    submissions = parse(body)
    assert {s.source_event_id for s in submissions} == {HASH}
    assert submissions[0].collected_at == datetime(2025, 6, 2, 9, 14, 55, 120000, tzinfo=UTC)


def test_nothing_mapped_still_reports_what_was_ignored():
    body = copy.deepcopy(DOC_EXAMPLE)
    [submission] = parse(body, purpose_map={})
    assert dict(submission.purposes) == {}
    assert submission.ignored == ("purpose:targeted_advertising", "purpose:analytics")


def _with_request(**changes):
    body = copy.deepcopy(DOC_EXAMPLE)
    body["request"].update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**DOC_EXAMPLE, "apiVersion": "consent/v2"}, "apiVersion"),
        ({**DOC_EXAMPLE, "kind": "RightInvocationRequest"}, "kind"),
        ({**DOC_EXAMPLE, "request": None}, "request"),
        ({**DOC_EXAMPLE, "metadata": "uid"}, "metadata"),
        (_with_request(collectedAt=None), "request.collectedAt"),
        (_with_request(collectedAt="later"), "request.collectedAt"),
        (_with_request(identities=[]), "request.identities"),
        (_with_request(identities={"email": "x"}), "request.identities"),
        (_with_request(identities=[{"identityValue": "x"}]), "request.identities[0].identitySpace"),
        (_with_request(identities=[{"identitySpace": "email"}]), "request.identities[0].identityValue"),
        (
            _with_request(
                identities=[
                    {"identitySpace": "crm_id", "identityValue": "1"},
                    {"identitySpace": "customer_id", "identityValue": "2"},
                ]
            ),
            "request.identities[1]",
        ),
        (_with_request(purposes={"analytics": "maybe"}), "request.purposes.analytics"),
        (_with_request(purposes=["analytics"]), "request.purposes"),
        (_with_request(legalBasis={"analytics": 3}), "request.legalBasis.analytics"),
    ],
)
def test_invalid_payloads_name_the_field(body, field):
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert info.value.field == field
