"""Usercentrics Consent Webhook (reference/consent.md §1.2 Usercentrics).

Body: `{controller_id, configuration_id, timestamp (epoch ms), consent_string (TC string), ac_string,
consents[{consent_status, dps_id}], webhook_version: "v1"}`. There is no event id, so the body hash is the
idempotency key, and `controller_id` is the only user key (linked to a profile through a source binding).
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
    optional_str,
    parse_timestamp,
    require_mapping,
    require_str,
)

_SUPPORTED_VERSIONS = {"v1"}


def parse_usercentrics(
    body: Mapping[str, Any],
    *,
    purpose_map: Mapping[str, str],
    body_sha256: str,
    tcf_purpose_map: Mapping[str, Sequence[int]] | None,
) -> list[ConsentSubmission]:
    version = optional_str(body.get("webhook_version"), "webhook_version")
    if version is not None and version not in _SUPPORTED_VERSIONS:
        raise PayloadError("webhook_version", f"version {version!r} is not supported (known: v1)")
    controller_id = require_str(body.get("controller_id"), "controller_id")
    explicit: dict[str, str] = {}
    ignored: list[str] = []
    for index, item in enumerate(optional_list(body.get("consents"), "consents")):
        path = f"consents[{index}]"
        consent = require_mapping(item, path)
        dps_id = require_str(consent.get("dps_id"), f"{path}.dps_id")
        status = normalize_status(consent.get("consent_status"), f"{path}.consent_status")
        hub_purpose = purpose_map.get(dps_id)
        if hub_purpose is None:
            ignored.append(f"dps:{dps_id}")
        elif status is None:
            ignored.append(f"dps:{dps_id} (no decision)")
        else:
            combine(explicit, hub_purpose, status)
    signals = Signals(tc_string=optional_str(body.get("consent_string"), "consent_string"), tc_path="consent_string")
    return [
        ConsentSubmission(
            source_event_id=body_sha256,
            collected_at=parse_timestamp(body.get("timestamp"), "timestamp"),
            subject=freeze({}),
            cmp_identities=freeze({"usercentrics_controller_id": controller_id}),
            purposes=freeze(apply_signals(explicit, signals, tcf_purpose_map)),
            region=None,
            tc_string=signals.tc_string,
            gpp_string=None,
            usp_string=None,
            gpc=None,
            legal_basis=None,
            regulation=None,
            notice_version=None,
            expires_at=None,
            ignored=tuple(ignored),
        )
    ]
