"""What every CMP adapter produces, and the normalisation rules they share.

An adapter turns one parsed webhook body into `ConsentSubmission`s: who (hub user keys + CMP identities), when
(the CMP's own timestamp — records are ordered by it, never by arrival; reference/consent.md §1.3 rule 4), and
which hub purposes are granted or denied. Bad input raises `PayloadError` naming the JSON path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from hub.consent.gpp import GPPError, decode_gpp_string, opt_outs_from_gpp, usp_opt_outs
from hub.consent.tcf import DEFAULT_TCF_PURPOSE_MAP, TCStringError, decode_tc_string, tcf_purposes_to_hub

GRANTED = "granted"
DENIED = "denied"
OPT_OUT_PURPOSES = ("sale", "sharing", "targeted_advertising")


class PayloadError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ConsentSubmission:
    source_event_id: str  # the CMP's event id, else the sha256 of the raw body (idempotency key)
    collected_at: datetime  # the CMP's own timestamp, aware UTC
    subject: Mapping[str, str]  # hub user keys: email, phone, external_id, ...
    cmp_identities: Mapping[str, str]  # e.g. {"didomi_user_id": "..."}; linked to profiles by source bindings
    purposes: Mapping[str, str]  # hub purpose -> "granted" | "denied"
    region: str | None
    tc_string: str | None
    gpp_string: str | None
    usp_string: str | None
    gpc: bool | None
    legal_basis: str | None
    regulation: str | None
    notice_version: str | None
    expires_at: datetime | None
    # CMP purpose/vendor ids that were not mapped (or carried no decision), e.g. "dps:ko1w5PpFl", so the admin
    # UI can offer to map them.
    ignored: tuple[str, ...] = field(default=())


# --- status vocabulary ------------------------------------------------------------------------------------

# Lower-cased CMP vocabularies: hub names, Ketch, OneTrust transaction types and statuses (consent.md §1.2),
# Google Consent Mode, Unomi, and plain yes/no words.
_GRANTED_WORDS = frozenset(
    {
        "granted", "grant", "allowed", "allow", "accepted", "accept", "opt_in", "optin", "opted_in", "yes", "y",
        "true", "given", "confirmed", "active", "always_active", "enabled", "on", "1", "not_opted_out",
    }
)  # fmt: skip
_DENIED_WORDS = frozenset(
    {
        "denied", "deny", "rejected", "reject", "declined", "refused", "withdrawn", "revoked", "opt_out",
        "optout", "opted_out", "hard_opt_out", "no", "n", "false", "disabled", "off", "0", "notgiven",
        "not_given", "no_consent", "expired", "cancel",
    }
)  # fmt: skip
# Statuses that record no decision at all: neither a grant nor a refusal is known, so nothing is recorded.
_UNDECIDED_WORDS = frozenset({"pending", "no_choice", "none", "unknown", "not_set"})


def normalize_status(value: Any, path: str) -> str | None:
    """Map a CMP status to "granted" / "denied"; None for "no decision recorded" (null, PENDING, NO_CHOICE).

    Booleans and 0/1 are accepted; an unrecognised word raises, because guessing a consent status is not
    acceptable.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return GRANTED if value else DENIED
    if isinstance(value, int):
        if value in (0, 1):
            return GRANTED if value == 1 else DENIED
        raise PayloadError(path, f"status {value} is not 0 or 1")
    if isinstance(value, str):
        word = value.strip().lower().replace("-", "_").replace(" ", "_")
        if word in _GRANTED_WORDS:
            return GRANTED
        if word in _DENIED_WORDS:
            return DENIED
        if word in _UNDECIDED_WORDS:
            return None
        raise PayloadError(path, f"status {value!r} is not one of granted/denied (or a known synonym)")
    raise PayloadError(path, f"status must be a string or boolean, not {type(value).__name__}")


def combine(purposes: dict[str, str], purpose: str, status: str) -> None:
    """Record `status` for `purpose`; when several CMP ids feed one hub purpose, a denial wins."""
    if purposes.get(purpose) != DENIED:
        purposes[purpose] = status


# --- timestamps -------------------------------------------------------------------------------------------

# Heuristic for numeric timestamps: values >= 1e11 are milliseconds. 1e11 seconds is the year 5138, while 1e11
# milliseconds is March 1973, so any plausible value in either unit is classified correctly.
_MILLISECONDS_THRESHOLD = 100_000_000_000
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)
_DIGITS = re.compile(r"\d{1,16}")


