"""Identity-resolution policy as pure functions: which identifiers a call carries, which are junk, how many a
profile may hold, how traits combine, which region a profile gets and how identifiers are shown masked.

No session, no request, no clock: ``hub.profiles.services`` applies these decisions to the database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import phonenumbers

from hub.profiles.normalize import (
    IdentifierError,
    NormalizedUser,
    is_sha256_hex,
    normalize_email,
    normalize_external_id,
    normalize_phone,
    sha256_hex,
)
from hub.rules.regions import normalize_region

# Strong identifiers name a person and may link (and so merge) profiles; in this order they are preferred as
# the "linking identifier" recorded in the merge journal (an external_id is the sender's own key).
STRONG_KINDS: tuple[str, ...] = ("external_id", "email", "phone")
# Weak identifiers name a browser, which people share and clear (DESIGN.md §3: "never cause a merge on their own").
WEAK_KINDS: tuple[str, ...] = ("fbp", "fbc")
CALL_KINDS: tuple[str, ...] = STRONG_KINDS + WEAK_KINDS

# Where each kind comes from in a CONTRACT `user` object (CAPI user_data key, and the field path for messages).
_CAPI_KEY = {"external_id": "external_id", "email": "em", "phone": "ph"}
FIELD_OF_KIND: Mapping[str, str] = MappingProxyType(
    {
        "external_id": "user.external_id",
        "email": "user.email",
        "phone": "user.phone",
        "fbp": "user.fbp",
        "fbc": "user.fbc",
    }
)

# The normalized traits kept on a profile (CAPI keys; the hashes are recomputed when events are built).
TRAIT_KEYS: tuple[str, ...] = ("fn", "ln", "ge", "db", "ct", "st", "zp", "country")

# Per-kind identifier limits: a profile that collects dozens of e-mails is almost always several people glued
# together through a shared or junk value, so past the limit new identifiers are reported and not attached.
DEFAULT_LIMITS: Mapping[str, int] = MappingProxyType({"email": 5, "phone": 5, "external_id": 1, "fbp": 10, "fbc": 10})
# CMP identities ("cmp:didomi", ...) and any other kind attached by other domains.
DEFAULT_OTHER_LIMIT = 10

# Junk values seen in real CRMs and checkout forms. Matched on the normalized value; pre-hashed inputs are
# matched on the hash of the same normalized values.
DEFAULT_BLOCKED_EMAILS: frozenset[str] = frozenset(
    {
        "test@test.com",
        "test@example.com",
        "test@gmail.com",
        "test@test.de",
        "example@example.com",
        "email@example.com",
        "email@email.com",
        "user@example.com",
        "noemail@noemail.com",
        "noemail@gmail.com",
        "no-email@example.com",
        "none@none.com",
        "null@null.com",
        "na@na.com",
        "a@a.com",
        "abc@abc.com",
        "asdf@asdf.com",
        "fake@fake.com",
        "nobody@nowhere.com",
        "noreply@example.com",
        "no-reply@example.com",
    }
)
# Phones are blocked by pattern (one repeated digit, a counting sequence, NANP fiction numbers; see
# _junk_phone_reason), which catches "0000000000" in every country; add exact numbers through Settings.extra.
# Compared case-insensitively: placeholders that template engines and CRMs emit for "no id".
DEFAULT_BLOCKED_EXTERNAL_IDS: frozenset[str] = frozenset(
    {
        "0",
        "-1",
        "null",
        "none",
        "nil",
        "undefined",
        "nan",
        "n/a",
        "na",
        "unknown",
        "test",
        "guest",
        "anonymous",
        "false",
        "true",
        "[object object]",
        "{{external_id}}",
        "{external_id}",
    }
)

# Digits counting up or down (wrapping 9→0), e.g. 1234567890, 2345678901, 9876543210.
_COUNTING = ("0123456789" * 3, "9876543210" * 3)


class PolicyError(ValueError):
    """``Settings.extra`` holds an unusable identity blocklist or limit; the message names the entry."""


@dataclass(frozen=True)
class IdentifierCandidate:
    """One identifier a call carries: its kind, the SHA-256 of its normalized value and, when the sender sent
    the plain value rather than a hash, the normalized value itself (stored encrypted, never in clear)."""

    kind: str
    value_hash: str
    value: str | None = None

    @property
    def strong(self) -> bool:
        return self.kind in STRONG_KINDS

    @property
    def field(self) -> str:
        return FIELD_OF_KIND.get(self.kind, self.kind)


def identifier_candidates(normalized: NormalizedUser) -> tuple[IdentifierCandidate, ...]:
    """The identifiers of a normalized user, strong ones first in STRONG_KINDS order, then fbp and fbc."""
    found: list[IdentifierCandidate] = []
    for kind in STRONG_KINDS:
        key = _CAPI_KEY[kind]
        digest = normalized.hashes.get(key)
        if digest:
            found.append(IdentifierCandidate(kind, digest, normalized.values.get(key)))
    for kind in WEAK_KINDS:
        value = normalized.browser.get(kind)
        if value:
            # fbp/fbc are sent plain to Meta; they are keyed by hash here so every kind is looked up the same way.
            found.append(IdentifierCandidate(kind, sha256_hex(value), value))
    return tuple(found)


def traits_of(normalized: NormalizedUser) -> dict[str, str]:
    """The trait values (normalized plaintext) a call carries; pre-hashed traits cannot be kept as traits."""
    return {key: normalized.values[key] for key in TRAIT_KEYS if normalized.values.get(key)}


def combine_traits(*layers: Mapping[str, str] | None) -> dict[str, str]:
    """Traits from oldest to newest layer: for each key the newest non-empty value wins."""
    combined: dict[str, str] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if value:
                combined[key] = value
    return combined


def parse_region(value: object) -> str:
    """A context region as ``DE`` or ``US-CA`` (ISO 3166-1 alpha-2 or ISO 3166-2, uppercase).

    Raises ValueError with a sentence for anything else (groups such as ``EEA`` name no one's region).
    """
    if not isinstance(value, str):
        raise ValueError("must be a string such as DE or US-CA")
    region = normalize_region(value)
    if region is None:
        raise ValueError("not an ISO 3166 country or subdivision code (for example DE or US-CA)")
    return region


def updated_region(current: str | None, context_region: str | None, country: str | None) -> str | None:
    """The profile's region after a call: the call's validated context region wins (newest); else a country
    from the user's address replaces the region only when it names another country, so ``US-CA`` is not
    coarsened to ``US`` by an address that only says ``us``."""
    if context_region:
        return context_region
    derived = normalize_region(country) if country else None
    if derived is None:
        return current
    if current and current.partition("-")[0] == derived:
        return current
    return derived


def mask_identifier(kind: str, value: str | None) -> str | None:
    """A value shown to admins without revealing it: ``a***@example.com``, ``*******1212``. None when only
    the hash is held."""
    if not value:
        return None
    if kind == "email":
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if kind == "phone":
        return "*" * max(len(value) - 4, 3) + value[-4:]
    if kind in WEAK_KINDS:
        # fb.<subdomain>.<time>.<random>: the random part identifies the browser.
        head, _, tail = value.rpartition(".")
        return f"{head}.***{tail[-4:]}" if head else "***"
    if len(value) <= 6:
        return "***"
    return f"{value[:2]}***{value[-2:]}"


@dataclass(frozen=True)
class IdentityPolicy:
    """Limits per kind and the blocklist (as (kind, SHA-256) pairs plus plaintext patterns for phones)."""

    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    blocked: frozenset[tuple[str, str]] = frozenset()

    def limit_for(self, kind: str) -> int:
        return self.limits.get(kind, DEFAULT_OTHER_LIMIT)

    def blocked_reason(self, candidate: IdentifierCandidate) -> str | None:
        """Why a candidate is ignored as junk, or None when it is usable."""
        if (candidate.kind, candidate.value_hash) in self.blocked:
            return "on the blocklist of placeholder values"
        value = candidate.value
        if candidate.kind == "external_id" and value is not None and value.lower() in DEFAULT_BLOCKED_EXTERNAL_IDS:
            return "a placeholder, not an id (on the blocklist)"
        if candidate.kind == "phone" and candidate.value is not None:
            return _junk_phone_reason(candidate.value)
        return None


def _could_be_junk(national: str, country_code_length: int, digits: str) -> bool:
    """Whether any placeholder rule could match when the country code is ``digits[:country_code_length]``."""
    if len(national) >= 6 and len(set(national)) == 1:
        return True
    if len(national) >= 7 and any(national in counting for counting in _COUNTING):
        return True
    return country_code_length == 1 and digits[0] == "1" and len(national) == 10 and national[3:6] == "555"


def _junk_phone_reason(digits: str) -> str | None:
    # Country codes are one to three digits, so the rules below can only match if they match for one of those three
    # splits; most real numbers match none, and skip the parse (the costliest step of resolving a returning person).
    if not any(_could_be_junk(digits[length:], length, digits) for length in (1, 2, 3)):
        return None
    return _junk_phone_reason_parsed(digits)


def _junk_phone_reason_parsed(digits: str) -> str | None:
    """The placeholder rules, applied to the country code a full parse finds."""
    try:
        number = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return None
    # The digits after the country code, leading zeros kept (national_number is an int and drops them).
    national = digits[len(str(number.country_code)) :]
    if len(national) >= 6 and len(set(national)) == 1:
        return "a placeholder number made of one repeated digit (on the blocklist)"
    if len(national) >= 7 and any(national in counting for counting in _COUNTING):
        return "a placeholder number counting up or down (on the blocklist)"
    # NANP: 555-0100 to 555-0199 are reserved for fiction (films, examples), never assigned to anyone.
    if number.country_code == 1 and len(national) == 10 and national[3:6] == "555" and national[6:8] == "01":
        return "a fictional NANP number 555-01xx (on the blocklist)"
    return None


def _normalize_for_kind(kind: str, raw: str) -> str:
    if kind == "email":
        return normalize_email(raw)
    if kind == "phone":
        # Blocklist phones must carry their country code: there is no profile to take a country from.
        return normalize_phone(raw, ())
    if kind == "external_id":
        return normalize_external_id(raw)
    return raw.strip()


def _blocked_pairs(kind: str, raw_values: Iterable[str]) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for raw in raw_values:
        if not isinstance(raw, str):
            raise PolicyError(f"identity_blocklist[{kind!r}] must list strings, got {raw!r}")
        stripped = raw.strip()
        if is_sha256_hex(stripped):
            pairs.add((kind, stripped.lower()))
            continue
        try:
            value = _normalize_for_kind(kind, stripped)
        except IdentifierError as error:
            raise PolicyError(f"identity_blocklist[{kind!r}] entry {raw!r}: {error.message}") from None
        if value:
            pairs.add((kind, sha256_hex(value)))
    return pairs


_DEFAULT_BLOCKED: frozenset[tuple[str, str]] = frozenset(
    _blocked_pairs("email", DEFAULT_BLOCKED_EMAILS)
    # external_id keeps its case, so the hash of each common spelling is listed for pre-hashed input.
    | _blocked_pairs(
        "external_id",
        {v for value in DEFAULT_BLOCKED_EXTERNAL_IDS for v in (value, value.upper(), value.capitalize())},
    )
)

_KIND_NAME = re.compile(r"[a-z][a-z0-9_]*(:[a-z0-9_.-]+)?")


def identity_policy(extra: Mapping[str, object] | None = None) -> IdentityPolicy:
    """The policy from the defaults plus ``Settings.extra``:

    * ``identity_blocklist``: ``{"email": ["junk@shop.example"], "phone": ["+49 30 1234567"], ...}`` adds values
      (plain, normalized like incoming ones, or SHA-256 hex) to the built-in list;
    * ``identity_limits``: ``{"email": 3}`` overrides per-kind limits (at least 1).
    """
    extra = extra or {}
    blocked = set(_DEFAULT_BLOCKED)
    extra_blocklist = extra.get("identity_blocklist") or {}
    if not isinstance(extra_blocklist, Mapping):
        raise PolicyError("identity_blocklist must map an identifier kind to a list of values")
    for kind, values in extra_blocklist.items():
        if kind not in CALL_KINDS:
            raise PolicyError(f"identity_blocklist: unknown identifier kind {kind!r} (use {', '.join(CALL_KINDS)})")
        if not isinstance(values, list | tuple | set | frozenset):
            raise PolicyError(f"identity_blocklist[{kind!r}] must be a list of values")
        blocked |= _blocked_pairs(kind, values)
    limits = dict(DEFAULT_LIMITS)
    extra_limits = extra.get("identity_limits") or {}
    if not isinstance(extra_limits, Mapping):
        raise PolicyError("identity_limits must map an identifier kind to a whole number")
    for kind, limit in extra_limits.items():
        if not isinstance(kind, str) or _KIND_NAME.fullmatch(kind) is None:
            raise PolicyError(f"identity_limits: {kind!r} is not an identifier kind")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise PolicyError(f"identity_limits[{kind!r}] must be a whole number of at least 1, got {limit!r}")
        limits[kind] = limit
    return IdentityPolicy(limits=MappingProxyType(limits), blocked=frozenset(blocked))


@dataclass(frozen=True)
class AttachmentPlan:
    attach: tuple[IdentifierCandidate, ...]
    over_limit: tuple[IdentifierCandidate, ...]


def plan_attachments(
    candidates: Iterable[IdentifierCandidate],
    held_counts: Mapping[str, int],
    policy: IdentityPolicy,
) -> AttachmentPlan:
    """Split new identifiers (not yet held by the profile) into those to attach and those over the kind's limit,
    given how many of each kind the profile already holds."""
    counts = dict(held_counts)
    attach: list[IdentifierCandidate] = []
    over: list[IdentifierCandidate] = []
    for candidate in candidates:
        if counts.get(candidate.kind, 0) >= policy.limit_for(candidate.kind):
            over.append(candidate)
            continue
        counts[candidate.kind] = counts.get(candidate.kind, 0) + 1
        attach.append(candidate)
    return AttachmentPlan(attach=tuple(attach), over_limit=tuple(over))
