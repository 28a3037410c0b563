"""Didomi organisation webhooks (reference/consent.md §1.2 Didomi).

Body: `{"type": "event.created" | "event.updated" | "user.created" | "user.updated" | ..., "parameters": {...}}`;
`*.created` carries `parameters.entity`, `*.updated` carries `parameters.old_entity` and `parameters.new_entity`.
An event entity has `user{id, organization_user_id}`; a user entity *is* the user. Consents live in
`consents.purposes[{id, enabled}]`, `consents.vendors{enabled[], disabled[]}` and `consents.tcfcs` (TC string).
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

_HANDLED = {"event.created", "event.updated", "user.created", "user.updated"}
# Deletions remove Didomi's copy; the hub's ledger is append-only evidence, so there is nothing to record.
_NOTHING_TO_RECORD = {"event.deleted", "user.deleted"}


def parse_didomi(
    body: Mapping[str, Any],
    *,
    purpose_map: Mapping[str, str],
    body_sha256: str,
    tcf_purpose_map: Mapping[str, Sequence[int]] | None,
) -> list[ConsentSubmission]:
    if any("__" in key for key in body):
        raise PayloadError(
            "", "flattened Didomi payloads (keys joined with '__') are not supported; turn off 'flatten'"
        )
    kind = require_str(body.get("type"), "type")
    if kind in _NOTHING_TO_RECORD:
        return []
    if kind not in _HANDLED:
        raise PayloadError("type", f"unsupported Didomi webhook type {kind!r}")
    parameters = require_mapping(body.get("parameters"), "parameters")
    entity_key = "entity" if kind.endswith(".created") else "new_entity"
    path = f"parameters.{entity_key}"
    entity = require_mapping(parameters.get(entity_key), path)

    if kind.startswith("event."):
        user = require_mapping(entity.get("user"), f"{path}.user")
        user_path = f"{path}.user"
        # The event id is Didomi's idempotency key for this consent event (consent.md §1.3 rule 3).
        source_event_id = optional_str(entity.get("id"), f"{path}.id") or body_sha256
        collected_at = parse_timestamp(entity.get("created_at"), f"{path}.created_at")
    else:
        user, user_path = entity, path
        # A user entity's id is the *user's* id: every update of that user shares it, so it cannot dedupe.
        source_event_id = body_sha256
        stamp_field = "updated_at" if entity.get("updated_at") is not None else "created_at"
        collected_at = parse_timestamp(entity.get(stamp_field), f"{path}.{stamp_field}")

    identities: dict[str, str] = {}
    didomi_user_id = optional_str(user.get("id"), f"{user_path}.id")
    if didomi_user_id:
        identities["didomi_user_id"] = didomi_user_id
    subject: dict[str, str] = {}
    organization_user_id = optional_str(user.get("organization_user_id"), f"{user_path}.organization_user_id")
    if organization_user_id:
        subject["external_id"] = organization_user_id
    if not identities and not subject:
        raise PayloadError(f"{user_path}", "has neither id nor organization_user_id")

    consents_path = f"{path}.consents"
    consents = optional_mapping(entity.get("consents"), consents_path)
    explicit: dict[str, str] = {}
    ignored: list[str] = []
    for index, item in enumerate(optional_list(consents.get("purposes"), f"{consents_path}.purposes")):
        item_path = f"{consents_path}.purposes[{index}]"
        purpose = require_mapping(item, item_path)
        purpose_id = require_str(purpose.get("id"), f"{item_path}.id")
        status = normalize_status(purpose.get("enabled"), f"{item_path}.enabled")
        _record(explicit, ignored, purpose_map, f"purpose:{purpose_id}", purpose_id, status)

    vendors_path = f"{consents_path}.vendors"
    vendors = optional_mapping(consents.get("vendors"), vendors_path)
    for key, status in (("enabled", "granted"), ("disabled", "denied")):
        for index, vendor_id in enumerate(optional_list(vendors.get(key), f"{vendors_path}.{key}")):
            vendor = require_str(vendor_id, f"{vendors_path}.{key}[{index}]")
            _record(explicit, ignored, purpose_map, f"vendor:{vendor}", vendor, status)

    signals = Signals(
        tc_string=optional_str(consents.get("tcfcs"), f"{consents_path}.tcfcs"),
        tc_path=f"{consents_path}.tcfcs",
    )
    regulation = optional_str(entity.get("regulation"), f"{path}.regulation") or optional_str(
        body.get("regulation"), "regulation"
    )
    return [
        ConsentSubmission(
            source_event_id=source_event_id,
            collected_at=collected_at,
            subject=freeze(subject),
            cmp_identities=freeze(identities),
            purposes=freeze(apply_signals(explicit, signals, tcf_purpose_map)),
            region=None,
            tc_string=signals.tc_string,
            gpp_string=None,
            usp_string=None,
            gpc=None,
            legal_basis=None,
            # Didomi warns that a CPRA event can overwrite GDPR consent unless consumers branch on regulation,
            # so it travels with every record (consent.md §1.2).
            regulation=regulation,
            notice_version=None,
            expires_at=None,
            ignored=tuple(ignored),
        )
    ]


def _record(
    explicit: dict[str, str],
    ignored: list[str],
    purpose_map: Mapping[str, str],
    label: str,
    cmp_id: str,
    status: str | None,
) -> None:
    hub_purpose = purpose_map.get(cmp_id)
    if hub_purpose is None:
        ignored.append(label)
    elif status is None:
        ignored.append(f"{label} (no decision)")
    else:
        combine(explicit, hub_purpose, status)
