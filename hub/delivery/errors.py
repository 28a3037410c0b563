"""Classify the Graph API's answer to a CAPI request into what the dispatcher should do next.

Pure. Meta says to branch on the numeric ``code`` / ``error_subcode`` / ``is_transient`` only — message strings
are localised and change — and HTTP status is not reliable (RudderStack's fixtures record 190 and 17 bodies
arriving with HTTP 500, and 100/2804003 with 400) (reference/capi.md §9, checklist 26, 27, 30).

Kinds and what the dispatcher does with them:

- ``transient``: retry the same payload (same event_ids) with back-off.
- ``throttle``: Meta's rate limiting; retry later, no sooner than ``retry_after`` when Meta said how long.
- ``invalid``: code 100 — the payload is wrong; split the batch to isolate the bad event(s) (checklist 28).
- ``auth``: the token/signature/pixel access is broken — pause the destination and alert (checklist 27).
- ``permanent``: retrying cannot help — dead-letter (replayable); see ``pauses_destination`` for config codes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import requests

ErrorKind = Literal["transient", "throttle", "invalid", "auth", "permanent"]

# Meta codes (reference/capi.md §9).
AUTH_CODES = frozenset({102, 104, 190})  # session key invalid, bad signature/appsecret_proof, token invalid
INVALID_PARAMETER = 100
OBJECT_NOT_ACCESSIBLE_SUBCODE = 33  # 100/33: pixel doesn't exist or the token lacks permission on it
THROTTLE_CODES = frozenset({4, 17, 32, 341, 613, *range(80000, 80015)})
POLICY_BLOCK = 368  # temporarily blocked for policy reasons: transient, long back-off
TRANSIENT_CODES = frozenset({1, 2, 5000})
PERMISSION_CODES = frozenset({3, 10, 294, *range(200, 300)})

# Hub policy: how long to wait after a 368 "temporarily blocked" (Meta gives no figure; continued calls are
# said to extend blocks, so wait long).
POLICY_BLOCK_RETRY_AFTER = 3600.0
# Hub policy for X-App-Usage (percentages of a rolling one-hour window, §10): at 100 % Meta is throttling,
# wait a good while; close to it, slow down.
APP_USAGE_FULL_WAIT = 600.0
APP_USAGE_HIGH_PCT = 90.0
APP_USAGE_HIGH_WAIT = 60.0


@dataclass(frozen=True)
class ErrorClass:
    """What went wrong with one request and how to react.

    ``code``/``subcode`` are Meta's numeric codes when Meta answered with an error envelope, else None.
    ``reason`` is a stable machine label: ``meta_error``, ``timeout``, ``connection_error``, ``network_error``,
    ``non_json_response``, ``unexpected_response``, ``http_status``, ``partial_acceptance``, ``no_response``.
    ``retry_after`` is a minimum wait in seconds suggested by Meta (usage headers, 368), or None.
    """

    kind: ErrorKind
    code: int | None
    subcode: int | None
    message: str
    fbtrace_id: str | None
    is_transient: bool
    retry_after: float | None = None
    reason: str = "meta_error"
    error_type: str | None = None

    @property
    def retryable(self) -> bool:
        """Retry the unchanged payload later (transient or throttled)."""
        return self.kind in ("transient", "throttle")

    @property
    def splits_batch(self) -> bool:
        """Code 100: one event spoiled the batch; split it to find the bad one(s) (checklist 28)."""
        return self.kind == "invalid"

    @property
    def pauses_destination(self) -> bool:
        """Every later request to this pixel would fail the same way until someone fixes the configuration.

        True for auth failures and for missing capabilities/permissions (3, 10, 200-299, 294): dead-lettering
        batch after batch would only churn; pause and alert instead (checklist 27).
        """
        return self.kind == "auth" or (self.kind == "permanent" and self.code in PERMISSION_CODES)


def classify(
    status: int | None,
    body: Mapping | None,
    exc: Exception | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    events_sent: int | None = None,
) -> ErrorClass | None:
    """Classify one answer; None means it is a complete success.

    ``exc`` is the exception raised instead of an answer (timeout, connection error) or while decoding it
    (``json.JSONDecodeError``). ``headers`` feed ``retry_after`` (see :func:`parse_usage_headers`).
    ``events_sent``, when given, turns an HTTP 200 whose ``events_received`` differs into an error
    (checklist 25: delivered only when Meta received every event).
    """
    usage_wait = parse_usage_headers(headers) if headers else None
    if exc is not None:
        return _from_exception(exc, status, usage_wait)

    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        return _from_meta_error(error, status, usage_wait)

    if status == 200 and isinstance(body, Mapping):
        received = body.get("events_received")
        if isinstance(received, int) and not isinstance(received, bool):
            if events_sent is None or received == events_sent:
                return None
            # Meta says one invalid event rejects the whole batch (§3), so a partial count is an anomaly and we
            # cannot tell which events were dropped. Retrying would duplicate the accepted ones on every retry
            # (Meta never dedups server↔server, §8); dropping would be silent loss. So: permanent — the batch
            # is dead-lettered, visible and replayable by a person.
            return ErrorClass(
                kind="permanent",
                code=None,
                subcode=None,
                message=f"Meta acknowledged {received} of {events_sent} events; the batch needs review",
                fbtrace_id=_str_or_none(body.get("fbtrace_id")),
                is_transient=False,
                retry_after=None,
                reason="partial_acceptance",
            )
        # JSON without events_received or error: a proxy or an API change; nothing says it was accepted.
        return ErrorClass(
            kind="transient",
            code=None,
            subcode=None,
            message="HTTP 200 without events_received or an error",
            fbtrace_id=_str_or_none(body.get("fbtrace_id")),
            is_transient=True,
            retry_after=usage_wait,
            reason="unexpected_response",
        )

    if status is None:
        return ErrorClass("transient", None, None, "no answer", None, True, usage_wait, "no_response")
    if status >= 500 or status in (408, 425):
        return ErrorClass(
            "transient",
            None,
            None,
            f"HTTP {status} without a Graph API error",
            None,
            True,
            usage_wait,
            "http_status",
        )
    if status == 429:
        return ErrorClass(
            "throttle", None, None, "HTTP 429 without a Graph API error", None, True, usage_wait, "http_status"
        )
    # Other statuses without Meta's error envelope (404 from a wrong HUB_GRAPH_URL, 401 from a proxy…) are
    # configuration problems: repeating the request will not change the answer.
    return ErrorClass(
        "permanent", None, None, f"HTTP {status} without a Graph API error", None, False, None, "http_status"
    )


def parse_usage_headers(headers: Mapping[str, str] | None) -> float | None:
    """Seconds Meta's usage headers suggest waiting before the next call, or None (§10).

    - ``X-Business-Use-Case-Usage``: ``{"<business id>": [{"type", "call_count", ...,
      "estimated_time_to_regain_access": <minutes>}]}`` — the largest estimate wins.
    - ``X-App-Usage``: ``{"call_count", "total_cputime", "total_time"}`` as % of a rolling hour — hub policy:
      at ≥100 % wait 10 minutes, at ≥90 % wait one minute.
    - ``Retry-After`` (seconds), honoured if a proxy or Meta sends it.
    Malformed headers are ignored: they must never turn a delivery into a crash.
    """
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in headers.items()}
    waits: list[float] = []

    buc = _json_header(lowered.get("x-business-use-case-usage"))
    if isinstance(buc, Mapping):
        for entries in buc.values():
            if not isinstance(entries, list):
                continue
            for entry in entries:
                if isinstance(entry, Mapping):
                    minutes = _number(entry.get("estimated_time_to_regain_access"))
                    if minutes is not None and minutes > 0:
                        waits.append(minutes * 60.0)

    app = _json_header(lowered.get("x-app-usage"))
    if isinstance(app, Mapping):
        pcts = [_number(app.get(k)) for k in ("call_count", "total_cputime", "total_time")]
        peak = max((p for p in pcts if p is not None), default=None)
        if peak is not None:
            if peak >= 100:
                waits.append(APP_USAGE_FULL_WAIT)
            elif peak >= APP_USAGE_HIGH_PCT:
                waits.append(APP_USAGE_HIGH_WAIT)

    retry_after = _number(lowered.get("retry-after"))
    if retry_after is not None and retry_after > 0:
        waits.append(retry_after)

    return max(waits) if waits else None


def _from_exception(exc: Exception, status: int | None, usage_wait: float | None) -> ErrorClass:
    # No usable answer: Meta may or may not have processed the request. Retrying with the same event_ids is the
    # at-least-once choice of DESIGN §4.6.
    if isinstance(exc, requests.Timeout | TimeoutError):
        reason = "timeout"
    elif isinstance(exc, requests.ConnectionError | ConnectionError):
        reason = "connection_error"
    elif isinstance(exc, ValueError):  # json.JSONDecodeError and requests' JSON errors are ValueErrors
        reason = "non_json_response"
    else:
        reason = "network_error"
    where = f" (HTTP {status})" if status is not None else ""
    return ErrorClass(
        kind="transient",
        code=None,
        subcode=None,
        message=f"{type(exc).__name__}{where}: {_short(str(exc))}",
        fbtrace_id=None,
        is_transient=True,
        retry_after=usage_wait,
        reason=reason,
    )


def _from_meta_error(error: Mapping, status: int | None, usage_wait: float | None) -> ErrorClass:
    code = _int_or_none(error.get("code"))
    subcode = _int_or_none(error.get("error_subcode"))
    flagged_transient = error.get("is_transient")
    message = _meta_message(error)
    trace = _str_or_none(error.get("fbtrace_id"))
    error_type = _str_or_none(error.get("type"))

    def make(kind: ErrorKind, transient: bool, retry_after: float | None = None) -> ErrorClass:
        return ErrorClass(kind, code, subcode, message, trace, transient, retry_after, "meta_error", error_type)

    # The explicit code table comes first: Meta flags some of these inconsistently, and checklist 27 says never
    # to retry an unchanged payload after 100/102/104/190 whatever is_transient says.
    if code in AUTH_CODES:
        return make("auth", False)
    if code == INVALID_PARAMETER:
        if subcode == OBJECT_NOT_ACCESSIBLE_SUBCODE:
            # Not a payload problem: the pixel id is wrong or the token has no access to it. Splitting the batch
            # would only multiply identical failures — treat like a broken credential (pause, alert).
            return make("auth", False)
        return make("invalid", False)
    if code in THROTTLE_CODES:
        return make("throttle", True, usage_wait)
    if code == POLICY_BLOCK:
        return make("transient", True, max(POLICY_BLOCK_RETRY_AFTER, usage_wait or 0.0))
    if code in PERMISSION_CODES:
        return make("permanent", False)
    if code in TRANSIENT_CODES:
        return make("transient", True, usage_wait)
    if flagged_transient is True:
        return make("transient", True, usage_wait)
    if flagged_transient is False:
        return make("permanent", False)
    # Unknown code and no is_transient: the HTTP status is the only hint left.
    if status is not None and status >= 500:
        return make("transient", True, usage_wait)
    return make("permanent", False)


def _meta_message(error: Mapping) -> str:
    # error_user_msg is localised and meant for people; keep both when present (for logs and the UI).
    parts = [_str_or_none(error.get("message")), _str_or_none(error.get("error_user_msg"))]
    text = " — ".join(p for p in parts if p)
    return _short(text) if text else "Graph API error without a message"


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _json_header(raw: object) -> object:
    if not isinstance(raw, str | bytes) or not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
