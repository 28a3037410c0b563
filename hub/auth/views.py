"""Admin sign-in: a one-time local link for the embedded default (OIDC login builds on the same session)."""

from __future__ import annotations

from authlib.integrations.base_client import OAuthError
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from hub.auth.links import LoginLinks
from hub.auth.oidc import SignInRefused, oidc_client, user_for_claims
from hub.auth.services import local_admin
from hub.web.database import get_session

bp = Blueprint("auth", __name__)


def login_links() -> LoginLinks:
    return current_app.extensions.setdefault("hub.login_links", LoginLinks())


def _safe_next(target: str | None) -> str:
    # Only same-site paths: an absolute or protocol-relative URL here would be an open redirect.
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("home.index")


@bp.get("/login")
def login() -> str:
    settings = current_app.extensions["hub.settings"]
    return render_template("auth/login.html", oidc=settings.oidc_configured, next=request.args.get("next"))


@bp.get("/login/link/<token>")
def login_link(token: str) -> Response:
    if current_app.extensions["hub.settings"].is_production:
        abort(404)
    if not login_links().redeem(token):
        flash("That login link has expired or was already used. Restart `hub serve` for a new one.", "error")
        return redirect(url_for("auth.login"))
    user = local_admin(get_session())
    session.clear()
    session["user_id"] = user.id
    return redirect(_safe_next(request.args.get("next")))


@bp.get("/login/oidc")
def login_oidc() -> Response:
    client = oidc_client(current_app)
    if client is None:
        abort(404)
    session["login_next"] = _safe_next(request.args.get("next"))
    return client.authorize_redirect(url_for("auth.oidc_callback", _external=True))


@bp.get("/login/oidc/callback")
def oidc_callback() -> Response | tuple[str, int]:
    client = oidc_client(current_app)
    if client is None:
        abort(404)
    if "error" in request.args:
        flash(f"Sign-in was cancelled: {request.args.get('error_description') or request.args['error']}.", "error")
        return redirect(url_for("auth.login"))
    try:
        token = client.authorize_access_token()
    except OAuthError as error:
        flash(f"Sign-in failed: {error.description or error.error}.", "error")
        return redirect(url_for("auth.login"))
    claims = dict(token.get("userinfo") or client.userinfo(token=token))
    settings = current_app.extensions["hub.settings"]
    try:
        user = user_for_claims(get_session(), claims, settings.admin_emails)
    except SignInRefused as refused:
        return render_template("auth/login.html", oidc=True, refused=refused.message), 403
    target = session.get("login_next")
    session.clear()
    session["user_id"] = user.id
    return redirect(_safe_next(target))


@bp.post("/logout")
def logout() -> Response:
    session.clear()
    return redirect(url_for("auth.login"))
