"""Build the JSON that goes to Meta's Conversions API, and refuse locally what Meta would reject.

Pure: no I/O, no clock (``now`` is passed in), no global state. Input is an event that has already been
decided (consent, region rule, mapping) and whose identifiers are already normalized and SHA-256 hashed
upstream — this module validates the hashes and never hashes again (Meta: normalize and hash only once).

Meta rules are cited from ``reference/capi.md`` (§ numbers and "What a correct sender must do" rule numbers).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

# reference/capi.md §4 [SE]: the 9 values Meta accepts (one list for ingestion, mappings, payloads and the sandbox).
ACTION_SOURCES: tuple[str, ...] = (
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
)
HASHED_KEYS = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")
PLAIN_KEYS = ("client_ip_address", "client_user_agent", "fbc", "fbp")

# Meta: at most 1,000 events in one request (§3).
MAX_EVENTS_PER_REQUEST = 1000
# Meta: any event older than 7 days fails the entire request (§3, subcode 2804003).
MAX_EVENT_AGE = timedelta(days=7)
# Meta measures the age when the request arrives, not when we built it; a request that is built just inside the
# window and then waits on a slow connection would fail the whole batch. So we stop this much earlier.
SEND_SAFETY_MARGIN = timedelta(minutes=10)
# Meta documents no tolerance for future event_time (§3) and hub never sends one (checklist 6). A small skew
# between the clock of the system that recorded the event and ours is expected, so an event up to this far in the
# future is sent with event_time = now; anything further is a broken clock or a bad timestamp and is refused.
FUTURE_CLOCK_SKEW_TOLERANCE = timedelta(minutes=5)

# Meta (§7, checklist 22): the only option value is "LDU"; country 1 = USA or 0 = geolocate; state 0 = geolocate
# or one of the published state codes 1000..1013.
LDU_COUNTRIES = frozenset({0, 1})
LDU_STATES = frozenset({0, *range(1000, 1014)})

# Meta baseline matching rule (§4, since Graph v13.0): an event whose customer-information keys are only a
# subset of one of these sets is rejected with code 100 / subcode 2804050.
BASELINE_INSUFFICIENT_SETS = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)

# SHA-256 of the empty string: the mark of an identifier that was empty after normalization (checklist 17).
EMPTY_STRING_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

_is_sha256_hex = re.compile(r"[0-9a-f]{64}").fullmatch
_is_absolute_http_url = re.compile(r"https?://[^\s/?#]+(?:[/?#]\S*)?", re.IGNORECASE).fullmatch
_HASHED_KEY_SET = frozenset(HASHED_KEYS)
_PLAIN_KEY_SET = frozenset(PLAIN_KEYS)
_ACTION_SOURCE_SET = frozenset(ACTION_SOURCES)
_LETTER = re.compile(r"[A-Za-z]")
_WEAK_KEYS = frozenset().union(*BASELINE_INSUFFICIENT_SETS)
_STRONG_KEYS = (_HASHED_KEY_SET | _PLAIN_KEY_SET) - _WEAK_KEYS
_OLDEST_SENDABLE_SECONDS = (MAX_EVENT_AGE - SEND_SAFETY_MARGIN).total_seconds()
_FUTURE_TOLERANCE_SECONDS = FUTURE_CLOCK_SKEW_TOLERANCE.total_seconds()


class PayloadRejected(ValueError):
    """An event (or request) Meta would reject; ``code`` is stable for machines, ``message`` is for people.

    ``field`` is the path of the offending value inside the CAPI event (e.g. ``user_data.em[1]``), or None.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class CapiEventInput:
    """One decided event, ready to be turned into a CAPI server event."""

    event_id: str
    event_name: str
    occurred_at: datetime
    action_source: str
    event_source_url: str | None
    custom_data: Mapping[str, object]
    # Already-normalized SHA-256 lowercase hex per HASHED_KEYS; a list for multi-valued identifiers.
    hashed: Mapping[str, str | Sequence[str]]
    # PLAIN_KEYS, sent verbatim (Meta: never hash them, checklist 12).
    plain: Mapping[str, str]
    # The region rule's allowed user_data keys; None allows all.
    allowed_identifiers: Sequence[str] | None
    # (["LDU"], country, state) when Limited Data Use applies; None sends data_processing_options [] (no LDU).
    ldu: tuple[Sequence[str], int, int] | None
    opt_out: bool = False
    referrer_url: str | None = None