def parse_timestamp(value: Any, path: str) -> datetime:
    """ISO 8601 with a zone (`Z`, `+00:00`, `+0000`), or unix seconds / milliseconds (number or digit string).

    Naive ISO strings are refused: guessing the zone could reorder a withdrawal before the consent it revokes.
    """
    if value is None:
        raise PayloadError(path, "timestamp is required")
    if isinstance(value, bool):
        raise PayloadError(path, "timestamp must be ISO 8601 or unix seconds/milliseconds, not a boolean")
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise PayloadError(path, "timestamp must be a finite number")
        seconds = value / 1000 if abs(value) >= _MILLISECONDS_THRESHOLD else value
        try:
            parsed = datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise PayloadError(path, f"timestamp {value} is out of range") from None
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise PayloadError(path, f"{value!r} is not an ISO 8601 timestamp") from None
        if parsed.tzinfo is None:
            raise PayloadError(path, f"{value!r} has no time zone; add 'Z' or an offset such as '+00:00'")
        parsed = parsed.astimezone(UTC)
    else:
        raise PayloadError(path, f"timestamp must be a string or number, not {type(value).__name__}")
    if not _EARLIEST <= parsed < _LATEST:
        raise PayloadError(path, f"timestamp {parsed.isoformat()} is outside 2000-2099")
    return parsed


# --- typed access -----------------------------------------------------------------------------------------


def require_mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PayloadError(path, f"must be an object, not {_type_name(value)}")
    return value


def optional_mapping(value: Any, path: str) -> Mapping[str, Any]:
    return {} if value is None else require_mapping(value, path)


def require_list(value: Any, path: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise PayloadError(path, f"must be a list, not {_type_name(value)}")
    return value


def optional_list(value: Any, path: str) -> Sequence[Any]:
    return [] if value is None else require_list(value, path)


def optional_str(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(path, f"must be a string, not {_type_name(value)}")
    value = value.strip()
    return value or None


def require_str(value: Any, path: str) -> str:
    text = optional_str(value, path)
    if text is None:
        raise PayloadError(path, "is required")
    return text


def optional_id(value: Any, path: str) -> str | None:
    """An event id: a non-empty string or an integer (some systems number their events)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return optional_str(value, path)


def optional_bool(value: Any, path: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise PayloadError(path, f"must be true or false, not {_type_name(value)}")


_REGION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")


def optional_region(value: Any, path: str) -> str | None:
    """ISO 3166-1 alpha-2 country or ISO 3166-2 subdivision (`DE`, `US-CA`)."""
    text = optional_str(value, path)
    if text is None:
        return None
    text = text.upper()
    if not _REGION.fullmatch(text):
        raise PayloadError(path, f"{value!r} is not an ISO 3166 country or subdivision code like 'DE' or 'US-CA'")
    return text


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --- signals (TCF, GPP, US Privacy, GPC) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Signals:
    tc_string: str | None = None
    gpp_string: str | None = None
    usp_string: str | None = None
    gpc: bool | None = None
    # JSON paths for error messages
    tc_path: str = "tc_string"
    gpp_path: str = "gpp_string"
    usp_path: str = "usp_string"


def apply_signals(
    explicit: Mapping[str, str],
    signals: Signals,
    tcf_purpose_map: Mapping[str, Sequence[int]] | None,
) -> dict[str, str]:
    """Merge privacy signals into the CMP's explicit choices (reference/consent.md §7.1 rule 3).

    * A TC string fills only hub purposes the CMP did not state explicitly.
    * GPP / US Privacy / GPC speak to the opt-out purposes: a "did not opt out" fills gaps only, but an opt-out
      (GPC on, SaleOptOut=1, ...) always wins, even over an explicit grant ("deny wins").
    * A malformed signal string raises: it may carry an opt-out we cannot read, and silently dropping an opt-out
      would send data the user refused.
    """
    purposes = dict(explicit)
    tc_string = signals.tc_string
    tc_path = signals.tc_path
    opt_outs: dict[str, str] = {}

    if signals.gpp_string is not None:
        try:
            gpp = decode_gpp_string(signals.gpp_string)
        except GPPError as exc:
            raise PayloadError(signals.gpp_path, f"not a valid GPP string ({exc})") from None
        for purpose, status in opt_outs_from_gpp(gpp).items():
            combine(opt_outs, purpose, status)
        if tc_string is None and gpp.tcfeuv2 is not None:
            tc_string, tc_path = gpp.tcfeuv2, f"{signals.gpp_path} (tcfeuv2 section)"

    if tc_string is not None:
        try:
            tc = decode_tc_string(tc_string)
        except TCStringError as exc:
            raise PayloadError(tc_path, f"not a valid TCF v2 TC string ({exc})") from None
        for purpose, status in tcf_purposes_to_hub(tc, tcf_purpose_map or DEFAULT_TCF_PURPOSE_MAP).items():
            purposes.setdefault(purpose, status)

    if signals.usp_string is not None:
        try:
            usp = usp_opt_outs(signals.usp_string)
        except GPPError as exc:
            raise PayloadError(signals.usp_path, f"not a valid US Privacy string ({exc})") from None
        for purpose, status in usp.items():
            combine(opt_outs, purpose, status)

    if signals.gpc:
        # Global Privacy Control = "do not sell or share" (W3C GPC; consent.md §3). Absence/false says nothing.
        for purpose in OPT_OUT_PURPOSES:
            opt_outs[purpose] = DENIED

    for purpose, status in opt_outs.items():
        if status == DENIED:
            purposes[purpose] = DENIED
        else:
            purposes.setdefault(purpose, status)
    return purposes


def freeze(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))
