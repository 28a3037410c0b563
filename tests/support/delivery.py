"""Helpers for delivery tests: a real-HTTP CAPI sandbox, a destination, a mapping and sendable events."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from hub.config import Settings
from hub.db import utcnow
from hub.delivery.destinations import create_destination
from hub.encryption import FieldEncryptor
from hub.events.models import Event
from hub.mappings.services import create_mapping
from hub.profiles.normalize import sha256_hex
from hub.sandbox.app import create_sandbox_app, sandbox_recorder

PIXEL = "1234567890"
TOKEN = "EAAB-test-token"
UA = "Mozilla/5.0 (X11; Linux x86_64) Test"


@dataclass
class Sandbox:
    url: str
    app: Flask

    def fault(self, mode: str, count: int = 1, **extra: Any) -> None:
        answer = requests.post(f"{self.url}/_sandbox/faults", json={"mode": mode, "count": count, **extra}, timeout=5)
        assert answer.status_code == 201, answer.text

    def received_ids(self) -> list[str]:
        snapshot = sandbox_recorder(self.app).snapshot()
        return [record["event"]["event_id"] for record in snapshot["events"]]

    def received(self) -> list[dict[str, Any]]:
        return [record["event"] for record in sandbox_recorder(self.app).snapshot()["events"]]

    def requests(self) -> list[dict[str, Any]]:
        return sandbox_recorder(self.app).requests()


@contextmanager
def running_sandbox(config: dict[str, Any] | None = None) -> Iterator[Sandbox]:
    app = create_sandbox_app(config or {"tokens": {PIXEL: TOKEN}})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Sandbox(f"http://127.0.0.1:{server.server_port}", app)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def add_destination(session: Session, settings: Settings, **fields: Any) -> int:
    data: dict[str, Any] = {"name": f"pixel-{uuid.uuid4().hex[:6]}", "pixel_id": PIXEL, "access_token": TOKEN}
    data.update(fields)
    destination = create_destination(
        session, FieldEncryptor(settings.encryption_keys), data, settings=settings, actor="test"
    )
    return destination.id


def add_mapping(session: Session, source_event: str = "order_completed", **fields: Any) -> int:
    data: dict[str, Any] = {
        "source_event": source_event,
        "event_name": "Purchase",
        "action_source": "website",
        "custom_data": {"value": "properties.total", "currency": "properties.currency"},
    }
    data.update(fields)
    return create_mapping(session, data, actor="test").id


def user_data(encryptor: FieldEncryptor, *, email: str | None = "ann@example.com", ip: str = "203.0.113.7") -> str:
    hashes = {"em": sha256_hex(email)} if email else {}
    return encryptor.encrypt_json({"hashes": hashes, "browser": {"client_ip_address": ip, "client_user_agent": UA}})


def add_events(
    session: Session,
    settings: Settings,
    count: int,
    *,
    now: datetime | None = None,
    region: str = "US",
    prefix: str = "ev",
    **fields: Any,
) -> list[str]:
    """``count`` website Purchase events in an opt-out region (sent unless an opt-out is on record), past the
    consent grace period."""
    now = now or utcnow()
    encryptor = FieldEncryptor(settings.encryption_keys)
    token = user_data(encryptor)
    ids = []
    for i in range(count):
        event_id = f"{prefix}-{i}-{uuid.uuid4().hex[:6]}"
        values: dict[str, Any] = {
            "event_id": event_id,
            "source_event": "order_completed",
            "occurred_at": now - timedelta(minutes=30),
            "received_at": now - timedelta(minutes=29),
            "action_source": "website",
            "source_url": "https://shop.example/thanks",
            "user_data_encrypted": token,
            "region": region,
            "suppressed": False,
            "properties": {"total": 10.5 + i, "currency": "USD"},
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now - timedelta(minutes=27),
            "unknown_outcome_resends": 0,
        }
        values.update(fields)
        session.add(Event(**values))
        ids.append(event_id)
    session.flush()
    return ids


def events_by_id(session: Session, event_ids: list[str]) -> dict[str, Event]:
    session.expire_all()
    rows = session.scalars(select(Event).where(Event.event_id.in_(event_ids)))
    return {row.event_id: row for row in rows}
