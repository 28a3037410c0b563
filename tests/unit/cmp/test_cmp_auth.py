"""Webhook authenticators: HMAC signature with replay window and rotation, bearer, Basic, IP allow-list."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from hub.cmp.auth import (
    AuthError,
    check_ip_allowed,
    sign_hmac,
    verify_basic,
    verify_bearer,
    verify_hmac_signature,
)

SECRET = b"whsec-test-0123456789"
BODY = b'{"id":"cmp-evt-123","purposes":{"ad_user_data":"granted"}}'
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
T = int(NOW.timestamp())


def test_signature_format_matches_contract():
    expected = hmac.new(SECRET, f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_hmac(SECRET, BODY, T) == f"t={T},v1={expected}"


@pytest.mark.parametrize(
    "header",
    [
        sign_hmac(SECRET, BODY, T),
        sign_hmac(SECRET, BODY, T - 299),
        sign_hmac(SECRET, BODY, T + 299),
        # rotation: sender signs with old and new secrets
        f"t={T},v1={'0' * 64},v1={sign_hmac(SECRET, BODY, T).split('v1=')[1]}",
        f"t={T}, v1={sign_hmac(SECRET, BODY, T).split('v1=')[1].upper()}",
        sign_hmac(SECRET, BODY, T) + ",v2=future-scheme",
    ],
)
def test_valid_signatures(header):
    verify_hmac_signature(SECRET, header, BODY, NOW)


def test_hub_side_rotation_accepts_any_configured_secret():
    header = sign_hmac(b"old-secret", BODY, T)
    verify_hmac_signature([b"new-secret", b"old-secret"], header, BODY, NOW)
    with pytest.raises(AuthError):
        verify_hmac_signature([b"new-secret"], header, BODY, NOW)


@pytest.mark.parametrize(
    ("header", "body", "reason"),
    [
        (None, BODY, "missing"),
        ("", BODY, "missing"),
        (sign_hmac(SECRET, BODY, T), BODY + b" ", "does not match"),
        (sign_hmac(b"other", BODY, T), BODY, "does not match"),
        (sign_hmac(SECRET, BODY, T - 301), BODY, "away from now"),
        (sign_hmac(SECRET, BODY, T + 301), BODY, "away from now"),
        (f"v1={sign_hmac(SECRET, BODY, T).split('v1=')[1]}", BODY, "no t="),
        (f"t={T}", BODY, "no v1="),
        (f"t=abc,v1={'0' * 64}", BODY, "unix seconds"),
        (f"t=-5,v1={'0' * 64}", BODY, "unix seconds"),
        (f"t={T},t={T},v1={'0' * 64}", BODY, "once"),
        ("garbage", BODY, "key=value"),
        (f"t={T}," + ",".join(["v1=00"] * 9), BODY, "too many"),
        ("t=1," + "v1=" + "a" * 3000, BODY, "too long"),
    ],
)
def test_invalid_signatures(header, body, reason):
    with pytest.raises(AuthError, match=reason):
        verify_hmac_signature(SECRET, header, body, NOW)


def test_timestamp_is_signed_too():
    # Moving the timestamp without re-signing must fail even inside the window.
    signature = sign_hmac(SECRET, BODY, T).split("v1=")[1]
    with pytest.raises(AuthError, match="does not match"):
        verify_hmac_signature(SECRET, f"t={T - 10},v1={signature}", BODY, NOW)


def test_custom_tolerance():
    header = sign_hmac(SECRET, BODY, T - 50)
    with pytest.raises(AuthError):
        verify_hmac_signature(SECRET, header, BODY, NOW, tolerance=timedelta(seconds=30))


def test_empty_secret_never_authenticates():
    with pytest.raises(AuthError, match="no HMAC secret"):
        verify_hmac_signature(b"", sign_hmac(b"", BODY, T), BODY, NOW)
    with pytest.raises(AuthError, match="no HMAC secret"):
        verify_hmac_signature([], sign_hmac(b"", BODY, T), BODY, NOW)


def test_naive_now_is_a_programming_error():
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_hmac_signature(SECRET, sign_hmac(SECRET, BODY, T), BODY, datetime(2026, 11, 28, 10, 0))


# --- bearer ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Bearer tok-123", "bearer tok-123", "  Bearer   tok-123  "])
def test_bearer_ok(header):
    verify_bearer("tok-123", header)


@pytest.mark.parametrize(
    ("expected", "header", "reason"),
    [
        ("tok-123", None, "missing"),
        ("tok-123", "Bearer", "no credentials"),
        ("tok-123", "Bearer tok-124", "does not match"),
        ("tok-123", "Bearer tok-12", "does not match"),
        ("tok-123", "Basic tok-123", "not a Bearer"),
        ("tok-123", "tok-123", "no credentials"),
        ("", "Bearer ", "no bearer token is configured"),
        ("", "Bearer x", "no bearer token is configured"),
    ],
)
def test_bearer_rejected(expected, header, reason):
    with pytest.raises(AuthError, match=reason):
        verify_bearer(expected, header)


# --- basic -----------------------------------------------------------------------------------------------


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@pytest.mark.parametrize("header", [_basic("uc-hook:s3cr:et"), "basic " + _basic("uc-hook:s3cr:et")[6:]])
def test_basic_ok(header):
    verify_basic("uc-hook", "s3cr:et", header)  # a ':' inside the password is legal


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        (_basic("uc-hook:wrong"), "do not match"),
        (_basic("other:s3cr:et"), "do not match"),
        (_basic("uc-hook"), "no ':'"),
        ("Basic !!!notbase64", "base64"),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "base64 UTF-8"),
        ("Bearer " + _basic("uc-hook:s3cr:et")[6:], "not Basic"),
    ],
)
def test_basic_rejected(header, reason):
    with pytest.raises(AuthError, match=reason):
        verify_basic("uc-hook", "s3cr:et", header)


def test_basic_without_configured_credentials_rejects():
    with pytest.raises(AuthError, match="no Basic credentials"):
        verify_basic("", "", _basic(":"))


# --- IP allow-list ---------------------------------------------------------------------------------------

DIDOMI = ["35.159.1.63", "10.0.0.0/8", "2001:db8::/32"]


@pytest.mark.parametrize("addr", ["35.159.1.63", "10.20.30.40", "2001:db8::1", "::ffff:35.159.1.63", " 10.0.0.1 "])
def test_ip_allowed(addr):
    check_ip_allowed(addr, DIDOMI)


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("35.159.1.64", "not in the allow-list"),
        ("11.0.0.1", "not in the allow-list"),
        ("2001:db9::1", "not in the allow-list"),
        ("::ffff:35.159.1.64", "not in the allow-list"),
        ("not-an-ip", "not an IP address"),
        ("", "no remote address"),
        (None, "no remote address"),
    ],
)
def test_ip_rejected(addr, reason):
    with pytest.raises(AuthError, match=reason):
        check_ip_allowed(addr, DIDOMI)


def test_empty_allow_list_means_no_restriction():
    check_ip_allowed("203.0.113.7", [])


def test_bad_allow_list_entry_is_configuration_error():
    with pytest.raises(ValueError, match="not an address or CIDR"):
        check_ip_allowed("10.0.0.1", ["10.0.0.0/33"])
