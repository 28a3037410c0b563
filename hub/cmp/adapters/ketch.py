"""Ketch consent webhooks, Ketch Forwarder protocol `consent/v1` (reference/consent.md §1.2 Ketch).

Body: `{apiVersion: "consent/v1", kind: "ConsentRequest", metadata{uid, tenant}, request{regulation,
jurisdiction, identities[{identitySpace, identityFormat, identityValue}], purposes{code: granted|denied},
legalBasis{code: consent_optin|consent_optout|disclosure|other}, vendors[], collectedAt (unix)}}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hub.cmp.adapters.submission import (
    ConsentSubmission,
    PayloadError,
    Signals,
    apply_signals,
    combine,
    freeze,
    normalize_status,
    optional_list,
    optional_mapping,
    optional_str,
    parse_timestamp,
    require_mapping,
    require_str,
)

# Ketch identity spaces are tenant-defined codes; these common names map onto hub user keys. Any other space
# (or a hashed format) is kept as a CMP identity `ketch_<space>` for source bindings to resolve.
_SUBJECT_KEYS = {
    "email": "email",
    "email_address": "email",
    "emailaddress": "email",
    "phone": "phone",
    "phone_number": "phone",
    "phonenumber": "phone",
    "mobile": "phone",
    "external_id": "external_id",
    "customer_id": "external_id",
    "crm_id": "external_id",
    "user_id": "external_id",
    "userid": "external_id",
    "account_id": "external_id",
}
_RAW_FORMATS = {"raw", "plain", "plaintext"}
# Ketch legal basis codes → the hub ledger's vocabulary (consent.md §7.1); unknown codes pass through.
_LEGAL_BASIS = {"consent_optin": "consent", "consent_optout": "opt_out_right"}


def parse_ketch(
    body: Mapping[str, Any],
    *,
    purpose_map: Mapping[str, str],
    body_sha256: str,
    tcf_purpose_map: Mapping[str, Sequence[int]] | None,
) -> list[ConsentSubmission]:
    api_version = require_str(body.get("apiVersion"), "apiVersion")
    if api_version != "consent/v1":
        raise PayloadError("apiVersion", f"{api_version!r} is not supported (expected 'consent/v1')")
    kind = require_str(body.get("kind"), "kind")
    if kind != "ConsentRequest":
        raise PayloadError("kind", f"{kind!r} is not a consent request")
    metadata = optional_mapping(body.get("metadata"), "metadata")
    request = require_mapping(body.get("request"), "request")
    collected_at = parse_timestamp(request.get("collectedAt"), "request.collectedAt")
    subject, identities = _identities(request.get("identities"))
    legal_bases = optional_mapping(request.get("legalBasis"), "request.legalBasis")

    # One submission per legal basis, so each ledger row says under which basis its purpose was decided.
    by_basis: dict[str | None, dict[str, str]] = {}
    ignored: list[str] = []
    for code, raw_status in optional_mapping(request.get("purposes"), "request.purposes").items():
        status = normalize_status(raw_status, f"request.purposes.{code}")
        hub_purpose = purpose_map.get(code)
        if hub_purpose is None:
            ignored.append(f"purpose:{code}")
            continue
        if status is None:
            ignored.append(f"purpose:{code} (no decision)")
            continue
        raw_basis = optional_str(legal_bases.get(code), f"request.legalBasis.{code}")
        basis = None if raw_basis is None else _LEGAL_BASIS.get(raw_basis, raw_basis)
        combine(by_basis.setdefault(basis, {}), hub_purpose, status)
    if not by_basis:
        by_basis[None] = {}

    source_event_id = optional_str(metadata.get("uid"), "metadata.uid") or body_sha256
    regulation = optional_str(request.get("regulation"), "request.regulation")
    submissions = []
    for basis, explicit in by_basis.items():
        submissions.append(
            ConsentSubmission(
                source_event_id=source_event_id,
                collected_at=collected_at,
                subject=freeze(subject),
                cmp_identities=freeze(identities),
                purposes=freeze(apply_signals(explicit, Signals(), tcf_purpose_map)),
                region=None,  # Ketch jurisdictions ("ca_ccpa") are policy scopes, not ISO regions
                tc_string=None,
                gpp_string=None,
                usp_string=None,
                gpc=None,
                legal_basis=basis,
                regulation=regulation,
                notice_version=None,
                expires_at=None,
                ignored=tuple(ignored),
            )
        )
    return submissions


def _identities(value: Any) -> tuple[dict[str, str], dict[str, str]]:
    subject: dict[str, str] = {}
    identities: dict[str, str] = {}
    for index, item in enumerate(optional_list(value, "request.identities")):
        path = f"request.identities[{index}]"
        identity = require_mapping(item, path)
        space = require_str(identity.get("identitySpace"), f"{path}.identitySpace")
        identity_format = optional_str(identity.get("identityFormat"), f"{path}.identityFormat")
        identity_value = require_str(identity.get("identityValue"), f"{path}.identityValue")
        fmt = (identity_format or "raw").lower()
        key = _SUBJECT_KEYS.get(space.lower())
        if key is not None and fmt in _RAW_FORMATS:
            target, target_key = subject, key
        else:
            suffix = "" if fmt in _RAW_FORMATS else f"_{fmt}"
            target, target_key = identities, f"ketch_{space}{suffix}"
        existing = target.get(target_key)
        if existing is not None and existing != identity_value:
            raise PayloadError(path, f"a second, different {target_key} for the same request")
        target[target_key] = identity_value
    if not subject and not identities:
        raise PayloadError("request.identities", "needs at least one identity")
    return subject, identities
