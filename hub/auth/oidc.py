"""Admin login through any OpenID Connect provider (Authlib; discovery through the issuer).

Only the user id is kept in the cookie session; tokens and userinfo are dropped once the callback has matched the
person to a hub user (STYLE.md, "OIDC admin login").
"""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_client import OAuth
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.auth.models import User
from hub.config import Settings
from hub.db import utcnow


def init_app(app: Flask, settings: Settings) -> None:
    if not settings.oidc_configured:
        return
    # One registry per app: several hubs (or test apps) in one process may talk to different providers.
    oauth = OAuth(app)
    app.extensions["hub.oidc"] = oauth.register(
        "oidc",
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        server_metadata_url=f"{settings.oidc_issuer.rstrip('/')}/.well-known/openid-configuration",
        client_kwargs={"scope": "openid email profile"},
    )


def oidc_client(app: Flask) -> Any:
    """The registered OIDC client, or None when no provider is configured."""
    return app.extensions.get("hub.oidc")


class SignInRefused(Exception):
    """The provider vouched for someone hub does not let in; ``message`` says why, for the login page."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def user_for_claims(session: Session, claims: dict[str, Any], admin_emails: tuple[str, ...]) -> User:
    """Match an OIDC identity to a hub user: by subject, else by a pre-authorised email (`hub user add`), else
    by HUB_ADMIN_EMAILS (first login creates the admin). Anyone else is refused."""
    subject = str(claims.get("sub") or "")
    email = str(claims.get("email") or "").strip().lower()
    if not subject:
        raise SignInRefused("The identity provider sent no subject (sub) claim.")
    user = session.scalar(select(User).where(User.oidc_subject == subject))
    if user is None and email:
        # An unverified email must not claim a pre-authorised account: anyone can type any address at some
        # providers. Providers that omit the claim are trusted to have verified it.
        if claims.get("email_verified") is False:
            raise SignInRefused(f"The identity provider has not verified {email}.")
        user = session.scalar(select(User).where(User.email == email, User.oidc_subject.is_(None)))
        if user is None and email in admin_emails:
            user = User(email=email, role="admin")
            session.add(user)
        if user is not None:
            user.oidc_subject = subject
    if user is None:
        raise SignInRefused(f"{email or subject} is not authorised for this hub. Ask an admin to add you.")
    if user.disabled:
        raise SignInRefused(f"{user.email} is disabled.")
    user.last_login_at = utcnow()
    session.flush()
    return user