@cache
def iso4217_codes() -> frozenset[str]:
    """Upper-case ISO 4217 alphabetic codes (from pycountry, loaded once on first use)."""
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies)


def baseline_insufficient(user_data_keys: AbstractSet[str]) -> bool:
    """Meta's baseline matching rule (§4): True when the keys are only a subset of one weak combination.

    The empty set is a subset of every combination, so it is insufficient too.
    """
    if not _STRONG_KEYS.isdisjoint(user_data_keys):
        # Fast path: a key outside every weak combination (em, ph, external_id, IP, fbp, fbc…) is enough.
        return False
    return any(user_data_keys <= weak for weak in BASELINE_INSUFFICIENT_SETS)


def build_capi_event(ev: CapiEventInput, now: datetime) -> dict:
    """The CAPI server-event object for ``ev``, or :class:`PayloadRejected` for anything Meta would reject.

    ``now`` must be timezone-aware; it decides the 7-day window and the future-time clamp.
    """
    if now.tzinfo is None or ev.occurred_at.tzinfo is None:
        if now.tzinfo is None:
            raise ValueError("now must be a timezone-aware datetime")
        raise PayloadRejected(
            "bad_event_time", "occurred_at has no timezone; hub only handles aware UTC times", "event_time"
        )

    event_name = ev.event_name
    if not isinstance(event_name, str) or not event_name or event_name.isspace():
        raise PayloadRejected("bad_event_name", "event_name must be a non-empty string", "event_name")
    event_id = ev.event_id
    if not isinstance(event_id, str) or not event_id or event_id.isspace():
        # Meta: event_id (+ event_name) is the dedup key; hub always sends one, stable across retries (checklist 8).
        raise PayloadRejected("bad_event_id", "event_id must be a non-empty string", "event_id")
    action_source = ev.action_source
    if action_source not in _ACTION_SOURCE_SET:
        raise PayloadRejected(
            "bad_action_source",
            f"action_source {action_source!r} is not one of Meta's values: {', '.join(ACTION_SOURCES)}",
            "action_source",
        )

    event_time = _event_time(ev.occurred_at, now)

    url = ev.event_source_url
    if url:
        if not isinstance(url, str) or not _is_absolute_http_url(url):
            raise PayloadRejected(
                "bad_event_source_url", "event_source_url must be an absolute http(s) URL", "event_source_url"
            )
    elif action_source == "website":
        # Meta: website events require event_source_url (§4, checklist 7).
        raise PayloadRejected("website_without_url", "website events need an event_source_url", "event_source_url")

    user_data = _user_data(ev)
    if action_source == "website" and "client_user_agent" not in user_data:
        # Meta: website events require user_data.client_user_agent (§4, checklist 7).
        raise PayloadRejected(
            "website_without_user_agent",
            "website events need the browser's user agent (client_user_agent); it is missing or not allowed "
            "by the region rule",
            "user_data.client_user_agent",
        )

    out: dict = {
        "event_name": event_name,
        "event_time": event_time,
        "event_id": event_id,
        "action_source": action_source,
        "user_data": user_data,
    }
    if url:
        out["event_source_url"] = url
    if ev.referrer_url:
        out["referrer_url"] = ev.referrer_url
    custom_data = ev.custom_data
    if custom_data:
        _check_custom_data(event_name, custom_data)
        out["custom_data"] = dict(custom_data)
    elif event_name == "Purchase":
        _check_custom_data(event_name, {})
    if ev.opt_out:
        # Meta: opt_out true = use the event for attribution only, not delivery optimisation (§4).
        out["opt_out"] = True
    if ev.ldu is None:
        out["data_processing_options"] = []  # Meta: an explicit [] states that LDU does not apply (§7)
    else:
        _add_data_processing_options(out, ev.ldu)
    return out


def build_request_body(
    events: Sequence[dict], *, test_event_code: str | None = None, partner_agent: str | None = None
) -> dict:
    """The request body ``{"data": [...]}`` for up to 1,000 built events (checklist 3, 4).

    ``test_event_code`` must only be passed outside production (Meta: test events are not dropped, §12).
    """
    if not events:
        raise PayloadRejected("empty_batch", "a request needs at least one event", "data")
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise PayloadRejected(
            "batch_too_large",
            f"a request may carry at most {MAX_EVENTS_PER_REQUEST} events, got {len(events)}; split the batch",
            "data",
        )
    body: dict = {"data": list(events)}
    if test_event_code is not None:
        if not isinstance(test_event_code, str) or not test_event_code.strip():
            raise PayloadRejected("bad_test_event_code", "test_event_code must be a non-empty string")
        body["test_event_code"] = test_event_code
    if partner_agent is not None:
        check_partner_agent(partner_agent)
        body["partner_agent"] = partner_agent
    return body


def check_partner_agent(partner_agent: str) -> None:
    """Meta: partner_agent has fewer than 23 characters and at least two letters (§2)."""
    if not isinstance(partner_agent, str) or len(partner_agent) >= 23 or len(_LETTER.findall(partner_agent)) < 2:
        raise PayloadRejected(
            "bad_partner_agent",
            "partner_agent must have fewer than 23 characters and at least two letters",
            "partner_agent",
        )


def _event_time(occurred_at: datetime, now: datetime) -> int:
    # Meta: event_time is integer Unix seconds (§3); floor so a clamped time is never after now.
    # (Float seconds rather than timedelta arithmetic: this runs for every event of every batch.)
    occurred = occurred_at.timestamp()
    current = now.timestamp()
    age = current - occurred
    if age < 0:
        if -age > _FUTURE_TOLERANCE_SECONDS:
            raise PayloadRejected(
                "future_event_time",
                f"occurred_at is {timedelta(seconds=-age)} in the future (more than the "
                f"{FUTURE_CLOCK_SKEW_TOLERANCE} clock-skew tolerance); Meta must never receive a future event_time",
                "event_time",
            )
        # Within tolerance: clock skew, send now rather than a future time (checklist 6).
        return math.floor(current)
    if age > _OLDEST_SENDABLE_SECONDS:
        raise PayloadRejected(
            "too_old",
            f"occurred_at is {timedelta(seconds=age)} ago; Meta rejects the whole request when an event is older "
            f"than 7 days (hub stops {SEND_SAFETY_MARGIN} earlier so in-flight requests never cross the line)",
            "event_time",
        )
    return math.floor(occurred)


def _user_data(ev: CapiEventInput) -> dict:
    allowed = None if ev.allowed_identifiers is None else frozenset(ev.allowed_identifiers)
    user_data: dict = {}
    for key, value in ev.hashed.items():
        if key not in _HASHED_KEY_SET:
            raise PayloadRejected("unknown_identifier", f"{key!r} is not a hashed CAPI identifier", f"user_data.{key}")
        if allowed is not None and key not in allowed:
            continue
        if type(value) is str:  # inline fast path for the common single value; lists go to _checked_hashes
            if not _is_sha256_hex(value):
                raise _not_hashed(key, value, f"user_data.{key}")
            if value != EMPTY_STRING_SHA256:
                user_data[key] = value
            continue
        checked = _checked_hashes(key, value)
        if checked is not None:
            user_data[key] = checked
    for key, value in ev.plain.items():
        if key not in _PLAIN_KEY_SET:
            raise PayloadRejected("unknown_identifier", f"{key!r} is not a plain CAPI identifier", f"user_data.{key}")
        if allowed is not None and key not in allowed:
            continue
        if not value:
            continue
        if type(value) is not str and not isinstance(value, str):
            raise PayloadRejected("bad_identifier", f"{key} must be a string", f"user_data.{key}")
        # Meta: sent verbatim — never hashed, lowercased or rewritten (checklist 12, 19, 20).
        user_data[key] = value
    if not user_data:
        # Meta: user_data needs at least one identifier (§4, checklist 5).
        raise PayloadRejected(
            "no_user_data",
            "no customer identifier is left to send (none given, or none allowed by the region rule)",
            "user_data",
        )
    if _STRONG_KEYS.isdisjoint(user_data) and baseline_insufficient(user_data.keys()):
        raise PayloadRejected(
            "insufficient_customer_information",
            f"identifiers {sorted(user_data)} are too few for Meta's baseline matching rule (Meta answers "
            "100/2804050); add em, ph, external_id, client_ip_address, fbp or fbc",
            "user_data",
        )
    return user_data


