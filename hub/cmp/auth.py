"""Pure authenticator checks for CMP webhooks (CONTRACT.md "CMP webhooks"; reference/consent.md §1.3).

No CMP in our sample signs its body, so the hub supports per-source schemes: its own HMAC signature (generic
adapter), a static bearer token (Didomi via OAuth, Ketch, OneTrust actions), Basic auth (Usercentrics), and an
optional IP allow-list (Didomi sends from a fixed address). Every secret comparison is constant-time.
Each check returns None or raises `AuthError`; the reason is for logs, never for the HTTP answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta

__all__ = [
    "AuthError",
    "check_ip_allowed",
    "sign_hmac",
    "verify_basic",
    "verify_bearer",
    "verify_hmac_signature",
]

_MAX_SIGNATURE_HEADER = 2048  # a handful of v1 values; anything longer is not ours
_MAX_SIGNATURES = 8


class AuthError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sign_hmac(secret: bytes, body: bytes, t: int) -> str:
    """The `X-Hub-Signature` value for `body` at unix time `t`: `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`."""
    return f"t={t},v1={_digest(secret, t, body)}"


def verify_hmac_signature(
    secret: bytes | Sequence[bytes],
    header: str | None,
    body: bytes,
    now: datetime,
    tolerance: timedelta = timedelta(minutes=5),
) -> None:
    """Check an `X-Hub-Signature` header against the raw body.

    Several `v1=` values may be present (the sender signs with old and new secret while rotating), and the hub
    may hold several secrets (`secret` as a sequence) for its own rotation: any match passes. A timestamp more
    than `tolerance` away from `now` — in either direction — is rejected, which bounds replay of a captured
    request (CONTRACT.md: 5 minutes).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    secrets = [secret] if isinstance(secret, bytes | bytearray) else list(secret)
    if not secrets or any(not s for s in secrets):
        raise AuthError("no HMAC secret is configured for this source")
    if not header:
        raise AuthError("missing X-Hub-Signature header")
    if len(header) > _MAX_SIGNATURE_HEADER:
        raise AuthError("X-Hub-Signature header is too long")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise AuthError("X-Hub-Signature must be comma-separated key=value pairs")
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise AuthError("X-Hub-Signature timestamp must appear once, as unix seconds")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value.strip().lower())
        # Other keys (future schemes) are ignored so senders can add them without breaking us.
    if timestamp is None:
        raise AuthError("X-Hub-Signature has no t= timestamp")
    if not signatures:
        raise AuthError("X-Hub-Signature has no v1= signature")
    if len(signatures) > _MAX_SIGNATURES:
        raise AuthError("X-Hub-Signature carries too many signatures")
    skew = abs(now.timestamp() - timestamp)
    if skew > tolerance.total_seconds():
        raise AuthError(f"X-Hub-Signature timestamp is {int(skew)} s away from now (limit {tolerance})")
    expected = [_digest(s, timestamp, body) for s in secrets]
    matched = False
    for candidate in signatures:
        for digest in expected:
            # Evaluate every pair: no early exit that would reveal which secret or signature matched.
            matched |= hmac.compare_digest(candidate.encode(), digest.encode())
    if not matched:
        raise AuthError("X-Hub-Signature does not match the body")


def verify_bearer(expected_token: str, authorization_header: str | None) -> None:
    if not expected_token:
        raise AuthError("no bearer token is configured for this source")
    scheme, token = _split_authorization(authorization_header)
    if scheme != "bearer":
        raise AuthError("Authorization header is not a Bearer token")
    if not hmac.compare_digest(token.encode(), expected_token.encode()):
        raise AuthError("bearer token does not match")


def verify_basic(username: str, password: str, authorization_header: str | None) -> None:
    if not username or not password:
        raise AuthError("no Basic credentials are configured for this source")
    scheme, encoded = _split_authorization(authorization_header)
    if scheme != "basic":
        raise AuthError("Authorization header is not Basic")
    try:
        decoded = base64.b64decode(encoded.encode(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("Basic credentials are not valid base64 UTF-8") from None
    given_user, sep, given_password = decoded.partition(":")
    if not sep:
        raise AuthError("Basic credentials have no ':' separator")
    user_ok = hmac.compare_digest(given_user.encode(), username.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.encode())
    if not (user_ok and password_ok):
        raise AuthError("Basic credentials do not match")


def check_ip_allowed(remote_addr: str | None, allow_list: Sequence[str]) -> None:
    """Raise unless `remote_addr` is inside one of the addresses / CIDR networks in `allow_list`.

    An empty allow-list means the source has no IP restriction (the allow-list is optional per CONTRACT.md).
    A malformed entry is a configuration error (`ValueError`), not a failed authentication.
    IPv4-mapped IPv6 addresses (`::ffff:35.159.1.63`, as dual-stack servers report them) match IPv4 entries.
    """
    if not allow_list:
        return
    networks = []
    for entry in allow_list:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"IP allow-list entry {entry!r} is not an address or CIDR network") from None
    if not remote_addr:
        raise AuthError("the request has no remote address")
    try:
        address = ipaddress.ip_address(remote_addr.strip())
    except ValueError:
        raise AuthError(f"remote address {remote_addr!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not any(address.version == network.version and address in network for network in networks):
        raise AuthError(f"remote address {address} is not in the allow-list")


def _digest(secret: bytes, t: int, body: bytes) -> str:
    return hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def _split_authorization(header: str | None) -> tuple[str, str]:
    if not header:
        raise AuthError("missing Authorization header")
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        raise AuthError("Authorization header has no credentials")
    return scheme.lower(), credentials
