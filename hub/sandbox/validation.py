"""Validate a CAPI request body the way Meta does (pure).

Rules are the sender checklist of reference/capi.md ("What a correct sender must do") items 3-7, 10-13 and
21-23, plus the 1,000-event cap. Like Meta, one invalid event rejects the whole request (§3), and the error names
the event index and field. Where Meta's subcode is published it is used (2804003 too old, 2804050 insufficient
customer information); for the other rules Meta's subcode is not published, so the sandbox sends code 100 without
one and names its rule in ``error_data.sandbox_rule``.

The checks here are written independently of ``hub.delivery.payload`` (only Meta's published constants are
shared), so the sandbox can catch a payload-builder bug instead of repeating it.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from hub.delivery.payload import (
    ACTION_SOURCES,
    BASELINE_INSUFFICIENT_SETS,
    EMPTY_STRING_SHA256,
    HASHED_KEYS,
    LDU_COUNTRIES,
    LDU_STATES,
    MAX_EVENTS_PER_REQUEST,
    iso4217_codes,
)

SEVEN_DAYS_SECONDS = 7 * 24 * 3600
ALLOWED_TOP_LEVEL = frozenset({"data", "partner_agent", "test_event_code"})
# Checklist 12: these are never hashed.
PLAIN_USER_DATA_KEYS = frozenset(
    {
        "client_ip_address",
        "client_user_agent",
        "fbc",
        "fbp",
        "subscription_id",
        "fb_login_id",
        "lead_id",
        "anon_id",
        "madid",
        "page_id",
        "page_scoped_user_id",
        "ctwa_clid",
        "ig_account_id",
        "ig_sid",
    }
)
_HASHED = frozenset(HASHED_KEYS)
_ACTION_SOURCES = frozenset(ACTION_SOURCES)
_SHA256 = re.compile(r"[0-9a-f]{64}").fullmatch
_ANY_CASE_HEX64 = re.compile(r"[0-9A-Fa-f]{64}").fullmatch
_ABSOLUTE_HTTP_URL = re.compile(r"https?://[^\s/?#]+(?:[/?#]\S*)?", re.IGNORECASE).fullmatch

SUBCODE_TOO_OLD = 2804003
SUBCODE_INSUFFICIENT = 2804050


@dataclass(eq=False)
class SandboxError(Exception):
    """A Graph API error answer: HTTP status plus the fields of Meta's error envelope."""

    code: int
    message: str
    rule: str
    user_title: str
    user_msg: str
    subcode: int | None = None
    error_type: str = "OAuthException"
    http_status: int = 400
    is_transient: bool = False
    event_index: int | None = None
    field_path: str | None = None

    def __str__(self) -> str:
        return f"({self.code}/{self.subcode}) {self.rule}: {self.user_msg}"

    def envelope(self, fbtrace_id: str) -> dict:
        error: dict = {
            "message": self.message,
            "type": self.error_type,
            "code": self.code,
            "is_transient": self.is_transient,
            "error_user_title": self.user_title,
            "error_user_msg": self.user_msg,
            "fbtrace_id": fbtrace_id,
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        error_data: dict = {"sandbox_rule": self.rule}
        if self.event_index is not None:
            error_data["event_index"] = self.event_index
        if self.field_path is not None:
            # Meta's blame_field_specs: a list of field paths, each a list of path segments.
            error_data["blame_field_specs"] = [self.field_path.split(".")]
        error["error_data"] = error_data
        return {"error": error}


@dataclass(frozen=True)
class ValidRequest:
    events: list[dict]
    test_event_code: str | None
    partner_agent: str | None
    messages: list[str] = field(default_factory=list)


def invalid(
    rule: str,
    user_msg: str,
    *,
    index: int | None = None,
    path: str | None = None,
    subcode: int | None = None,
    title: str = "Invalid parameter",
) -> SandboxError:
    where = f"Event {index}: " if index is not None else ""
    return SandboxError(
        code=100,
        subcode=subcode,
        message="Invalid parameter",
        rule=rule,
        user_title=title,
        user_msg=where + user_msg,
        event_index=index,
        field_path=path,
    )


def validate_request(params: Mapping[str, object], now: int, future_tolerance: int = 0) -> ValidRequest:
    """Check the request parameters (body without access_token/appsecret_proof); raise SandboxError."""
    unknown = sorted(set(params) - ALLOWED_TOP_LEVEL)
    if unknown:
        raise invalid("unknown_parameter", f"Unexpected top-level parameter(s): {', '.join(unknown)}", path=unknown[0])
    data = params.get("data")
    if isinstance(data, str):  # form encoding sends data as a JSON string
        data = _json_or_none(data)
    if not isinstance(data, list) or not data:
        raise invalid("data_required", "The parameter data is required and must be a non-empty array", path="data")
    if len(data) > MAX_EVENTS_PER_REQUEST:
        raise invalid(
            "too_many_events",
            f"At most {MAX_EVENTS_PER_REQUEST} events per request; this one has {len(data)}",
            path="data",
        )
    test_event_code = params.get("test_event_code")
    if test_event_code is not None and (not isinstance(test_event_code, str) or not test_event_code):
        raise invalid("bad_test_event_code", "test_event_code must be a non-empty string", path="test_event_code")
    partner_agent = params.get("partner_agent")
    if partner_agent is not None and (
        not isinstance(partner_agent, str)
        or len(partner_agent) >= 23
        or sum(ch.isascii() and ch.isalpha() for ch in partner_agent) < 2
    ):
        raise invalid(
            "bad_partner_agent",
            "partner_agent must have fewer than 23 characters and at least two letters",
            path="partner_agent",
        )

    messages: list[str] = []
    events: list[dict] = []
    for index, raw in enumerate(data):
        event = _json_or_none(raw) if isinstance(raw, str) else raw  # the Python SDK sends JSON strings
        if not isinstance(event, dict):
            raise invalid("event_not_object", "Each event must be a JSON object", index=index, path=f"data.{index}")
        _validate_event(event, index, now, future_tolerance, messages)
        events.append(event)
    return ValidRequest(events, test_event_code, partner_agent, messages)


def _validate_event(event: dict, i: int, now: int, future_tolerance: int, messages: list[str]) -> None:
    p = f"data.{i}"
    name = event.get("event_name")
    if not isinstance(name, str) or not name.strip():
        raise invalid("event_name_required", "event_name is required", index=i, path=f"{p}.event_name")

    t = event.get("event_time")
    if isinstance(t, bool) or not isinstance(t, int):
        raise invalid(
            "event_time_integer",
            "event_time must be an integer Unix timestamp in seconds",
            index=i,
            path=f"{p}.event_time",
        )
    if not 1_000_000_000 <= t < 10_000_000_000:
        raise invalid(
            "event_time_seconds",
            "event_time must be in seconds (10 digits), not milliseconds",
            index=i,
            path=f"{p}.event_time",
        )
    if t < now - SEVEN_DAYS_SECONDS:
        raise invalid(
            "too_old",
            "The timestamp for this event is more than 7 days in the past; events must be sent "
            "within 7 days of when they occurred",
            index=i,
            path=f"{p}.event_time",
            subcode=SUBCODE_TOO_OLD,
            title="Event Timestamp Too Old",
        )
    if t > now + future_tolerance:
        raise invalid(
            "future_event_time",
            "event_time is in the future",
            index=i,
            path=f"{p}.event_time",
            title="Event Timestamp In The Future",
        )

    source = event.get("action_source")
    if source not in _ACTION_SOURCES:
        raise invalid(
            "action_source",
            f"action_source must be one of: {', '.join(ACTION_SOURCES)}",
            index=i,
            path=f"{p}.action_source",
        )

    url = event.get("event_source_url")
    if url is not None and (not isinstance(url, str) or not _ABSOLUTE_HTTP_URL(url)):
        raise invalid(
            "event_source_url",
            "event_source_url must be an absolute http(s) URL",
            index=i,
            path=f"{p}.event_source_url",
        )

    user_data = event.get("user_data")
    if not isinstance(user_data, dict) or not user_data:
        raise invalid(
            "user_data_required",
            "user_data is required and must contain customer information",
            index=i,
            path=f"{p}.user_data",
        )
    present = _validate_user_data(user_data, i, f"{p}.user_data", messages)

    if source == "website":
        if url is None:
            raise invalid(
                "website_url", "Website events require event_source_url", index=i, path=f"{p}.event_source_url"
            )
        if "client_user_agent" not in present:
            raise invalid(
                "website_user_agent",
                "Website events require user_data.client_user_agent",
                index=i,
                path=f"{p}.user_data.client_user_agent",
            )

    if any(present <= weak for weak in BASELINE_INSUFFICIENT_SETS):
        raise invalid(
            "insufficient_customer_information",
            "The customer information parameters sent are too few or too broad to match; send "
            "more of em, ph, external_id, client_ip_address, fbp, fbc",
            index=i,
            path=f"{p}.user_data",
            subcode=SUBCODE_INSUFFICIENT,
            title="Invalid Customer Information Parameters",
        )

    _validate_ldu(event, i, p, messages)
    _validate_custom_data(event, name, i, p)

    opt_out = event.get("opt_out")
    if opt_out is not None and not isinstance(opt_out, bool):
        raise invalid("opt_out", "opt_out must be a boolean", index=i, path=f"{p}.opt_out")
    if not event.get("event_id"):
        messages.append(f"Event {i}: no event_id; it cannot be deduplicated against the Pixel")


def _validate_user_data(user_data: dict, i: int, p: str, messages: list[str]) -> frozenset[str]:
    present: set[str] = set()
    for key, value in user_data.items():
        path = f"{p}.{key}"
        if key in _HASHED:
            values = value if isinstance(value, list) else [value]
            if not values:
                continue
            for value_index, item in enumerate(values):
                if not isinstance(item, str) or not _SHA256(item):
                    hint = " (MD5 is not accepted)" if isinstance(item, str) and len(item) == 32 else ""
                    raise invalid(
                        "not_hashed",
                        f"{key} must be a lowercase hex SHA-256 hash{hint}",
                        index=i,
                        path=path if len(values) == 1 else f"{path}.{value_index}",
                    )
                if item == EMPTY_STRING_SHA256:
                    messages.append(f"Event {i}: user_data.{key} contains the SHA-256 of an empty string")
            present.add(key)
        elif key in PLAIN_USER_DATA_KEYS:
            if value is None or value == "":
                continue
            if key in ("fb_login_id", "lead_id"):
                if isinstance(value, bool) or not isinstance(value, int | str):
                    raise invalid("bad_identifier", f"{key} must be an integer id", index=i, path=path)
            elif not isinstance(value, str):
                raise invalid("bad_identifier", f"{key} must be a string", index=i, path=path)
            elif _ANY_CASE_HEX64(value):
                raise invalid("plain_field_hashed", f"{key} must be sent as is, not hashed", index=i, path=path)
            if key == "client_ip_address":
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise invalid(
                        "client_ip_address",
                        "client_ip_address must be a valid IPv4 or IPv6 address",
                        index=i,
                        path=path,
                    ) from None
            present.add(key)
        else:
            raise invalid("unknown_user_data_key", f"user_data has an unknown parameter {key}", index=i, path=path)
    return frozenset(present)


def _validate_ldu(event: dict, i: int, p: str, messages: list[str]) -> None:
    options = event.get("data_processing_options")
    if options is None:
        messages.append(f"Event {i}: no data_processing_options; send [] to state that LDU does not apply")
        return
    if not isinstance(options, list) or any(o != "LDU" for o in options) or len(options) > 1:
        raise invalid(
            "data_processing_options",
            'data_processing_options may only be [] or ["LDU"]',
            index=i,
            path=f"{p}.data_processing_options",
        )
    if not options:
        return
    country = event.get("data_processing_options_country")
    state = event.get("data_processing_options_state")
    if isinstance(country, bool) or country not in LDU_COUNTRIES:
        raise invalid(
            "data_processing_options_country",
            "With LDU, data_processing_options_country must be 0 or 1",
            index=i,
            path=f"{p}.data_processing_options_country",
        )
    if isinstance(state, bool) or state not in LDU_STATES:
        raise invalid(
            "data_processing_options_state",
            "With LDU, data_processing_options_state must be 0 or 1000..1013",
            index=i,
            path=f"{p}.data_processing_options_state",
        )


def _validate_custom_data(event: dict, name: str, i: int, p: str) -> None:
    custom = event.get("custom_data")
    if custom is None:
        custom = {}
    if not isinstance(custom, dict):
        raise invalid("custom_data", "custom_data must be an object", index=i, path=f"{p}.custom_data")
    value = custom.get("value")
    currency = custom.get("currency")
    if name == "Purchase" and (value is None or currency is None):
        raise invalid(
            "purchase_value",
            "Purchase events require custom_data.value and custom_data.currency",
            index=i,
            path=f"{p}.custom_data",
        )
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    ):
        raise invalid("value_number", "custom_data.value must be a number", index=i, path=f"{p}.custom_data.value")
    if value is not None and currency is None:
        raise invalid(
            "value_currency",
            "custom_data.value requires custom_data.currency",
            index=i,
            path=f"{p}.custom_data.currency",
        )
    if currency is not None and (not isinstance(currency, str) or currency.upper() not in iso4217_codes()):
        raise invalid(
            "currency", "custom_data.currency must be an ISO 4217 code", index=i, path=f"{p}.custom_data.currency"
        )


def _json_or_none(raw: str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None
