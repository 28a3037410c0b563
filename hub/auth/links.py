"""One-time admin login links for the embedded default, where no OIDC provider is configured.

``hub serve`` prints a link at start-up. It works once, for a limited time, and only in the process that
printed it (the token's hash lives in memory), so it never outlives a restart or leaks through the database.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from datetime import datetime, timedelta

from hub.db import utcnow

LINK_LIFETIME = timedelta(minutes=30)


class LoginLinks:
    def __init__(self) -> None:
        self._pending: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def issue(self, now: datetime | None = None) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._pending[hashlib.sha256(token.encode()).hexdigest()] = (now or utcnow()) + LINK_LIFETIME
        return token

    def redeem(self, token: str, now: datetime | None = None) -> bool:
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            expires = self._pending.pop(digest, None)
        return expires is not None and (now or utcnow()) < expires
