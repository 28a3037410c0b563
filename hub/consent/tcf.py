"""Strict decoder for IAB TCF v2 TC strings (v2.2 / v2.3 layout) and their mapping onto hub purposes.

Spec: InteractiveAdvertisingBureau/GDPR-Transparency-and-Consent-Framework,
"TCFv2/IAB Tech Lab - Consent string and vendor list formats v2.md" (summarised in reference/consent.md §2.1).

Why our own decoder: the only maintained-ish Python library (`iab-tcf`) *fails open* on truncated input — missing
bits decode as "consent" (reference/consent.md §2.3). A consent gate must fail closed, so every read here is
bounds-checked and any anomaly raises `TCStringError`; a caller that catches it must treat the string as
"no consent".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

__all__ = [
    "DEFAULT_TCF_PURPOSE_MAP",
    "BitReader",
    "PublisherRestriction",
    "PublisherTC",
    "TCString",
    "TCStringError",
    "decode_base64url_bits",
    "decode_tc_string",
    "tcf_purposes_to_hub",
]


class TCStringError(ValueError):
    """The value is not a well-formed, policy-valid TCF v2 TC string. Never treat it as consent."""


# Proposal from reference/consent.md §2.2, built on Google's documented TCF → Consent Mode mapping:
# P1 (store/access device) gates ad_storage and ad_user_data; P3 + P4 (create/use ad profile) gate
# ad_personalization; P7 (measure ad performance) gates ad_user_data; P8 (measure content performance) is the
# analytics counterpart. A hub purpose is granted only when *all* listed TCF purposes have consent.
DEFAULT_TCF_PURPOSE_MAP: Mapping[str, tuple[int, ...]] = {
    "ad_user_data": (1, 7),
    "ad_personalization": (1, 3, 4),
    "ad_storage": (1,),
    "analytics_storage": (1, 8),
}

# TCF 2.2: strings created after 30 Sep 2023 must carry policy version >= 4 (reference/consent.md §2.1).
_POLICY_V4_CUTOFF = date(2023, 9, 30)
# TCF 2.2 removed legitimate interest as a legal basis for purposes 3-6 (personalised ads/content profiles).
_PURPOSES_WITHOUT_LI = frozenset({3, 4, 5, 6})

_SEGMENT_DISCLOSED_VENDORS = 1
_SEGMENT_ALLOWED_VENDORS = 2  # deprecated out-of-band "allowed vendors"; still a defined segment type
_SEGMENT_PUBLISHER_TC = 3

_RESTRICTION_NOT_ALLOWED = 0
_RESTRICTION_REQUIRE_CONSENT = 1
_RESTRICTION_REQUIRE_LI = 2

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_B64_VALUES = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}


def decode_base64url_bits(segment: str, error: type[ValueError]) -> tuple[int, int]:
    """Turn one base64url segment into (integer holding all bits, bit count).

    `=` padding is tolerated at the end only (some encoders add it; the IAB Java tests contain such a string).
    Anything outside the base64url alphabet — including `+` and `/` of classic base64 — raises `error`.
    """
    stripped = segment.rstrip("=")
    if len(segment) - len(stripped) > 2:
        raise error("too much '=' padding")
    if not stripped:
        raise error("empty segment")
    if not _BASE64URL.fullmatch(stripped):
        raise error("contains characters outside the base64url alphabet")
    value = 0
    for char in stripped:
        value = (value << 6) | _B64_VALUES[char]
    return value, 6 * len(stripped)


class BitReader:
    """Big-endian bit reader that raises instead of inventing bits past the end of the data."""

    def __init__(self, value: int, length: int, error: type[ValueError], what: str) -> None:
        self._value = value
        self._length = length
        self._position = 0
        self._error = error
        self._what = what

    @classmethod
    def from_base64url(cls, segment: str, error: type[ValueError], what: str) -> BitReader:
        try:
            value, length = decode_base64url_bits(segment, error)
        except error as exc:
            raise error(f"{what}: {exc}") from None
        return cls(value, length, error, what)

    @property
    def position(self) -> int:
        return self._position

    @property
    def remaining(self) -> int:
        return self._length - self._position

    def fail(self, message: str) -> ValueError:
        return self._error(f"{self._what}: {message}")

    def read_int(self, bits: int) -> int:
        if bits > self.remaining:
            raise self.fail(f"truncated at bit {self._length}: needed {bits} more bit(s) at bit {self._position}")
        shift = self._length - self._position - bits
        self._position += bits
        return (self._value >> shift) & ((1 << bits) - 1)

    def read_bool(self) -> bool:
        return self.read_int(1) == 1

    def read_bitfield(self, bits: int) -> frozenset[int]:
        """Bit i (0-based, left to right) set → id i + 1 is in the set."""
        field = self.read_int(bits)
        return frozenset(i + 1 for i in range(bits) if field >> (bits - 1 - i) & 1)

    def read_fibonacci(self) -> int:
        """Fibonacci-coded positive integer (GPP spec): bit i adds F(i+2); the code ends at the first '11'."""
        total = 0
        previous = 0
        fib_a, fib_b = 1, 2
        for _ in range(64):  # 64 bits is far beyond any section id or offset the spec can need
            bit = self.read_int(1)
            if bit and previous:
                return total
            if bit:
                total += fib_a
            previous = bit
            fib_a, fib_b = fib_b, fib_a + fib_b
        raise self.fail("Fibonacci-coded integer is unterminated")


@dataclass(frozen=True)
class PublisherRestriction:
    purpose_id: int
    restriction_type: int  # 0 not allowed, 1 require consent, 2 require legitimate interest
    vendor_ranges: tuple[tuple[int, int], ...]  # inclusive, merged and sorted

    def applies_to(self, vendor_id: int) -> bool:
        return any(start <= vendor_id <= end for start, end in self.vendor_ranges)


@dataclass(frozen=True)
class PublisherTC:
    purposes_consent: frozenset[int]
    purposes_li_transparency: frozenset[int]
    custom_purposes_consent: frozenset[int]
    custom_purposes_li_transparency: frozenset[int]


@dataclass(frozen=True)
class TCString:
    version: int
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    policy_version: int
    is_service_specific: bool
    use_non_standard_texts: bool
    special_feature_opt_ins: frozenset[int]
    purposes_consent: frozenset[int]
    purposes_li_transparency: frozenset[int]
    purpose_one_treatment: bool
    publisher_cc: str
    max_vendor_id_consent: int
    vendor_consents: frozenset[int]
    max_vendor_id_li: int
    vendor_legitimate_interests: frozenset[int]
    publisher_restrictions: tuple[PublisherRestriction, ...]
    disclosed_vendors: frozenset[int] | None  # None = segment absent (mandatory only since TCF 2.3)
    allowed_vendors: frozenset[int] | None
    publisher_tc: PublisherTC | None


def decode_tc_string(value: str, *, allow_outdated_policy: bool = False) -> TCString:
    """Decode and validate a TC string; raise `TCStringError` for anything malformed, truncated or invalid.

    `allow_outdated_policy=True` skips only the TCF 2.2 rule that strings created after 2023-09-30 must carry
    policy version >= 4 (useful to inspect old or illustrative strings, e.g. the TCF 2.3 spec's own example,
    which still says policy version 2). Never use it on the consent path.
    """
    if not isinstance(value, str):
        raise TCStringError("TC string must be a string")
    text = value.strip()
    if not text:
        raise TCStringError("TC string is empty")
    segments = text.split(".")
    core = _decode_core(segments[0])

    seen: set[int] = set()
    disclosed: frozenset[int] | None = None
    allowed: frozenset[int] | None = None
    publisher_tc: PublisherTC | None = None
    for index, segment in enumerate(segments[1:], start=2):
        reader = BitReader.from_base64url(segment, TCStringError, f"segment {index}")
        segment_type = reader.read_int(3)
        if segment_type in seen:
            raise reader.fail(f"segment type {segment_type} appears twice")
        seen.add(segment_type)
        if segment_type == _SEGMENT_DISCLOSED_VENDORS:
            disclosed = _read_vendor_section(reader, "disclosed vendors")[1]
        elif segment_type == _SEGMENT_ALLOWED_VENDORS:
            allowed = _read_vendor_section(reader, "allowed vendors")[1]
        elif segment_type == _SEGMENT_PUBLISHER_TC:
            publisher_tc = _read_publisher_tc(reader)
        else:
            raise reader.fail(f"unknown segment type {segment_type}")

    result = TCString(**core, disclosed_vendors=disclosed, allowed_vendors=allowed, publisher_tc=publisher_tc)
    _validate_policy(result, allow_outdated_policy=allow_outdated_policy)
    return result


def tcf_purposes_to_hub(tc: TCString, mapping: Mapping[str, Sequence[int]]) -> dict[str, str]:
    """Hub purpose → "granted" when every listed TCF purpose has consent in `tc`, else "denied".

    Legitimate-interest transparency never counts: hub purposes are consent purposes (consent.md §2.2, "never
    rely on LI for P3/P4"). A hub purpose mapped to an empty list is a configuration error.
    """
    result: dict[str, str] = {}
    for hub_purpose, tcf_purposes in mapping.items():
        required = set(tcf_purposes)
        if not required:
            raise ValueError(f"TCF purpose mapping for {hub_purpose!r} lists no TCF purposes")
        if any(not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 24 for p in required):
            raise ValueError(f"TCF purpose mapping for {hub_purpose!r} must list purpose ids between 1 and 24")
        result[hub_purpose] = "granted" if required <= tc.purposes_consent else "denied"
    return result


def _decode_core(segment: str) -> dict[str, object]:
    reader = BitReader.from_base64url(segment, TCStringError, "core segment")
    version = reader.read_int(6)
    if version != 2:
        raise reader.fail(f"version {version} is not supported (only TCF v2 strings are accepted)")
    fields: dict[str, object] = {"version": version}
    fields["created"] = _read_deciseconds(reader)
    fields["last_updated"] = _read_deciseconds(reader)
    fields["cmp_id"] = reader.read_int(12)
    fields["cmp_version"] = reader.read_int(12)
    fields["consent_screen"] = reader.read_int(6)
    fields["consent_language"] = _read_letters(reader, "consent language")
    fields["vendor_list_version"] = reader.read_int(12)
    fields["policy_version"] = reader.read_int(6)
    fields["is_service_specific"] = reader.read_bool()
    fields["use_non_standard_texts"] = reader.read_bool()
    fields["special_feature_opt_ins"] = reader.read_bitfield(12)
    fields["purposes_consent"] = reader.read_bitfield(24)
    fields["purposes_li_transparency"] = reader.read_bitfield(24)
    fields["purpose_one_treatment"] = reader.read_bool()
    fields["publisher_cc"] = _read_letters(reader, "publisher country code")
    fields["max_vendor_id_consent"], fields["vendor_consents"] = _read_vendor_section(reader, "vendor consents")
    fields["max_vendor_id_li"], fields["vendor_legitimate_interests"] = _read_vendor_section(
        reader, "vendor legitimate interests"
    )
    fields["publisher_restrictions"] = _read_publisher_restrictions(reader)
    if fields["cmp_id"] == 0:
        # CMP ids are assigned from 1 by IAB Europe; 0 means the string was not produced by a registered CMP.
        raise reader.fail("CMP id 0 is not a registered CMP")
    return fields


def _read_deciseconds(reader: BitReader) -> datetime:
    deciseconds = reader.read_int(36)
    return datetime.fromtimestamp(deciseconds // 10, tz=UTC)


def _read_letters(reader: BitReader, what: str) -> str:
    letters = []
    for _ in range(2):
        code = reader.read_int(6)
        if code > 25:
            raise reader.fail(f"{what} holds {code}, which is not a letter A-Z")
        letters.append(chr(ord("A") + code))
    return "".join(letters)


def _read_vendor_section(reader: BitReader, what: str) -> tuple[int, frozenset[int]]:
    max_vendor_id = reader.read_int(16)
    is_range = reader.read_bool()
    if not is_range:
        return max_vendor_id, reader.read_bitfield(max_vendor_id)
    ranges = _read_ranges(reader, what)
    for _start, end in ranges:
        if end > max_vendor_id:
            raise reader.fail(f"{what}: vendor id {end} exceeds MaxVendorId {max_vendor_id}")
    return max_vendor_id, frozenset(_expand(ranges))


def _read_ranges(reader: BitReader, what: str) -> tuple[tuple[int, int], ...]:
    count = reader.read_int(12)
    raw: list[tuple[int, int]] = []
    for _ in range(count):
        is_a_range = reader.read_bool()
        start = reader.read_int(16)
        end = reader.read_int(16) if is_a_range else start
        if start == 0:
            raise reader.fail(f"{what}: vendor id 0 does not exist")
        if end < start:
            raise reader.fail(f"{what}: range end {end} is before its start {start}")
        raw.append((start, end))
    return _merge(raw)


def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    # Merging first keeps expansion linear in the number of distinct ids: 4095 overlapping ranges of 65535 ids
    # would otherwise cost hundreds of millions of set insertions.
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def _expand(ranges: Iterable[tuple[int, int]]) -> Iterable[int]:
    for start, end in ranges:
        yield from range(start, end + 1)


def _read_publisher_restrictions(reader: BitReader) -> tuple[PublisherRestriction, ...]:
    count = reader.read_int(12)
    restrictions = []
    for _ in range(count):
        purpose_id = reader.read_int(6)
        restriction_type = reader.read_int(2)
        if purpose_id == 0:
            raise reader.fail("publisher restriction for purpose 0")
        if restriction_type not in (
            _RESTRICTION_NOT_ALLOWED,
            _RESTRICTION_REQUIRE_CONSENT,
            _RESTRICTION_REQUIRE_LI,
        ):
            raise reader.fail(f"publisher restriction type {restriction_type} is undefined")
        ranges = _read_ranges(reader, f"publisher restriction for purpose {purpose_id}")
        restrictions.append(PublisherRestriction(purpose_id, restriction_type, ranges))
    return tuple(restrictions)


def _read_publisher_tc(reader: BitReader) -> PublisherTC:
    consent = reader.read_bitfield(24)
    li = reader.read_bitfield(24)
    custom_count = reader.read_int(6)
    return PublisherTC(
        purposes_consent=consent,
        purposes_li_transparency=li,
        custom_purposes_consent=reader.read_bitfield(custom_count),
        custom_purposes_li_transparency=reader.read_bitfield(custom_count),
    )


def _validate_policy(tc: TCString, *, allow_outdated_policy: bool) -> None:
    if tc.policy_version < 2:
        raise TCStringError(f"core segment: TCF policy version {tc.policy_version} predates TCF v2")
    if tc.policy_version < 4 and tc.created.date() > _POLICY_V4_CUTOFF and not allow_outdated_policy:
        raise TCStringError(
            f"core segment: created {tc.created.date().isoformat()} with TCF policy version "
            f"{tc.policy_version}; TCF 2.2 requires policy version 4 or later after 2023-09-30"
        )
    if tc.policy_version >= 4:
        li_forbidden = sorted(tc.purposes_li_transparency & _PURPOSES_WITHOUT_LI)
        if li_forbidden:
            raise TCStringError(
                f"core segment: legitimate interest set for purpose(s) {li_forbidden}, "
                "which TCF 2.2 allows only with consent"
            )
        if not tc.is_service_specific:
            # Global-scope strings were retired before TCF 2.2; every policy-4 string is service-specific.
            raise TCStringError("core segment: IsServiceSpecific must be 1 under TCF policy version 4+")
