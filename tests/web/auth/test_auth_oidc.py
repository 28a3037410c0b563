"""Admin login against a real OIDC provider process (oidc-provider-mock), through Authlib's discovery."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from hub.auth.services import add_user
from tests.conftest import make_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    port = free_port()
    provider = Path(sys.executable).with_name("oidc-provider-mock")
    proc = subprocess.Popen([str(provider), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/.well-known/openid-configuration", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("the OIDC provider did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def oidc_app(issuer: str, tmp_path: Path, database, encryption_key: str, session_factory) -> Iterator[Flask]:
    from hub.app import create_app

    settings = make_settings(
        tmp_path,
        database.url,
        encryption_key,
        oidc_issuer=issuer,
        oidc_client_id="hub",
        oidc_client_secret="hub-secret",
        admin_emails=("boss@example.com",),
    )
    app = create_app(settings)
    engine = app.extensions["hub.engine"]
    app.extensions["hub.sessionmaker"] = session_factory
    try:
        yield app
    finally:
        engine.dispose()


def sign_in(client: FlaskClient, subject: str, claims: dict[str, object] | None = None, issuer: str = "") -> object:
    """Walk the authorization-code flow like a browser would: hub → provider's form → hub's callback."""
    start = client.get("/login/oidc?next=/")
    assert start.status_code == 302
    authorize_url = start.headers["Location"]
    provider = f"{urlsplit(authorize_url).scheme}://{urlsplit(authorize_url).netloc}"
    if claims is not None:
        requests.put(f"{provider}/users/{subject}", json=claims, timeout=5).raise_for_status()
    consent = requests.post(authorize_url, data={"sub": subject}, allow_redirects=False, timeout=5)
    assert consent.status_code == 302, consent.text
    callback = urlsplit(consent.headers["Location"])
    assert callback.path == "/login/oidc/callback"
    assert "code" in parse_qs(callback.query)
    return client.get(f"{callback.path}?{callback.query}")


def test_admin_email_becomes_admin_on_first_login(oidc_app: Flask) -> None:
    client = oidc_app.test_client()
    response = sign_in(client, "boss-sub", {"email": "boss@example.com", "email_verified": True})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert b"boss@example.com \xc2\xb7 admin" in page.data
    with client.session_transaction() as s:
        assert set(s.keys()) <= {"user_id", "csrf_token"}, "no tokens or userinfo in the session cookie"


def test_pre_authorised_user_gets_their_role(oidc_app: Flask, db_session) -> None:
    add_user(db_session, "viewer@example.com", "viewer")
    client = oidc_app.test_client()
    sign_in(client, "viewer-sub", {"email": "Viewer@Example.com"})
    assert b"viewer@example.com \xc2\xb7 viewer" in client.get("/").data


def test_unknown_person_is_refused(oidc_app: Flask) -> None:
    client = oidc_app.test_client()
    response = sign_in(client, "stranger", {"email": "stranger@example.com"})
    assert response.status_code == 403
    assert b"not authorised" in response.data
    assert client.get("/").status_code == 302


def test_unverified_email_cannot_claim_an_account(oidc_app: Flask, db_session) -> None:
    add_user(db_session, "editor@example.com", "editor")
    client = oidc_app.test_client()
    response = sign_in(client, "impostor", {"email": "editor@example.com", "email_verified": False})
    assert response.status_code == 403
    assert client.get("/").status_code == 302


def test_callback_without_a_started_login_is_refused(oidc_app: Flask) -> None:
    client = oidc_app.test_client()
    response = client.get("/login/oidc/callback?code=forged&state=forged")
    assert response.status_code == 302
    assert client.get("/").status_code == 302