def _checked_hashes(key: str, value: str | Sequence[str] | None) -> str | list[str] | None:
    """Validated hash(es) for one key, or None when there is nothing to send.

    A hash of the empty string means the identifier was empty after normalization: nothing to send, not an
    error (checklist 17: never emit it).
    """
    if type(value) is str:  # the common case first: one value
        if not _is_sha256_hex(value):
            raise _not_hashed(key, value, f"user_data.{key}")
        return None if value == EMPTY_STRING_SHA256 else value
    if value is None:
        return None
    if isinstance(value, str):  # a str subclass
        return _checked_hashes(key, str(value))
    if not isinstance(value, Sequence):
        raise _not_hashed(key, value, f"user_data.{key}")
    seen: dict[str, None] = {}
    for i, item in enumerate(value):
        if not isinstance(item, str) or not _is_sha256_hex(item):
            raise _not_hashed(key, item, f"user_data.{key}[{i}]")
        if item != EMPTY_STRING_SHA256:
            seen[item] = None  # dict keeps first-seen order while removing duplicates (checklist 18)
    if not seen:
        return None
    return list(seen)


def _not_hashed(key: str, value: object, field: str) -> PayloadRejected:
    # Never echo the value: it may be raw PII that was meant to be hashed.
    kind = type(value).__name__
    length = len(value) if isinstance(value, str) else None
    detail = f"a {kind} of length {length}" if length is not None else f"a {kind}"
    return PayloadRejected(
        "not_hashed",
        f"{key} must be a lowercase hex SHA-256 digest (64 characters) of the normalized value; got {detail}",
        field,
    )


def _check_custom_data(event_name: str, custom_data: Mapping[str, object]) -> None:
    value = custom_data.get("value")
    currency = custom_data.get("currency")
    if event_name == "Purchase" and (value is None or currency is None):
        # Meta: Purchase events require value and currency (§6, checklist 23).
        raise PayloadRejected(
            "purchase_without_value",
            "Purchase events need custom_data.value and custom_data.currency",
            "custom_data",
        )
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise PayloadRejected("bad_value", "custom_data.value must be a finite number", "custom_data.value")
        if currency is None:
            raise PayloadRejected(
                "value_without_currency",
                "custom_data.value needs an ISO 4217 currency",
                "custom_data.currency",
            )
    if currency is not None and (not isinstance(currency, str) or currency.upper() not in iso4217_codes()):
        raise PayloadRejected(
            "bad_currency",
            "custom_data.currency must be an ISO 4217 code such as USD or EUR",
            "custom_data.currency",
        )


def _add_data_processing_options(out: dict, ldu: tuple[Sequence[str], int, int] | None) -> None:
    # Meta (§7, checklist 22): [] explicitly opts out of LDU; ["LDU"] always with both country and state.
    if ldu is None:
        out["data_processing_options"] = []
        return
    options, country, state = ldu
    options = list(options)
    if not options:
        out["data_processing_options"] = []
        return
    if options != ["LDU"]:
        raise PayloadRejected(
            "bad_ldu", f"data_processing_options may only be ['LDU'], got {options!r}", "data_processing_options"
        )
    if isinstance(country, bool) or country not in LDU_COUNTRIES:
        raise PayloadRejected(
            "bad_ldu",
            "data_processing_options_country must be 0 (geolocate) or 1 (USA)",
            "data_processing_options_country",
        )
    if isinstance(state, bool) or state not in LDU_STATES:
        raise PayloadRejected(
            "bad_ldu",
            "data_processing_options_state must be 0 (geolocate) or a Meta state code 1000..1013",
            "data_processing_options_state",
        )
    out["data_processing_options"] = ["LDU"]
    out["data_processing_options_country"] = country
    out["data_processing_options_state"] = state
