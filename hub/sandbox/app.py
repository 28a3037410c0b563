"""The CAPI sandbox: a local stand-in for ``POST https://graph.facebook.com/{version}/{pixel}/events``.

It authenticates and validates like Meta (see ``validation``), answers with Meta's success and error envelopes,
records what it accepted and rejected (in memory, bounded), and can be told to misbehave so the retry paths of
hub can be exercised offline.

Configuration (all optional)::

    {
      "tokens": {"<pixel id>": "<access token>"},   # absent = open mode: any pixel, any non-empty token
      "app_secrets": {"<pixel id>": "<app secret>"},  # appsecret_proof required for these pixels
      "max_events": 100000,                           # how many received events are kept
      "future_tolerance_seconds": 0,                  # event_time may be this far ahead of the sandbox clock
      "clock": callable returning Unix seconds        # for tests; default time.time
    }

Admin endpoints (local use; no auth): ``POST/GET/DELETE /_sandbox/faults``, ``GET/DELETE /_sandbox/events``,
``GET /_sandbox/requests``, and the HTML page at ``/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, jsonify, render_template, request

from hub.sandbox.recorder import FAULT_MODES, Fault, SandboxRecorder
from hub.sandbox.validation import SandboxError, validate_request

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
_VERSION = re.compile(r"v\d+\.\d+").fullmatch
_EXTENSION = "capi_sandbox"
MAX_FAULT_COUNT = 100_000
MAX_FAULT_DELAY_MS = 600_000


class _Sandbox:
    def __init__(self, config: Mapping[str, Any]) -> None:
        tokens = config.get("tokens")
        self.tokens: dict[str, str] | None = None if tokens is None else {str(k): v for k, v in tokens.items()}
        self.app_secrets: dict[str, str] = {str(k): v for k, v in (config.get("app_secrets") or {}).items()}
        self.future_tolerance = int(config.get("future_tolerance_seconds", 0))
        self.clock: Callable[[], float] = config.get("clock") or time.time
        self.recorder = SandboxRecorder(max_events=int(config.get("max_events", 100_000)))


def create_sandbox_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, template_folder=str(TEMPLATES))
    app.config["MAX_CONTENT_LENGTH"] = 50 * 1024 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the order events were sent in
    app.extensions[_EXTENSION] = _Sandbox(config or {})

    app.add_url_rule("/<version>/<pixel_id>/events", "events", _post_events, methods=["POST"])
    app.add_url_rule("/_sandbox/faults", "add_faults", _add_faults, methods=["POST"])
    app.add_url_rule("/_sandbox/faults", "list_faults", _list_faults, methods=["GET"])
    app.add_url_rule("/_sandbox/faults", "clear_faults", _clear_faults, methods=["DELETE"])
    app.add_url_rule("/_sandbox/events", "list_events", _list_events, methods=["GET"])
    app.add_url_rule("/_sandbox/events", "reset_events", _reset_events, methods=["DELETE"])
    app.add_url_rule("/_sandbox/requests", "list_requests", _list_requests, methods=["GET"])
    app.add_url_rule("/", "index", _index, methods=["GET"])
    return app


def sandbox_recorder(app: Flask) -> SandboxRecorder:
    """The recorder of a sandbox app (for tests and the CLI)."""
    return app.extensions[_EXTENSION].recorder


def _sandbox() -> _Sandbox:
    return current_app.extensions[_EXTENSION]


# -- the Graph API edge ---------------------------------------------------------------------------------------
def _post_events(version: str, pixel_id: str) -> Response:
    sandbox = _sandbox()
    recorder = sandbox.recorder
    request_index, fault = recorder.next_request()
    trace = _fbtrace_id()

    if fault is not None:
        if fault.mode == "slow":
            time.sleep(fault.delay_ms / 1000)
        elif fault.mode == "drop_connection":
            recorder.record_dropped(request_index, pixel_id)
            return _drop_connection()
        else:
            return _reject(request_index, pixel_id, _fault_error(fault), trace, None, _fault_headers(fault))

    params: dict[str, Any] | None = None
    try:
        if not _VERSION(version):
            raise SandboxError(
                code=2500,
                message=f"Unknown path components: /{version}/{pixel_id}/events",
                rule="bad_version",
                user_title="Unknown path",
                user_msg="The API version must look like v26.0",
            )
        params, token, proof = _read_params()
        _authenticate(sandbox, pixel_id, token, proof)
        valid = validate_request(params, now=math.floor(sandbox.clock()), future_tolerance=sandbox.future_tolerance)
    except SandboxError as error:
        data = params.get("data") if params is not None else None
        return _reject(request_index, pixel_id, error, trace, len(data) if isinstance(data, list) else None)

    recorder.record_accepted(request_index, pixel_id, valid.events, valid.test_event_code, valid.partner_agent, trace)
    response = jsonify({"events_received": len(valid.events), "messages": valid.messages, "fbtrace_id": trace})
    response.headers["x-fb-trace-id"] = trace
    return response


def _read_params() -> tuple[dict[str, Any], str | None, str | None]:
    """Body parameters plus the token and proof, wherever the caller put them (body, query, header)."""
    if request.mimetype == "application/json":
        try:
            params = json.loads(request.get_data(cache=False) or b"null")
        except ValueError:
            raise SandboxError(
                code=100,
                message="Invalid parameter",
                rule="malformed_body",
                user_title="Malformed request",
                user_msg="The request body is not valid JSON",
            ) from None
        if not isinstance(params, dict):
            raise SandboxError(
                code=100,
                message="Invalid parameter",
                rule="malformed_body",
                user_title="Malformed request",
                user_msg="The JSON body must be an object",
            )
    else:
        params = request.form.to_dict()
    token = params.pop("access_token", None) or request.args.get("access_token") or _bearer_token()
    proof = params.pop("appsecret_proof", None) or request.args.get("appsecret_proof")
    return params, token, proof


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() in ("bearer", "oauth") else None


def _authenticate(sandbox: _Sandbox, pixel_id: str, token: object, proof: object) -> None:
    if not isinstance(token, str) or not token:
        raise SandboxError(
            code=104,
            message="An access token is required to request this resource.",
            rule="token_missing",
            user_title="Access token missing",
            user_msg="Send the access_token parameter",
        )
    if sandbox.tokens is not None:
        if token not in sandbox.tokens.values():
            raise SandboxError(
                code=190,
                message="Invalid OAuth access token - Cannot parse access token",
                rule="token_invalid",
                user_title="Invalid access token",
                user_msg="The access token is not valid",
            )
        if not hmac.compare_digest(sandbox.tokens.get(pixel_id, ""), token):
            raise SandboxError(
                code=100,
                subcode=33,
                error_type="GraphMethodException",
                rule="unknown_pixel",
                message=(
                    f"Unsupported post request. Object with ID '{pixel_id}' does not exist, cannot be "
                    "loaded due to missing permissions, or does not support this operation."
                ),
                user_title="Unknown dataset",
                user_msg="This pixel does not exist or the token cannot use it",
            )
    secret = sandbox.app_secrets.get(pixel_id)
    if secret is not None:
        expected = hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        if not isinstance(proof, str) or not hmac.compare_digest(expected, proof):
            # reference/capi.md §9: 104 = incorrect signature (e.g. wrong appsecret_proof).
            raise SandboxError(
                code=104,
                message="Invalid appsecret_proof provided in the API argument",
                rule="appsecret_proof",
                user_title="Invalid appsecret_proof",
                user_msg="appsecret_proof must be HMAC-SHA256(app secret, access token) in hex",
            )


def _reject(
    request_index: int,
    pixel_id: str,
    error: SandboxError,
    trace: str,
    event_count: int | None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    envelope = error.envelope(trace)
    _sandbox().recorder.record_rejected(request_index, pixel_id, error.http_status, envelope["error"], event_count)
    response = jsonify(envelope)
    response.status_code = error.http_status
    response.headers["x-fb-trace-id"] = trace
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _fault_error(fault: Fault) -> SandboxError:
    if fault.mode == "http_500":
        return SandboxError(
            code=2,
            message="An unexpected error has occurred. Please retry your request later.",
            rule="fault_http_500",
            user_title="Service temporarily unavailable",
            user_msg="Injected fault: HTTP 500",
            http_status=500,
            is_transient=True,
        )
    if fault.mode == "rate_limit":
        # Meta answers throttling with HTTP 400 and code 17 (reference/capi.md §9) — status is not a signal.
        return SandboxError(
            code=17,
            subcode=2446079,
            message="User request limit reached",
            rule="fault_rate_limit",
            user_title="Too many calls",
            user_msg="Injected fault: rate limit",
            is_transient=True,
        )
    if fault.mode == "expired_token":
        return SandboxError(
            code=190,
            subcode=463,
            message="Error validating access token: Session has expired.",
            rule="fault_expired_token",
            user_title="Access token expired",
            user_msg="Injected fault: the access token has expired",
        )
    raise ValueError(f"no error answer for fault mode {fault.mode}")


def _fault_headers(fault: Fault) -> dict[str, str]:
    if fault.mode != "rate_limit":
        return {}
    usage = {
        "sandbox": [
            {
                "type": "ads_management",
                "call_count": 100,
                "total_cputime": 100,
                "total_time": 100,
                "estimated_time_to_regain_access": fault.regain_minutes,
            }
        ]
    }
    return {"X-Business-Use-Case-Usage": json.dumps(usage)}


def _drop_connection() -> Response:
    """Close the TCP connection without an answer (werkzeug's or gunicorn's server); else answer 502."""
    sock = request.environ.get("werkzeug.socket") or request.environ.get("gunicorn.socket")
    if isinstance(sock, socket.socket):
        # shutdown (not close): the server's own write then fails with a broken pipe it handles quietly.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        return Response(status=500)
    # No socket to drop (e.g. Flask's test client): answer like a proxy whose upstream vanished.
    return Response(status=502)


def _fbtrace_id() -> str:
    return "A" + secrets.token_urlsafe(16)[:22]


# -- admin ---------------------------------------------------------------------------------------------------
def _add_faults() -> tuple[Response, int]:
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return _admin_error("body must be a JSON object", "body")
    mode = payload.get("mode")
    if mode not in FAULT_MODES:
        return _admin_error(f"mode must be one of {', '.join(FAULT_MODES)}", "mode")
    count = payload.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FAULT_COUNT:
        return _admin_error(f"count must be an integer from 1 to {MAX_FAULT_COUNT}", "count")
    delay_ms = payload.get("delay_ms", 1000 if mode == "slow" else 0)
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or not 0 <= delay_ms <= MAX_FAULT_DELAY_MS:
        return _admin_error(f"delay_ms must be an integer from 0 to {MAX_FAULT_DELAY_MS}", "delay_ms")
    regain = payload.get("regain_minutes", 1)
    if isinstance(regain, bool) or not isinstance(regain, int) or not 0 <= regain <= 1440:
        return _admin_error("regain_minutes must be an integer from 0 to 1440", "regain_minutes")
    pending = _sandbox().recorder.add_faults(Fault(mode, delay_ms, regain), count)
    return jsonify({"pending": pending}), 201


def _list_faults() -> Response:
    return jsonify({"pending": _sandbox().recorder.pending_faults()})


def _clear_faults() -> tuple[str, int]:
    _sandbox().recorder.clear_faults()
    return "", 204


def _list_events() -> Response | tuple[Response, int]:
    limit_arg = request.args.get("limit")
    limit = None
    if limit_arg is not None:
        if not limit_arg.isdigit():
            return _admin_error("limit must be a non-negative integer", "limit")
        limit = int(limit_arg)
    return jsonify(_sandbox().recorder.snapshot(pixel_id=request.args.get("pixel_id"), limit=limit))


def _reset_events() -> tuple[str, int]:
    _sandbox().recorder.reset()
    return "", 204


def _list_requests() -> Response:
    return jsonify({"requests": _sandbox().recorder.requests()})


def _admin_error(message: str, field: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": "invalid", "message": message, "fields": {field: message}}}), 400


def _index() -> str:
    sandbox = _sandbox()
    snapshot = sandbox.recorder.snapshot(limit=200)
    rows = []
    for record in reversed(snapshot["events"]):
        event = record["event"]
        event_time = event.get("event_time")
        rows.append(
            {
                **record,
                "event_time_iso": datetime.fromtimestamp(event_time, UTC).isoformat()
                if isinstance(event_time, int)
                else "",
                "user_data_keys": ", ".join(sorted(event.get("user_data") or {})),
                "ldu": event.get("data_processing_options"),
                "json": json.dumps(event, indent=2, sort_keys=True),
            }
        )
    return render_template(
        "sandbox/index.html",
        events=rows,
        rejections=list(reversed(snapshot["rejections"])),
        requests_received=snapshot["requests_received"],
        events_received_total=snapshot["events_received_total"],
        faults=sandbox.recorder.pending_faults(),
        open_mode=sandbox.tokens is None,
        pixels=sorted(sandbox.tokens or {}),
    )
