"""Admin sign-in: a one-time local link for the embedded default (OIDC login builds on the same session)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from hub.auth.links import LoginLinks
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


@bp.post("/logout")
def logout() -> Response:
    session.clear()
    return redirect(url_for("auth.login"))
