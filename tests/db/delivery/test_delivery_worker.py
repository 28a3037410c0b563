"""Workers as processes and threads: kill -9 mid-send loses nothing; two workers never send one event twice."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from hub.app import create_app
from hub.config import Settings
from hub.db import session_scope
from hub.delivery import dispatch
from hub.delivery.client import CapiClient, CapiResponse
from hub.delivery.destinations import paused_destinations, resume_destination
from hub.delivery.dispatch import RunSummary, delivery_context, run_once
from hub.delivery.worker import Worker
from hub.sandbox.app import sandbox_recorder
from tests.support.databases import TestDatabase
from tests.support.delivery import Sandbox, add_destination, add_events, add_mapping, events_by_id, running_sandbox


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as running:
        yield running


def make_app(fresh_database: TestDatabase, settings: Settings, sandbox: Sandbox, **extra: object) -> Flask:
    cfg = settings.with_overrides(database_url=fresh_database.url, graph_url=sandbox.url, extra=extra)
    return create_app(cfg)


def seed(app: Flask, count: int) -> list[str]:
    cfg = app.extensions["hub.settings"]
    with session_scope(app.extensions["hub.sessionmaker"]) as session:
        add_destination(session, cfg)
        add_mapping(session)
        return add_events(session, cfg, count)


def worker_env(settings: Settings, database_url: str, sandbox: Sandbox, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(
        {
            "HUB_ENV": "test",
            "HUB_DATA_DIR": str(tmp_path / "hub-data"),
            "HUB_DATABASE_URL": database_url,
            "HUB_ENCRYPTION_KEY": settings.encryption_keys[0],
            "HUB_SECRET_KEY": settings.secret_key,
            "HUB_GRAPH_URL": sandbox.url,
            "HUB_DELIVERY_BATCH_SIZE": "100",
            "HUB_DELIVERY_LEASE_SECONDS": "4",
            "HUB_WORKER_POLL_SECONDS": "0.1",
        }
    )
    return env


def test_kill_9_mid_send_loses_nothing_and_counts_resends(
    fresh_database: TestDatabase, settings: Settings, sandbox: Sandbox, tmp_path: Path
) -> None:
    app = make_app(fresh_database, settings, sandbox)
    try:
        ids = seed(app, 300)
        # Slow answers (1.5 s, inside the 2 s read timeout a 4 s lease allows) so the kill lands mid-request.
        sandbox.fault("slow", count=3, delay_ms=1500)
        env = worker_env(settings, fresh_database.url, sandbox, tmp_path)
        hub = str(Path(sys.executable).with_name("hub"))
        proc = subprocess.Popen([hub, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        recorder = sandbox_recorder(sandbox.app)
        deadline = time.monotonic() + 60
        while recorder.snapshot(limit=0)["requests_received"] < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the worker never reached the second request"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # the second request is in flight: its outcome is unknown to hub
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        time.sleep(4.5)  # the dead worker's leases run out
        again = subprocess.run([hub, "worker", "--once"], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr

        received = collections.Counter(sandbox.received_ids())
        with session_scope(app.extensions["hub.sessionmaker"]) as session:
            events = events_by_id(session, ids)
            assert {e.status for e in events.values()} == {"sent"}, "every event ends sent: none lost"
            for event_id, event in events.items():
                assert received[event_id] == 1 + event.unknown_outcome_resends, event_id
            resent = [e for e in events.values() if e.unknown_outcome_resends]
        assert resent, "the kill landed mid-send, so some events had an unknown outcome and were resent"
        assert all(received[e.event_id] == 2 for e in resent)
        assert set(received) == set(ids)
    finally:
        app.extensions["hub.engine"].dispose()


def test_two_workers_never_send_the_same_event(
    fresh_database: TestDatabase, settings: Settings, sandbox: Sandbox
) -> None:
    apps = [make_app(fresh_database, settings, sandbox, delivery_batch_size=50) for _ in range(2)]
    try:
        ids = seed(apps[0], 2000)
        summaries: list[RunSummary] = []
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def work(app: Flask) -> None:
            try:
                context = delivery_context(app)
                start.wait()
                summaries.append(run_once(context))
                context.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(app,)) for app in apps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert not errors, errors
        received = collections.Counter(sandbox.received_ids())
        assert set(received) == set(ids)
        assert max(received.values()) == 1, "an event was sent twice"
        assert sum(s.sent for s in summaries) == 2000
        assert sum(s.unknown_outcome_resends for s in summaries) == 0
        if fresh_database.backend == "postgresql":
            assert all(s.sent > 0 for s in summaries), "both workers took part (SKIP LOCKED)"
        with session_scope(apps[0].extensions["hub.sessionmaker"]) as session:
            assert {e.status for e in events_by_id(session, ids).values()} == {"sent"}
    finally:
        for app in apps:
            app.extensions["hub.engine"].dispose()


def test_worker_loop_stops_cleanly(fresh_database: TestDatabase, settings: Settings, sandbox: Sandbox) -> None:
    app = make_app(fresh_database, settings, sandbox, worker_poll_seconds=0.05)
    try:
        ids = seed(app, 10)
        worker = Worker(delivery_context(app))
        thread = threading.Thread(target=worker.run)
        thread.start()
        deadline = time.monotonic() + 30
        while len(sandbox.received_ids()) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.stop()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert sorted(sandbox.received_ids()) == sorted(ids)
        assert worker.total.sent == 10
    finally:
        app.extensions["hub.engine"].dispose()


class SlowClient(CapiClient):
    """Meta taking its time: the next batch is claimed (on PostgreSQL) while this request is in flight."""

    def send(self, *args: Any, **kwargs: Any) -> CapiResponse:
        time.sleep(0.3)
        return super().send(*args, **kwargs)


def decisions_counted(app: Flask) -> float:
    registry = app.extensions["hub.metrics"].registry
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "hub_decisions"
        for sample in metric.samples
        if sample.name == "hub_decisions_total"
    )


def test_a_pause_answered_to_one_batch_holds_the_next_batch_already_claimed(
    fresh_database: TestDatabase, settings: Settings, sandbox: Sandbox
) -> None:
    app = make_app(fresh_database, settings, sandbox, delivery_batch_size=2)
    try:
        ids = seed(app, 6)
        sandbox.fault("expired_token")
        context = delivery_context(app, client=SlowClient(sandbox.url))
        summary = run_once(context)
        context.close()
        assert (summary.claimed, summary.held, summary.sent, summary.requests) == (6, 6, 0, 1)
        assert sandbox.received_ids() == [], "nothing reached Meta after the token was refused"
        with session_scope(app.extensions["hub.sessionmaker"]) as session:
            events = events_by_id(session, ids).values()
            assert {(e.status, e.attempts, e.lease_owner, e.unknown_outcome_resends) for e in events} == {
                ("pending", 0, None, 0)
            }
            [paused] = paused_destinations(session)
            resume_destination(session, paused.id, actor="test")
        assert run_once(app).sent == 6
        assert collections.Counter(sandbox.received_ids()) == dict.fromkeys(ids, 1)
    finally:
        app.extensions["hub.engine"].dispose()


def test_a_prepared_claim_waiting_too_long_is_taken_again_and_counted_once(
    fresh_database: TestDatabase, settings: Settings, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(fresh_database, settings, sandbox, delivery_batch_size=2)
    try:
        ids = seed(app, 6)
        monkeypatch.setattr(dispatch, "PREPARED_WAIT", 0.05)
        claims = []
        claim = dispatch._claim
        monkeypatch.setattr(dispatch, "_claim", lambda *a, **k: claims.append(1) or claim(*a, **k))
        context = delivery_context(app, client=SlowClient(sandbox.url))
        summary = run_once(context)
        context.close()
        assert (summary.claimed, summary.sent, summary.unknown_outcome_resends) == (6, 6, 0)
        assert collections.Counter(sandbox.received_ids()) == dict.fromkeys(ids, 1)
        assert decisions_counted(app) == 6, "a claim rolled back and taken again is counted once"
        if fresh_database.backend == "postgresql":
            assert len(claims) > 4, "claims prepared during a slow request were rolled back and taken again"
        with session_scope(app.extensions["hub.sessionmaker"]) as session:
            assert {e.status for e in events_by_id(session, ids).values()} == {"sent"}
    finally:
        app.extensions["hub.engine"].dispose()
