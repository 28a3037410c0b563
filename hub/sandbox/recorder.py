"""In-memory, thread-safe record of what the sandbox received, and its queue of injected faults.

Bounded: only the most recent events/rejections/requests are kept (deques with maxlen), so a long benchmark run
cannot exhaust memory. Access tokens are never recorded.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FAULT_MODES = ("http_500", "rate_limit", "slow", "expired_token", "drop_connection")


@dataclass(frozen=True)
class Fault:
    mode: str
    delay_ms: int = 0
    regain_minutes: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "delay_ms": self.delay_ms, "regain_minutes": self.regain_minutes}


class SandboxRecorder:
    def __init__(self, max_events: int = 100_000, max_rejections: int = 1_000, max_requests: int = 10_000):
        self._lock = threading.Lock()
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._rejections: deque[dict[str, Any]] = deque(maxlen=max_rejections)
        self._requests: deque[dict[str, Any]] = deque(maxlen=max_requests)
        self._faults: deque[Fault] = deque()
        self._request_count = 0
        self._events_total = 0

    # -- requests -------------------------------------------------------------------------------------------
    def next_request(self) -> tuple[int, Fault | None]:
        """Number this request (1-based) and take the next queued fault, atomically."""
        with self._lock:
            self._request_count += 1
            fault = self._faults.popleft() if self._faults else None
            return self._request_count, fault

    def record_accepted(
        self,
        request_index: int,
        pixel_id: str,
        events: list[dict[str, Any]],
        test_event_code: str | None,
        partner_agent: str | None,
        fbtrace_id: str,
    ) -> None:
        received_at = _now_iso()
        records = [
            {
                "pixel_id": pixel_id,
                "request_index": request_index,
                "event_index": i,
                "received_at": received_at,
                "test_event_code": test_event_code,
                "partner_agent": partner_agent,
                "event": event,
            }
            for i, event in enumerate(events)
        ]
        with self._lock:
            self._events.extend(records)
            self._events_total += len(records)
            self._requests.append(
                {
                    "request_index": request_index,
                    "pixel_id": pixel_id,
                    "received_at": received_at,
                    "status": 200,
                    "outcome": "accepted",
                    "events": len(events),
                    "fbtrace_id": fbtrace_id,
                }
            )

    def record_rejected(
        self, request_index: int, pixel_id: str, status: int, error: dict[str, Any], event_count: int | None
    ) -> None:
        received_at = _now_iso()
        error_data = error.get("error_data") or {}
        rejection = {
            "request_index": request_index,
            "pixel_id": pixel_id,
            "received_at": received_at,
            "status": status,
            "code": error.get("code"),
            "subcode": error.get("error_subcode"),
            "rule": error_data.get("sandbox_rule"),
            "event_index": error_data.get("event_index"),
            "message": error.get("error_user_msg") or error.get("message"),
            "fbtrace_id": error.get("fbtrace_id"),
        }
        with self._lock:
            self._rejections.append(rejection)
            self._requests.append(
                {
                    "request_index": request_index,
                    "pixel_id": pixel_id,
                    "received_at": received_at,
                    "status": status,
                    "outcome": "rejected",
                    "events": event_count,
                    "fbtrace_id": error.get("fbtrace_id"),
                }
            )

    def record_dropped(self, request_index: int, pixel_id: str) -> None:
        with self._lock:
            self._requests.append(
                {
                    "request_index": request_index,
                    "pixel_id": pixel_id,
                    "received_at": _now_iso(),
                    "status": None,
                    "outcome": "dropped",
                    "events": None,
                    "fbtrace_id": None,
                }
            )

    # -- reading --------------------------------------------------------------------------------------------
    def snapshot(self, pixel_id: str | None = None, limit: int | None = None) -> dict[str, Any]:
        with self._lock:
            events = list(self._events)
            rejections = list(self._rejections)
            request_count = self._request_count
            total = self._events_total
        if pixel_id is not None:
            events = [e for e in events if e["pixel_id"] == pixel_id]
            rejections = [r for r in rejections if r["pixel_id"] == pixel_id]
        if limit is not None:
            events = events[-limit:] if limit else []
            rejections = rejections[-limit:] if limit else []
        return {
            "events": events,
            "rejections": rejections,
            "requests_received": request_count,
            "events_received_total": total,
        }

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._events.clear()
            self._rejections.clear()
            self._requests.clear()
            self._request_count = 0
            self._events_total = 0

    # -- faults ---------------------------------------------------------------------------------------------
    def add_faults(self, fault: Fault, count: int) -> list[dict[str, Any]]:
        with self._lock:
            self._faults.extend([fault] * count)
            return [f.as_dict() for f in self._faults]

    def pending_faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_dict() for f in self._faults]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
