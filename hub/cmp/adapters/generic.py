"""The hub's own CMP payload (CONTRACT.md "CMP webhooks", generic payload)."""

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
    optional_bool,
    optional_id,
    optional_mapping,
    optional_region,
    optional_str,
    parse_timestamp,
)


def parse_generic(
    body: Mapping[str, Any],
    *,
    purpose_map: Mapping[str, str],
    body_sha256: str,
    tcf_purpose_map: Mapping[str, Sequence[int]] | None,
) -> list[ConsentSubmission]:
    """Purposes are hub purpose names already; `purpose_map` may rename some (e.g. a legacy name)."""
    subject = _subject(body.get("subject"))
    explicit: dict[str, str] = {}
    ignored: list[str] = []
    for name, raw_status in optional_mapping(body.get("purposes"), "purposes").items():
        path = f"purposes.{name}"
        if not isinstance(name, str) or not name.strip():
            raise PayloadError("purposes", "purpose names must be non-empty strings")
        status = normalize_status(raw_status, path)
        if status is None:
            ignored.append(f"purpose:{name} (no decision)")
            continue
        combine(explicit, purpose_map.get(name, name), status)

    signals = Signals(
        tc_string=optional_str(body.get("tc_string"), "tc_string"),
        gpp_string=optional_str(body.get("gpp_string"), "gpp_string"),
        usp_string=optional_str(body.get("usp_string"), "usp_string"),
        gpc=optional_bool(body.get("gpc"), "gpc"),
    )
    purposes = apply_signals(explicit, signals, tcf_purpose_map)
    if not purposes and not ignored:
        raise PayloadError("purposes", "states no purpose and carries no tc_string, gpp_string, usp_string or gpc")
    expires_at = body.get("expires_at")
    return [
        ConsentSubmission(
            source_event_id=optional_id(body.get("id"), "id") or body_sha256,
            collected_at=parse_timestamp(body.get("collected_at"), "collected_at"),
            subject=freeze(subject),
            cmp_identities=freeze({}),
            purposes=freeze(purposes),
            region=optional_region(body.get("region"), "region"),
            tc_string=signals.tc_string,
            gpp_string=signals.gpp_string,
            usp_string=signals.usp_string,
            gpc=signals.gpc,
            legal_basis=optional_str(body.get("legal_basis"), "legal_basis"),
            regulation=optional_str(body.get("regulation"), "regulation"),
            notice_version=optional_str(body.get("notice_version"), "notice_version"),
            expires_at=None if expires_at is None else parse_timestamp(expires_at, "expires_at"),
            ignored=tuple(ignored),
        )
    ]


def _subject(value: Any) -> dict[str, str]:
    subject: dict[str, str] = {}
    for key, raw in optional_mapping(value, "subject").items():
        text = optional_str(raw, f"subject.{key}")
        if text is not None:
            subject[key] = text
    if not subject:
        raise PayloadError("subject", "needs at least one user key such as email, phone or external_id")
    return subject
