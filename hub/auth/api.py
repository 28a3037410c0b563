"""API-key authentication for the JSON API (``Authorization: Bearer <api key>``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from hub.auth.services import find_api_key
from hub.db import utcnow
from hub.web.database import get_session
from hub.web.errors import ApiError

F = TypeVar("F", bound=Callable[..., Any])


def api_key_required(scope: str = "ingest") -> Callable[[F], F]:
    """401 without a valid key; 403 when the key's scope is too narrow (admin keys may also ingest)."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise ApiError(401, "unauthenticated", "Send an API key as `Authorization: Bearer <key>`.")
            key = find_api_key(get_session(), secret.strip())
            if key is None:
                raise ApiError(401, "invalid_api_key", "The API key is unknown or revoked.")
            if scope == "admin" and key.scope != "admin":
                raise ApiError(403, "forbidden", "This endpoint needs an API key with the admin scope.")
            now = utcnow()
            # Recorded at most once a minute so ingestion isn't one extra UPDATE per request.
            if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
                key.last_used_at = now
            g.api_key = key
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator
