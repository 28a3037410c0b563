"""Reference spellings of identifier normalization, written with the public normalizers only: the tests compare
``normalize_user`` and its fast paths against them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

from hub.profiles import normalize as normalize_module
from hub.profiles.normalize import IdentifierError, is_md5_hex, is_sha256_hex, normalize_date_of_birth, sha256_hex


def reference_date_of_birth(text: str) -> str:
    try:
        formatted = normalize_date_of_birth(text, today=date.max)  # only the 1900 bound applies
    except IdentifierError as error:
        if "plausible" in error.message:
            raise IdentifierError(
                "date_of_birth", "Not a plausible date of birth: the year must be 1900 or later."
            ) from None
        raise
    if formatted and formatted > datetime.now(UTC).strftime("%Y%m%d"):
        raise IdentifierError("date_of_birth", "Not a plausible date of birth: it is in the future.")
    return formatted


def reference_entry(field: str, text: str, normalize: Callable[[str], str]) -> tuple[str, str]:
    """The (normalized, hash) pair spelled out with the public normalizer and sha256_hex."""
    stripped = text.strip()
    if is_sha256_hex(stripped):
        return "", stripped.lower()
    if field != "external_id" and is_md5_hex(stripped):
        raise IdentifierError(field, normalize_module._MD5_MESSAGE)
    normalized = normalize(text)
    return (normalized, sha256_hex(normalized)) if normalized else ("", "")
