"""HTTP client for ``POST /{api_version}/{pixel_id}/events`` (reference/capi.md §1, §9).

Never raises for what the network or Meta does: timeouts, refused connections and non-JSON answers come back as
a :class:`CapiResponse` whose ``error`` is transient. Configuration mistakes (a malformed API version or pixel
id) do raise ``ValueError`` — they are bugs to fix, not answers to retry.

The access token travels in the JSON body (with ``appsecret_proof``), not in the URL, so it never appears in
access logs, proxies or exception messages (which carry the URL); nothing here logs it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import requests

from hub.delivery.errors import ErrorClass, classify

# Checklist 1: always a pinned version such as v26.0; never unversioned.
_API_VERSION = re.compile(r"v\d+\.\d+").fullmatch
# Pixel (dataset) ids are numeric; refusing anything else also rules out path tricks in the URL.
_PIXEL_ID = re.compile(r"\d{1,32}").fullmatch
USER_AGENT = "hub-capi/0.1"


@dataclass(frozen=True)
class CapiResponse:
    """One request's outcome. ``error`` is None only for a complete success (checklist 25)."""

    status: int | None
    body: Mapping[str, Any] | None
    headers: Mapping[str, str]
    duration_ms: int
    events_received: int | None
    fbtrace_id: str | None
    error: ErrorClass | None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def messages(self) -> list[str]:
        """Meta's ``messages`` from a success envelope (record them, checklist 25)."""
        raw = self.body.get("messages") if self.body else None
        return [m for m in raw if isinstance(m, str)] if isinstance(raw, list) else []


def appsecret_proof(access_token: str, app_secret: str) -> str:
    """Meta: hex HMAC-SHA256 of the access token keyed with the app secret (§1, checklist 2)."""
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


class CapiClient:
    """Sends request bodies built by ``payload.build_request_body``; one instance per process is enough."""

    def __init__(
        self,
        graph_url: str,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (3.05, 30),
    ) -> None:
        if not re.match(r"https?://", graph_url):
            raise ValueError("graph_url must be an http(s) URL such as https://graph.facebook.com")
        self.graph_url = graph_url.rstrip("/")
        self.session = session if session is not None else requests.Session()
        self._owns_session = session is None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"CapiClient({self.graph_url!r})"

    def __enter__(self) -> CapiClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def events_url(self, pixel_id: str, api_version: str) -> str:
        if not _API_VERSION(api_version):
            raise ValueError(f"api_version must look like v26.0, got {api_version!r}")
        if not _PIXEL_ID(pixel_id):
            raise ValueError("pixel_id must be the numeric dataset id")
        return f"{self.graph_url}/{api_version}/{pixel_id}/events"

    def send(
        self,
        pixel_id: str,
        access_token: str,
        api_version: str,
        body: Mapping[str, Any],
        app_secret: str | None = None,
    ) -> CapiResponse:
        url = self.events_url(pixel_id, api_version)
        if not access_token:
            raise ValueError("access_token is required")
        data = body.get("data")
        events_sent = len(data) if isinstance(data, list) else None
        wire: dict[str, Any] = dict(body)
        wire["access_token"] = access_token
        if app_secret:
            wire["appsecret_proof"] = appsecret_proof(access_token, app_secret)
        payload = json.dumps(wire, separators=(",", ":"), ensure_ascii=False, check_circular=False).encode()

        started = time.perf_counter()
        try:
            response = self.session.post(
                url,
                data=payload,
                headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            return CapiResponse(
                status=None,
                body=None,
                headers={},
                duration_ms=_elapsed_ms(started),
                events_received=None,
                fbtrace_id=None,
                error=classify(None, None, exc),
            )
        duration_ms = _elapsed_ms(started)
        headers = dict(response.headers)

        try:
            parsed = response.json()
        except ValueError as exc:  # not JSON: a proxy page, a truncated answer…
            return CapiResponse(
                status=response.status_code,
                body=None,
                headers=headers,
                duration_ms=duration_ms,
                events_received=None,
                fbtrace_id=_header_trace(headers),
                error=classify(response.status_code, None, exc, headers=headers),
            )
        body_map = parsed if isinstance(parsed, dict) else None
        if body_map is None:
            error = classify(
                response.status_code, None, ValueError("answer is JSON but not an object"), headers=headers
            )
        else:
            error = classify(response.status_code, body_map, headers=headers, events_sent=events_sent)
        received = body_map.get("events_received") if body_map else None
        return CapiResponse(
            status=response.status_code,
            body=body_map,
            headers=headers,
            duration_ms=duration_ms,
            events_received=received if isinstance(received, int) and not isinstance(received, bool) else None,
            fbtrace_id=_body_trace(body_map) or _header_trace(headers),
            error=error,
        )


def _body_trace(body: Mapping[str, Any] | None) -> str | None:
    if not body:
        return None
    trace = body.get("fbtrace_id")
    if not trace and isinstance(body.get("error"), Mapping):
        trace = body["error"].get("fbtrace_id")
    return trace if isinstance(trace, str) and trace else None


def _header_trace(headers: Mapping[str, str]) -> str | None:
    for key, value in headers.items():
        if key.lower() == "x-fb-trace-id" and value:
            return value
    return None


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
