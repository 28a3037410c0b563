"""The shape of one ingested event (CONTRACT.md, `POST /api/v1/events`): structural validation, pure.

`parse_event` checks everything about an event except the `user` object's values and `context.region`, which
identity preparation validates (`hub.profiles.services.prepare_identity`) so that ingestion and identify agree
on what an identifier is. Errors are `field path → sentence`, with paths relative to the event (`occurred_at`,
`user.email`, `context.gpc`); the whole event is `$` when it is not an object at all.

Decisions documented here:

* `occurred_at` is ISO 8601 *with* an offset (`Z` or `+02:00`), or Unix seconds (a JSON number, or a string of
  digits). A naive time is refused: guessing the zone would shift consent checks by hours. A number above 1e11 is
  refused as milliseconds (1e11 seconds is the year 5138) rather than converted — a sender mixing units is a bug
  worth surfacing, and dividing would hide it. Times more than `MAX_FUTURE_SKEW` ahead of the server are refused
  (Meta documents no tolerance for future `event_time`, capi.md §3); times before 2000 are refused as a unit
  mistake. Old events are accepted: the dispatcher drops what Meta would refuse (older than 7 days) with a reason.
* `event_id` is a non-empty string of at most 255 characters, or an integer (order numbers often are); absent,
  the service generates one. `event` is trimmed of surrounding spaces (mappings match names exactly).
* `source_url` is an absolute http(s) URL (Meta: website events need event_source_url, capi.md §4).
* `context.gpc` is a boolean (or null = not sent). Unknown keys anywhere are errors, never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from hub.mappings.apply import ACTION_SOURCES

EVENT_KEYS: tuple[str, ...] = (
    "event_id",
    "event",
    "occurred_at",
    "action_source",
    "source_url",
    "user",
    "properties",
    "context",
)
CONTEXT_KEYS: tuple[str, ...] = ("region", "gpc")
MAX_EVENT_ID_LENGTH = 255
MAX_EVENT_NAME_LENGTH = 255
MAX_URL_LENGTH = 8192
MAX_FUTURE_SKEW = timedelta(minutes=5)
# Unix seconds above this are milliseconds (1e11 s is in the year 5138; 1e11 ms is in 1973).
MILLISECONDS_THRESHOLD = 100_000_000_000
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)
WHOLE_EVENT = "$"

_DIGITS = re.compile(r"[0-9]+(\.[0-9]+)?")
# The characters str.isspace() accepts (re's \s on str patterns is the same Unicode test), found in one C scan.
_WHITESPACE = re.compile(r"\s")
# ISO 8601 date-time with a mandatory offset; fromisoformat does the parsing, this only demands the offset.
_OFFSET = re.compile(r".*[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|z|[+-]\d{2}:?\d{2})$")


@dataclass(frozen=True)
class ParsedEvent:
    """An event whose structure is valid; `user` and `context.region` are still raw (see module docstring)."""

    event_id: str | None
    source_event: str
    occurred_at: datetime
    action_source: str | None
    source_url: str | None
    user: Mapping[str, Any] = field(default_factory=dict)
    properties: Mapping[str, Any] | None = None
    region: object = None  # raw context.region, validated by prepare_identity
    gpc: bool | None = None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def parse_occurred_at(value: object, now: datetime) -> datetime:
    """`occurred_at` as an aware UTC datetime; raises ValueError with a sentence the sender can act on."""
    if isinstance(value, bool) or value is None:
        raise ValueError("must be an ISO 8601 time with an offset (2026-11-28T10:00:00Z) or Unix seconds")
    seconds: float | None = None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _DIGITS.fullmatch(text):
            seconds = float(text)
        else:
            if not _OFFSET.match(text):
                raise ValueError(
                    "must be an ISO 8601 date and time with a UTC offset, e.g. 2026-11-28T10:00:00Z or "
                    "2026-11-28T11:00:00+01:00 (a time without offset is ambiguous)"
                )
            try:
                moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
            except ValueError:
                raise ValueError(f"{text!r} is not a valid ISO 8601 date and time") from None
            return _check_range(moment.astimezone(UTC), now)
    else:
        raise ValueError(f"must be an ISO 8601 string or Unix seconds, not {_kind(value)}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN/inf never parse from JSON, but guard
        raise ValueError("must be a finite number of Unix seconds")
    if seconds >= MILLISECONDS_THRESHOLD:
        raise ValueError(
            f"{value} looks like Unix milliseconds; send Unix seconds (divide by 1000) or an ISO 8601 time"
        )
    if seconds < 0:
        raise ValueError("Unix seconds must not be negative")
    return _check_range(datetime.fromtimestamp(seconds, UTC), now)


def _check_range(moment: datetime, now: datetime) -> datetime:
    if moment > now + MAX_FUTURE_SKEW:
        raise ValueError(
            f"is {int((moment - now).total_seconds())} seconds in the future; hub accepts at most "
            f"{int(MAX_FUTURE_SKEW.total_seconds() // 60)} minutes of clock skew (check the sender's clock "
            "and time zone)"
        )
    if moment < EARLIEST_OCCURRED_AT:
        raise ValueError("is before the year 2000; check the unit (Unix seconds) and the value")
    return moment


def _check_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be an absolute http(s) URL string, not {_kind(value)}")
    text = value.strip()
    if len(text) > MAX_URL_LENGTH:
        raise ValueError(f"is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or _WHITESPACE.search(text):
        raise ValueError("must be an absolute http(s) URL such as https://shop.example/thanks")
    return text


def parse_event(raw: object, now: datetime) -> tuple[ParsedEvent | None, dict[str, str]]:
    """Validate one event's structure. Returns (event, {}) or (None, errors); never raises for bad input."""
    if not isinstance(raw, dict):
        return None, {WHOLE_EVENT: f"each event must be a JSON object, not {_kind(raw)}"}
    errors: dict[str, str] = {}
    for key in raw:
        if key not in EVENT_KEYS:
            errors[str(key)] = f"unknown field; an event has {', '.join(EVENT_KEYS)}"

    event_id: str | None = None
    raw_id = raw.get("event_id")
    if raw_id is not None:
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            event_id = str(raw_id)
        elif isinstance(raw_id, str) and raw_id.strip():
            event_id = raw_id.strip()
            if len(event_id) > MAX_EVENT_ID_LENGTH:
                errors["event_id"] = f"must be at most {MAX_EVENT_ID_LENGTH} characters"
        else:
            errors["event_id"] = f"must be a non-empty string (or an integer), not {_kind(raw_id)}"

    source_event = raw.get("event")
    if source_event is None:
        errors["event"] = "is required: the name of what happened, e.g. order_completed"
    elif not isinstance(source_event, str) or not source_event.strip():
        errors["event"] = "must be a non-empty string, e.g. order_completed"
    elif len(source_event.strip()) > MAX_EVENT_NAME_LENGTH:
        errors["event"] = f"must be at most {MAX_EVENT_NAME_LENGTH} characters"

    occurred_at: datetime | None = None
    if raw.get("occurred_at") is None:
        errors["occurred_at"] = "is required: ISO 8601 with offset (2026-11-28T10:00:00Z) or Unix seconds"
    else:
        try:
            occurred_at = parse_occurred_at(raw["occurred_at"], now)
        except ValueError as error:
            errors["occurred_at"] = str(error)

    action_source = raw.get("action_source")
    if action_source is not None and action_source not in ACTION_SOURCES:
        errors["action_source"] = f"must be one of Meta's values: {', '.join(ACTION_SOURCES)}"

    source_url: str | None = None
    if raw.get("source_url") is not None:
        try:
            source_url = _check_url(raw["source_url"])
        except ValueError as error:
            errors["source_url"] = str(error)

    user = raw.get("user")
    if user is None:
        user = {}
    elif not isinstance(user, dict):
        errors["user"] = f"must be an object, not {_kind(user)}"
        user = {}

    properties = raw.get("properties")
    if properties is not None and not isinstance(properties, dict):
        errors["properties"] = f"must be an object, not {_kind(properties)}"

    region: object = None
    gpc: bool | None = None
    context = raw.get("context")
    if context is not None:
        if not isinstance(context, dict):
            errors["context"] = f"must be an object, not {_kind(context)}"
        else:
            for key in context:
                if key not in CONTEXT_KEYS:
                    errors[f"context.{key}"] = f"unknown field; context has {', '.join(CONTEXT_KEYS)}"
            region = context.get("region")
            raw_gpc = context.get("gpc")
            if raw_gpc is not None and not isinstance(raw_gpc, bool):
                errors["context.gpc"] = f"must be true or false, not {_kind(raw_gpc)}"
            else:
                gpc = raw_gpc

    # The type checks repeat what the errors above already guarantee, for the type checker.
    if errors or not isinstance(source_event, str) or occurred_at is None:
        return None, errors
    return (
        ParsedEvent(
            event_id=event_id,
            source_event=source_event.strip(),
            occurred_at=occurred_at,
            action_source=action_source,
            source_url=source_url,
            user=user,
            properties=properties,
            region=region,
            gpc=gpc,
        ),
        {},
    )
