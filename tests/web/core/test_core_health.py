from __future__ import annotations

from flask.testing import FlaskClient

from hub import migrate
from tests.support.databases import TestDatabase


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_when_database_is_migrated(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["status"] == "ready"


def test_readyz_says_when_migrations_are_behind(fresh_database: TestDatabase, settings, encryption_key) -> None:
    from hub.app import create_app
    from tests.conftest import make_settings

    migrate.downgrade(fresh_database.url, "-1", engine=fresh_database.engine)
    app = create_app(make_settings(settings.data_dir, fresh_database.url, encryption_key))
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["hub.engine"].dispose()
    assert response.status_code == 503
    assert "hub db upgrade" in response.json["migrations"]


def test_readyz_when_database_is_unreachable(tmp_path, encryption_key) -> None:
    from hub.app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path, "postgresql+psycopg://nobody@127.0.0.1:1/none", encryption_key))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["database"] == "unreachable"


def test_metrics_exposes_queue_gauges(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert 'hub_events{status="pending"} 0.0' in body
    assert "hub_queue_depth 0.0" in body
    assert "hub_oldest_due_event_age_seconds" in body
    assert "hub_destinations_paused 0.0" in body


def test_unknown_api_path_is_json(client: FlaskClient) -> None:
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_htmx_is_served_locally(client: FlaskClient) -> None:
    response = client.get("/static/vendor/htmx-2.0.11.min.js")
    try:
        assert response.status_code == 200
        assert b"htmx" in response.data[:2000]
    finally:
        response.close()


def test_client_address_behind_a_trusted_proxy(settings, session_factory) -> None:
    from flask import request

    from hub.app import create_app

    app = create_app(settings.with_overrides(trusted_proxies=1))
    app.extensions["hub.sessionmaker"] = session_factory

    @app.get("/_test/remote")
    def remote() -> str:
        return request.remote_addr or ""

    try:
        client = app.test_client()
        seen = client.get("/_test/remote", headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"})
        assert seen.get_data(as_text=True) == "203.0.113.9", "only the last hop, added by our proxy, is trusted"
    finally:
        app.extensions["hub.engine"].dispose()


def test_forwarded_for_is_ignored_without_trusted_proxies(app, client) -> None:
    from flask import request

    @app.get("/_test/remote")
    def remote() -> str:
        return request.remote_addr or ""

    seen = client.get("/_test/remote", headers={"X-Forwarded-For": "198.51.100.7"})
    assert seen.get_data(as_text=True) == "127.0.0.1"


def test_metrics_count_paused_destinations(fresh_database: TestDatabase, settings, encryption_key) -> None:
    from sqlalchemy.orm import Session

    from hub.app import create_app
    from hub.db import utcnow
    from hub.delivery.models import Destination
    from tests.conftest import make_settings

    with Session(fresh_database.engine) as session:
        session.add(
            Destination(name="shop", pixel_id="1", status="paused", paused_reason="code 190", paused_at=utcnow())
        )
        session.add(Destination(name="eu", pixel_id="2"))
        session.commit()
    app = create_app(make_settings(settings.data_dir, fresh_database.url, encryption_key))
    try:
        body = app.test_client().get("/metrics").get_data(as_text=True)
    finally:
        app.extensions["hub.engine"].dispose()
    assert "hub_destinations_paused 1.0" in body
