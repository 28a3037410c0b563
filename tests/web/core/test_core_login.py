"""Admin pages need a signed-in user; the embedded default signs in with a one-time link."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from hub.auth.services import add_user
from hub.auth.views import login_links


def test_admin_pages_redirect_to_login(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_one_time_link_signs_in_once(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        token = login_links().issue()
    response = client.get(f"/login/link/{token}?next=/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert b"admin@localhost" in page.data
    assert b"Dead letters" in page.data

    other = app.test_client()
    again = other.get(f"/login/link/{token}")
    assert again.status_code == 302
    assert other.get("/").status_code == 302, "a used link must not sign anyone in"


def test_login_link_refuses_open_redirects(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        token = login_links().issue()
    response = client.get(f"/login/link/{token}?next=//evil.example/")
    assert response.headers["Location"] == "/"


def test_unknown_link_is_refused(client: FlaskClient) -> None:
    client.get("/login/link/forged")
    assert client.get("/").status_code == 302


def test_disabled_user_is_signed_out(app: Flask, client: FlaskClient, db_session) -> None:
    user = add_user(db_session, "viewer@example.com", "viewer")
    db_session.flush()
    with client.session_transaction() as s:
        s["user_id"] = user.id
    assert client.get("/").status_code == 200
    user.disabled = True
    db_session.flush()
    assert client.get("/").status_code == 302


def test_logout_needs_csrf_token(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        token = login_links().issue()
    client.get(f"/login/link/{token}")
    assert client.post("/logout").status_code == 400
    assert client.get("/").status_code == 200


def test_signed_in_pages_warn_about_paused_destinations(app: Flask, client: FlaskClient, db_session) -> None:
    from hub.db import utcnow
    from hub.delivery.models import Destination

    with app.app_context():
        token = login_links().issue()
    client.get(f"/login/link/{token}")
    assert b"is paused" not in client.get("/").data
    db_session.add(
        Destination(
            name="shop",
            pixel_id="123456789",
            status="paused",
            paused_reason="Meta refused the access token (code 190)",
            paused_at=utcnow(),
        )
    )
    db_session.flush()
    page = client.get("/").get_data(as_text=True)
    assert "Delivery to <strong>shop</strong>" in page
    assert "code 190" in page
    assert "hub destination set-token shop" in page
