"""The admin UI's signed-cookie sessions, kept out of the machine-to-machine paths."""

from __future__ import annotations

from flask import Flask, Request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

# Senders on these paths (CMPs) authenticate each request and carry no cookie.
_COOKIELESS_PREFIXES = ("/webhooks/",)


class AdminSessionInterface(SecureCookieSessionInterface):
    """Flask's sessions, except on webhook paths, where the request gets Flask's null session (empty; it can
    never be written, so no cookie is ever set on a webhook's answer). Opening a session builds a signing
    serializer for every request: a CMP burst paid for that on each delivery for nothing."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path.startswith(_COOKIELESS_PREFIXES):
            return None  # Flask falls back to make_null_session
        return super().open_session(app, request)
