"""The whole product path, as a user runs it: `hub sandbox` standing in for Meta, `hub serve` with its in-process
scheduler, configuration through the API and CLI, events and consent in, and what reaches "Meta" checked."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.e2e.test_e2e_serve import free_port

PIXEL = "123456789"
TOKEN = "sandbox-token"  # the sandbox's own test credential


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc, lines


def _wait_ready(url: str, proc: subprocess.Popen[str], lines: list[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "".join(lines)
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.ConnectionError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not come up:\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@dataclass
class Stack:
    hub: str
    sandbox: str
    api: requests.Session


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    bin_dir = Path(sys.executable).parent
    sandbox_port, hub_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(
        HUB_DATA_DIR=str(tmp_path / "hub-data"),
        HUB_GRAPH_URL=f"http://127.0.0.1:{sandbox_port}",
        HUB_CONSENT_GRACE_SECONDS="0",
        HUB_WORKER_POLL_SECONDS="0.2",
    )
    hub = str(bin_dir / "hub")
    sandbox, sandbox_lines = _start([hub, "sandbox", "--port", str(sandbox_port), "--token", f"{PIXEL}={TOKEN}"], env)
    server = None
    try:
        _wait_ready(f"http://127.0.0.1:{sandbox_port}/_sandbox/events", sandbox, sandbox_lines)
        subprocess.run([hub, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
        key = subprocess.run(
            [hub, "api-key", "create", "--name", "e2e", "--scope", "admin"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()[0]
        subprocess.run(
            [hub, "destination", "add", "shop", "--pixel-id", PIXEL, "--default"],
            env=env,
            input=TOKEN + "\n",
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        server, server_lines = _start([hub, "serve", "--port", str(hub_port)], env)
        _wait_ready(f"http://127.0.0.1:{hub_port}/readyz", server, server_lines)
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {key}"
        yield Stack(hub=f"http://127.0.0.1:{hub_port}", sandbox=f"http://127.0.0.1:{sandbox_port}", api=api)
    finally:
        if server is not None:
            _stop(server)
        _stop(sandbox)


def _final_status(stack: Stack, event_id: str) -> dict:
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        doc = stack.api.get(f"{stack.hub}/api/v1/events/{event_id}", timeout=5).json()
        if doc["status"] in ("sent", "blocked", "dead"):
            return doc
        time.sleep(0.2)
    pytest.fail(f"event {event_id} never left {doc['status']}: {doc}")


def _event(event_id: str, region: str, email: str, phone: str) -> dict:
    return {
        "event_id": event_id,
        "event": "order_completed",
        "occurred_at": int(time.time()) - 60,
        "action_source": "website",
        "source_url": "https://shop.example/thanks?fbclid=IwAR0abcDEF",
        "user": {
            "email": email,
            "phone": phone,
            "country": "US" if region.startswith("US") else region,
            "ip_address": "203.0.113.7",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        },
        "properties": {"total": 59.9, "currency": "usd", "order_id": event_id, "items": [{"sku": "SKU-1"}]},
        "context": {"region": region},
    }


def test_events_reach_meta_only_with_consent_and_correctly_hashed(stack: Stack) -> None:
    config = stack.api.get(f"{stack.hub}/api/v1/config", timeout=5).json()
    config["mappings"] = [
        {
            "source_event": "order_completed",
            "event_name": "Purchase",
            "action_source": "website",
            "custom_data": {
                "value": "properties.total",
                "currency": "properties.currency",
                "order_id": "properties.order_id",
                "content_ids": "properties.items[].sku",
            },
            "enabled": True,
            "destination": None,
        }
    ]
    applied = stack.api.put(f"{stack.hub}/api/v1/config", json=config, timeout=10)
    assert applied.status_code == 200, applied.text

    # Germany: opt-in. One person consents first through the backend API; the other never does.
    consent = stack.api.post(
        f"{stack.hub}/api/v1/consent",
        json={
            "user": {"email": "Greta@Example.de"},
            "purposes": {"ad_user_data": "granted"},
            "collected_at": int(time.time()) - 3600,
            "context": {"region": "DE"},
        },
        timeout=5,
    )
    assert consent.status_code == 201, consent.text

    batch = [
        # Distinct phones: a shared phone would (rightly) resolve the three buyers to one person.
        _event("ord-us-1", "US-CA", " Ann@Example.com ", "(650) 555-1212"),
        _event("ord-de-consented", "DE", "greta@example.de", "+49 30 1234567"),
        _event("ord-de-silent", "DE", "hans@example.de", "+49 30 7654321"),
    ]
    answer = stack.api.post(f"{stack.hub}/api/v1/events", json={"events": batch}, timeout=10)
    assert answer.status_code == 202, answer.text
    assert [r["status"] for r in answer.json()["results"]] == ["accepted"] * 3

    us, de_ok, de_silent = (_final_status(stack, e["event_id"]) for e in batch)
    assert us["status"] == "sent", us
    assert de_ok["status"] == "sent", de_ok
    assert de_silent["status"] == "blocked", de_silent
    assert de_silent["decision"]["reason_code"] == "no_consent"
    assert "ad_user_data" in de_silent["decision"]["explanation"]

    received = requests.get(f"{stack.sandbox}/_sandbox/events", timeout=5).json()
    events = {e["event"]["event_id"]: e["event"] for e in received["events"]}
    assert set(events) == {"ord-us-1", "ord-de-consented"}, "nothing may reach Meta without consent"

    sent = events["ord-us-1"]
    assert sent["event_name"] == "Purchase"
    assert sent["action_source"] == "website"
    assert sent["event_source_url"].startswith("https://shop.example/thanks")
    assert isinstance(sent["event_time"], int)
    assert sent["user_data"]["em"] in (
        hashlib.sha256(b"ann@example.com").hexdigest(),
        [hashlib.sha256(b"ann@example.com").hexdigest()],
    )
    phone_hash = hashlib.sha256(b"16505551212").hexdigest()
    assert sent["user_data"]["ph"] in (phone_hash, [phone_hash])
    assert sent["user_data"]["client_ip_address"] == "203.0.113.7"
    assert sent["user_data"]["fbc"].endswith(".IwAR0abcDEF")
    assert sent["custom_data"]["value"] == 59.9
    assert sent["custom_data"]["currency"] == "USD"
    assert sent["custom_data"]["content_ids"] == ["SKU-1"]
    assert sent["data_processing_options"] == []

    # Sending the same batch again changes nothing and sends nothing twice.
    again = stack.api.post(f"{stack.hub}/api/v1/events", json={"events": batch}, timeout=10)
    assert [r["status"] for r in again.json()["results"]] == ["duplicate"] * 3
    time.sleep(1)
    received = requests.get(f"{stack.sandbox}/_sandbox/events", timeout=5).json()
    assert len(received["events"]) == 2
