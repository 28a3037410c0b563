"""`hub serve` as a user runs it: a real process on a real port, on the embedded SQLite default."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, proc: subprocess.Popen[str], base: str, lines: list[str]) -> None:
        self.proc, self.base, self.lines = proc, base, lines


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["HUB_DATA_DIR"] = str(tmp_path / "hub-data")
    hub = Path(sys.executable).with_name("hub")
    proc = subprocess.Popen(
        [str(hub), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    # Read the output on a thread: the test waits for particular lines without blocking on a quiet pipe.
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "hub serve exited: " + (proc.stdout.read() if proc.stdout else "")
            try:
                if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            pytest.fail("hub serve did not become ready within 60 s")
        yield Served(proc, base, lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_serve_applies_migrations_and_becomes_ready(served: Served, tmp_path: Path) -> None:
    ready = requests.get(f"{served.base}/readyz", timeout=5).json()
    assert ready == {"status": "ready", "database": "ok", "migrations": "current"}
    assert (tmp_path / "hub-data" / "hub.db").exists()
    assert (tmp_path / "hub-data" / "encryption_key").exists()
    metrics = requests.get(f"{served.base}/metrics", timeout=5).text
    assert "hub_queue_depth" in metrics


def test_serve_prints_a_working_one_time_login_link(served: Served) -> None:
    deadline = time.monotonic() + 10
    match = None
    while match is None and time.monotonic() < deadline:
        match = re.search(r"(http://\S+/login/link/\S+)", "".join(served.lines))
        time.sleep(0.05)
    assert match, "".join(served.lines)
    link = match.group(1).replace("localhost", "127.0.0.1")
    browser = requests.Session()
    assert browser.get(f"{served.base}/", timeout=5).url.endswith("/login?next=/")
    page = browser.get(link, timeout=5)
    assert page.status_code == 200
    assert "admin@localhost" in page.text
    again = requests.Session().get(link, timeout=5)
    assert "/login" in again.url, "the link must work only once"
