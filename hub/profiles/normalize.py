"""Normalization and hashing of customer identifiers: the pure core deciding what Meta receives.

Every rule follows Meta's Customer Information Parameters page [CI] (see reference/capi.md §5 and the
"What a correct sender must do" list), not the Python Business SDK where it deviates (§13).

Conventions used by every ``normalize_*`` function:

* input is a ``str``; the result is the normalized *plaintext* that gets hashed (or sent plain for the
  browser keys);
* ``""`` means *absent*: the value was empty or blank, or nothing was left after normalization. Callers
  must omit it, never hash it (Meta: an empty string's hash, ``e3b0c442…``, is noise, and ``sha256_hex``
  refuses it);
* a value that cannot be normalized raises :class:`IdentifierError` carrying the field and a sentence the
  sender can act on. Messages avoid repeating personal data, because they are stored with the event.

Pure module: no I/O; the only clock reads are "today" for the date-of-birth range (the default of
``normalize_date_of_birth`` and the future-date check in ``normalize_user``). The only state is
``functools.lru_cache`` over pure functions (lookup tables, e-mail domain validity, and the
normalize-and-hash step of values that repeat across people: names, cities, states, ZIPs, countries,
genders), which the hot path depends on for speed.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from types import MappingProxyType
from urllib.parse import parse_qsl, urlsplit

import email_validator
import phonenumbers
import pycountry

__all__ = [
    "BROWSER_KEYS",
    "HASHED_KEYS",
    "USER_FIELDS",
    "IdentifierError",
    "NormalizedUser",
    "fbc_from_url",
    "is_md5_hex",
    "is_sha256_hex",
    "normalize_city",
    "normalize_client_ip_address",
    "normalize_client_user_agent",
    "normalize_country",
    "normalize_date_of_birth",
    "normalize_email",
    "normalize_external_id",
    "normalize_fbc",
    "normalize_fbp",
    "normalize_gender",
    "normalize_name",
    "normalize_phone",
    "normalize_state",
    "normalize_user",
    "normalize_zip",
    "phone_region",
    "sha256_hex",
]


class IdentifierError(ValueError):
    """A customer identifier that cannot be sent to Meta, with the field it came from and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# --------------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------------

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{64}")


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes of ``value`` (Meta's hashing recipe [CI]).

    Refuses the empty string: Meta must never receive the hash of "nothing" (capi.md §13 item 11).
    """
    if not value:
        raise ValueError("refusing to hash an empty value; an empty identifier is absent")
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """True for exactly 64 hex digits (either case): a value the sender already hashed with SHA-256."""
    return _SHA256_HEX.fullmatch(value) is not None


def is_md5_hex(value: str) -> bool:
    """True for exactly 32 hex digits: what an MD5 digest looks like."""
    return _MD5_HEX.fullmatch(value) is not None


# --------------------------------------------------------------------------------------------------
# Shared text helpers
# --------------------------------------------------------------------------------------------------


def _nfc_lower(value: str) -> str:
    """Trim, lowercase and compose to NFC (Meta's published ``valéry`` digest is the NFC byte form)."""
    value = value.strip().lower()
    if value.isascii():
        return value
    # lower() can decompose (e.g. "İ"), so compose after lowercasing.
    return unicodedata.normalize("NFC", value)


_ASCII_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_ASCII_NOT_ALPHA = re.compile(r"[^a-z]+")


def _keep_categories(value: str, keep: str) -> str:
    # Unicode-aware filter: Python's \w drops combining marks, which would break scripts whose vowel
    # signs are marks even in NFC (Devanagari, Thai), so filter on the general category instead.
    category = unicodedata.category
    return "".join(ch for ch in value if category(ch)[0] in keep)


def _letters_and_digits(value: str) -> str:
    """Lowercase NFC ``value`` keeping only letters, marks and digits (no punctuation, no spaces)."""
    if value.isascii():
        return _ASCII_NOT_ALNUM.sub("", value)
    return _keep_categories(value, "LMN")


def _letters_only(value: str) -> str:
    if value.isascii():
        return _ASCII_NOT_ALPHA.sub("", value)
    return _keep_categories(value, "LM")


# --------------------------------------------------------------------------------------------------
# E-mail
# --------------------------------------------------------------------------------------------------

# The common case: an ASCII dot-atom local part (RFC 5322 atext, which email-validator accepts as is)
# and an ASCII domain. Such addresses are valid exactly when the domain is, so the expensive domain
# check is cached per domain; everything else goes through email-validator in full.
_ASCII_EMAIL = re.compile(
    r"(?P<local>[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*)@(?P<domain>[a-z0-9.-]+)"
)
_EMAIL_MAX_LENGTH = 254  # RFC 5321 path limit, which email-validator enforces (longer ones take the slow path)


@functools.lru_cache(maxsize=65536)
def _email_domain_problem(domain: str) -> str | None:
    try:
        email_validator.validate_email(f"a@{domain}", check_deliverability=False)
    except email_validator.EmailNotValidError as error:
        return str(error)
    return None


def normalize_email(value: str) -> str:
    """Meta [CI]: trim and lowercase (``John_Smith@gmail.com`` → ``john_smith@gmail.com``), plus NFC.

    The address is validated with email-validator (syntax only, no DNS), but the value returned is
    our own trimmed, lowercased NFC string: email-validator's normalized form (IDNA, case of the
    local part) is not Meta's rule and would change the hash.
    """
    email = _nfc_lower(value)
    if not email:
        return ""
    match = _ASCII_EMAIL.fullmatch(email)
    if match is not None and len(email) <= _EMAIL_MAX_LENGTH:
        problem = _email_domain_problem(match["domain"])
    else:
        try:
            email_validator.validate_email(email, check_deliverability=False)
            problem = None
        except email_validator.EmailNotValidError as error:
            problem = str(error)
    if problem is not None:
        raise IdentifierError("email", f"Not a valid e-mail address: {problem}")
    return email


# --------------------------------------------------------------------------------------------------
# Phone
# --------------------------------------------------------------------------------------------------

_E164 = phonenumbers.PhoneNumberFormat.E164
_REASON = phonenumbers.ValidationResult
_IMPOSSIBLE_REASONS = {
    _REASON.INVALID_COUNTRY_CODE: "its country calling code does not exist",
    _REASON.TOO_SHORT: "it has too few digits for its country",
    _REASON.TOO_LONG: "it has too many digits for its country",
    _REASON.INVALID_LENGTH: "its number of digits is not possible for its country",
    _REASON.IS_POSSIBLE_LOCAL_ONLY: "it lacks an area code (it can only be dialled locally)",
}
_PARSE_REASONS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "its country calling code does not exist",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "it does not look like a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "it is too short after the international prefix",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "it has too few digits",
    phonenumbers.NumberParseException.TOO_LONG: "it has too many digits",
}
_SUPPORTED_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)


@functools.lru_cache(maxsize=1024)
def phone_region(value: str | None) -> str | None:
    """The phone-numbering region named by a country or region code, or None.

    Accepts ISO 3166-1 alpha-2 in any case and ISO 3166-2 subdivisions (``US-CA`` means ``US``);
    anything phonenumbers has no plan for (``EEA``, ``*``, blank) gives None.
    """
    if not value:
        return None
    region = value.strip().split("-", 1)[0].upper()
    if region == "UK":  # common alias, the ISO code is GB
        region = "GB"
    return region if region in _SUPPORTED_REGIONS else None


# Fast path. phonenumbers.parse plus its checks cost ~35 µs, most of it spent on inputs that are just
# digits and separators. For those, parse()'s result follows from the calling code, the remaining
# digits and a few metadata patterns; _fast_phone_parts mirrors parse() for exactly these inputs
# (prefix detection, the plain "0" trunk prefix including "+44 (0)20 …") and _length_reason mirrors
# is_possible_number_with_reason. Everything else goes to phonenumbers: letters, extensions, "00",
# other trunk prefixes and carrier codes, Italian-style leading zeros.
# The unit tests compare both paths on a generated corpus.
_PHONE_FAST_SHAPE = re.compile(r"\+?[0-9\s().\-/]+")
_PHONE_SEPARATORS = re.compile(r"[\s().\-/]+")
_CALLING_CODES = frozenset(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
# The ASCII characters _PHONE_SEPARATORS matches (derived from it, so the two cannot disagree): for ASCII
# input, deleting them with bytes.translate gives what the shape check plus re.sub give, several times
# faster, and every other character (letters, a second "+") is left behind to fail isdigit().
_ASCII_PHONE_SEPARATORS = bytes(code for code in range(128) if _PHONE_SEPARATORS.fullmatch(chr(code)))
# Calling codes by their digits; a prefix without a leading zero spells its code exactly.
_CALLING_CODE_BY_DIGITS = {str(code): code for code in _CALLING_CODES}
_MIN_NSN, _MAX_NSN = 2, 17  # phonenumbers' limits on the national significant number
_PARSE_KEEPS_ORIGINAL = frozenset({_REASON.TOO_SHORT, _REASON.IS_POSSIBLE_LOCAL_ONLY, _REASON.INVALID_LENGTH})
_TOO_LONG = _REASON.TOO_LONG
_IS_POSSIBLE = _REASON.IS_POSSIBLE


# A metadata prefix pattern made of digit strings only ("00", "011", "0|180020"): re.match finds such a
# pattern at the start of a string exactly when the string starts with one of the alternatives, and what
# it matches is the first alternative (in order) that the string starts with. str.startswith with the
# tuple of alternatives answers the same, several times faster than the regex.
_DIGIT_ALTERNATIVES = re.compile(r"[0-9]+(?:\|[0-9]+)*")


def _digit_alternatives(pattern: str | None) -> tuple[str, ...] | None:
    if pattern is None or _DIGIT_ALTERNATIVES.fullmatch(pattern) is None:
        return None
    return tuple(pattern.split("|"))


@dataclass(frozen=True, slots=True)  # slots: the fast path reads several attributes per number
class _NumberingPlan:
    country_code: int
    is_main_region: bool  # the region whose metadata is_possible_number uses for this calling code
    international_prefix: re.Pattern[str] | None
    national_prefix: re.Pattern[str] | None
    plain_zero_trunk: bool  # no transform rule: a matched "0" is simply dropped
    general: re.Pattern[str] | None
    possible_lengths: tuple[int, ...]
    local_only_lengths: tuple[int, ...]
    # Derived from the fields above, for the fast path:
    calling_code: str  # country_code's digits
    # What is_possible_number_with_reason says for each national-number length up to one past the
    # longest length the plan names, and (the same answer) for every longer one.
    reason_by_length: tuple[phonenumbers.ValidationResult, ...]
    reason_when_longer: phonenumbers.ValidationResult
    # international_prefix and national_prefix as their digit-string alternatives, when they are such.
    international_alternatives: tuple[str, ...] | None
    national_alternatives: tuple[str, ...] | None
    # A national number starting with "0" matches national_prefix as exactly "0" (no alternative listed
    # before "0" starts with "0" itself); only meaningful with national_alternatives.
    zero_is_national_prefix: bool


def _reason_for_length(
    possible: tuple[int, ...], local_only: tuple[int, ...], length: int
) -> phonenumbers.ValidationResult:
    """phonenumbers' length test: is_possible_number_with_reason for a number without leading zeros."""
    if not possible:
        return _REASON.INVALID_LENGTH
    if length in local_only:
        return _REASON.IS_POSSIBLE_LOCAL_ONLY
    if length == possible[0]:
        return _REASON.IS_POSSIBLE
    if length < possible[0]:
        return _REASON.TOO_SHORT
    if length > possible[-1]:
        return _REASON.TOO_LONG
    return _REASON.IS_POSSIBLE if length in possible[1:] else _REASON.INVALID_LENGTH


def _numbering_plan_from(metadata: phonenumbers.PhoneMetadata, is_main_region: bool) -> _NumberingPlan:
    international = metadata.international_prefix or None
    national = metadata.national_prefix_for_parsing or None
    general = metadata.general_desc
    pattern = general.national_number_pattern if general is not None else None
    possible = tuple(general.possible_length) if general is not None else ()
    local_only = tuple(general.possible_length_local_only) if general is not None else ()
    # Past the longest length the plan names, _reason_for_length gives every length the same answer.
    longest = max((*possible, *local_only, 0)) + 1
    national_alternatives = _digit_alternatives(national)
    zero_first = national_alternatives is not None and "0" in national_alternatives
    if zero_first:
        before_zero = national_alternatives[: national_alternatives.index("0")]
        zero_first = not any(alternative.startswith("0") for alternative in before_zero)
    return _NumberingPlan(
        country_code=metadata.country_code,
        is_main_region=is_main_region,
        international_prefix=re.compile(international) if international else None,
        national_prefix=re.compile(national) if national else None,
        plain_zero_trunk=not metadata.national_prefix_transform_rule,
        general=re.compile(pattern) if pattern else None,
        possible_lengths=possible,
        local_only_lengths=local_only,
        calling_code=str(metadata.country_code),
        reason_by_length=tuple(_reason_for_length(possible, local_only, length) for length in range(longest + 1)),
        reason_when_longer=_reason_for_length(possible, local_only, longest + 1),
        international_alternatives=_digit_alternatives(international),
        national_alternatives=national_alternatives,
        zero_is_national_prefix=zero_first,
    )


@functools.lru_cache(maxsize=512)
def _region_plan(region: str) -> _NumberingPlan | None:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None:
        return None
    main = phonenumbers.region_code_for_country_code(metadata.country_code) == region
    return _numbering_plan_from(metadata, main)


@functools.lru_cache(maxsize=512)
def _calling_code_plan(country_code: int) -> _NumberingPlan | None:
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    return None if metadata is None else _numbering_plan_from(metadata, True)


def _length_reason(country_code: int, national: str) -> phonenumbers.ValidationResult:
    """is_possible_number_with_reason for a number without leading zeros (phonenumbers' length test)."""
    plan = _calling_code_plan(country_code)
    if plan is None:
        return _REASON.INVALID_LENGTH
    length, reasons = len(national), plan.reason_by_length
    return reasons[length] if length < len(reasons) else plan.reason_when_longer


def _fast_phone_parts(text: str, region: str | None) -> tuple[int, str] | None:
    """(calling code, national number) as phonenumbers.parse(text, region) reads them, or None when
    only parse can tell."""
    international = text[:1] == "+"
    if text.isascii():
        packed = (text[1:] if international else text).encode().translate(None, _ASCII_PHONE_SEPARATORS)
        if len(packed) < 3 or not packed.isdigit():
            return None  # not digits and separators, or fewer than 3 digits (parse() finds them not viable)
        digits = packed.decode()
    else:
        if _PHONE_FAST_SHAPE.fullmatch(text) is None:
            return None
        digits = _PHONE_SEPARATORS.sub("", text[1:] if international else text)
        if len(digits) < 3 or not digits.isascii() or not digits.isdigit():
            return None
    if international:
        if digits[0] == "0":
            return None
        for length in (1, 2, 3):  # calling codes are prefix-free
            country_code = _CALLING_CODE_BY_DIGITS.get(digits[:length])
            if country_code is not None:
                break
        else:
            return None
        plan = _calling_code_plan(country_code)
        if plan is None:
            return None
        national = digits[length:]
    else:
        plan = _region_plan(region) if region else None
        if plan is None or plan.international_prefix is None:
            return None
        alternatives = plan.international_alternatives
        if digits.startswith(alternatives) if alternatives is not None else plan.international_prefix.match(digits):
            return None  # parse() reads it as an international number
        national = digits
        calling_code = plan.calling_code
        if digits.startswith(calling_code):
            # parse() reads the region's own calling code as such (1-650-555-1212 in the US) when the
            # digits only make sense without it, or are too long with it.
            if not plan.is_main_region or plan.general is None:
                return None
            rest = digits[len(calling_code) :]
            if plan.national_prefix is not None and plan.national_prefix.match(rest):
                return None
            # (A main region's plan is its calling code's: _length_reason's table applies. The cheap
            # length test first, the regexes only when it does not decide.)
            reasons = plan.reason_by_length
            too_long = (reasons[len(digits)] if len(digits) < len(reasons) else plan.reason_when_longer) == _TOO_LONG
            if too_long or (plan.general.fullmatch(rest) and not plan.general.fullmatch(digits)):
                national = rest
    if not _MIN_NSN <= len(national) <= _MAX_NSN:
        return None
    alternatives = plan.national_alternatives
    if alternatives is not None:
        if not national.startswith(alternatives):
            trunk_zero = False
        elif national[0] == "0" and plan.zero_is_national_prefix:
            trunk_zero = True
        else:
            return None  # the prefix matched is not just "0"
    elif plan.national_prefix is not None:
        prefix = plan.national_prefix.match(national)
        trunk_zero = prefix is not None
        if trunk_zero and (prefix.group() != "0" or prefix.groups()):
            return None
    else:
        trunk_zero = False
    if not trunk_zero:
        if national[0] == "0":
            return None  # a kept leading zero (Italian style): parse records it separately
        return plan.country_code, national
    if not plan.plain_zero_trunk or not plan.is_main_region or plan.general is None:
        return None
    stripped = national[1:]
    if len(stripped) < _MIN_NSN or stripped[0] == "0":
        return None
    if not plan.general.fullmatch(stripped) and plan.general.fullmatch(national):
        return None  # parse keeps the zero: the number is only valid with it
    reasons = plan.reason_by_length
    if (reasons[len(stripped)] if len(stripped) < len(reasons) else plan.reason_when_longer) in _PARSE_KEEPS_ORIGINAL:
        return None
    return plan.country_code, stripped


def _first_phone_region(regions: Sequence[str | None]) -> str | None:
    for value in regions:
        region = phone_region(value)
        if region is not None:
            return region
    return None


def _parse_phone(value: str, region: str | None) -> phonenumbers.PhoneNumber:
    try:
        return phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as error:
        reason = _PARSE_REASONS.get(error.error_type, "it does not look like a phone number")
        raise IdentifierError("phone", f"Not a usable phone number: {reason}.") from None


def _require_possible(reason: phonenumbers.ValidationResult) -> None:
    if reason != _REASON.IS_POSSIBLE:
        problem = _IMPOSSIBLE_REASONS.get(reason, "it is not a possible phone number")
        raise IdentifierError("phone", f"Not a usable phone number: {problem}.")


def normalize_phone(value: str, regions: Sequence[str | None] = ()) -> str:
    """Meta [CI]: digits only, with the country calling code (US ``(650)555-1212`` → ``16505551212``).

    The number is read as phonenumbers does and returned as E.164 without the ``+``:

    * ``+…`` and ``00…`` numbers carry their country code and need no region;
    * a national number is read in the first entry of ``regions`` that names a country (callers pass
      the profile's country, then the event's region, then ``HUB_DEFAULT_PHONE_REGION``; entries like
      ``US-CA`` count as ``US``, blanks and non-countries are skipped); with none it is rejected — a
      number without its country code never matches (capi.md §13 item 1);
    * a trunk prefix is dropped (``+44 (0)20 7946 0958`` → ``442079460958``), as are separators and
      an extension (``… ext 99``);
    * letters are read as keypad digits (``1-800-FLOWERS`` → ``18003569377``): that is the number the
      person gave, whereas deleting the letters would leave a different, wrong number;
    * numbers impossible for their country (wrong length, local-only without area code, unknown
      calling code) are rejected with the reason. ``is_valid_number`` is deliberately not required: its
      range tables lag numbering-plan changes and would drop real new numbers, while a possible but
      unassigned number merely fails to match at Meta.
    """
    text = value.strip()
    return _normalize_stripped_phone(text, regions) if text else ""


def _normalize_stripped_phone(text: str, regions: Sequence[str | None]) -> str:
    """normalize_phone of a non-empty, stripped value."""
    if text.startswith("00"):
        # "00" is the ITU-recommended international prefix, but some countries dial abroad with
        # another one (US 011, AU 0011). Let the caller's region read its own prefix first, then fall
        # back to reading "00" as "+".
        region = _first_phone_region(regions)
        number = None
        if region is not None:
            try:
                number = phonenumbers.parse(text, region)
            except phonenumbers.NumberParseException:
                number = None
            if number is not None and phonenumbers.is_possible_number_with_reason(number) != _REASON.IS_POSSIBLE:
                number = None
        if number is None:
            number = _parse_phone("+" + text[2:], None)
    else:
        region = None
        if text[0] != "+":
            region = _first_phone_region(regions)
            if region is None:
                raise IdentifierError(
                    "phone",
                    "The phone number has no country code and no country is known for it; send it in "
                    "international form (+ and country code) or give the profile a country.",
                )
        parts = _fast_phone_parts(text, region)
        if parts is not None:
            country_code, national = parts
            reason = _length_reason(country_code, national)
            if reason != _IS_POSSIBLE:
                _require_possible(reason)
            return f"{country_code}{national}"
        number = _parse_phone(text, region)
    _require_possible(phonenumbers.is_possible_number_with_reason(number))
    # E.164 never includes the extension; Meta wants the digits without "+".
    return phonenumbers.format_number(number, _E164)[1:]


# --------------------------------------------------------------------------------------------------
# Names and city
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def normalize_name(value: str) -> str:
    """First or last name. Meta [CI]: lowercase, no punctuation, UTF-8 kept (``Valéry`` → ``valéry``).

    Whitespace is removed too (``Mary Ann`` → ``maryann``), as Meta's own Parameter Builder library
    does ("whitespace_and_punctuation"), so the hash equals the one Meta's tools produce. Letters and
    combining marks of every script and digits are kept; NFC makes decomposed input hash the same.
    """
    return _letters_and_digits(_nfc_lower(value))


@functools.lru_cache(maxsize=65536)
def normalize_city(value: str) -> str:
    """Meta [CI]: lowercase, no punctuation, no special characters, no spaces (``New York`` → ``newyork``).

    Digits are removed as well (capi.md "correct sender" item 16); letters of every script are kept.
    """
    return _letters_only(_nfc_lower(value))


# --------------------------------------------------------------------------------------------------
# Country
# --------------------------------------------------------------------------------------------------

# Common English names and abbreviations that pycountry does not list (its names are ISO's).
_COUNTRY_ALIASES = {
    "uk": "gb",
    "greatbritain": "gb",
    "britain": "gb",
    "england": "gb",
    "scotland": "gb",
    "wales": "gb",
    "northernireland": "gb",
    "america": "us",
    "unitedstatesofamerica": "us",
    "russia": "ru",
    "turkey": "tr",
    "southkorea": "kr",
    "northkorea": "kp",
    "laos": "la",
    "syria": "sy",
    "vatican": "va",
    "ivorycoast": "ci",
    "swaziland": "sz",
    "macedonia": "mk",
    "easttimor": "tl",
    "burma": "mm",
    "holland": "nl",
    "czechrepublic": "cz",
    "capeverde": "cv",
}


def _fold_key(value: str) -> str:
    """Lookup key: lowercase, accents removed, only a-z kept (``Côte d'Ivoire`` → ``cotedivoire``)."""
    value = value.strip().lower()
    if not value.isascii():
        value = "".join(ch for ch in unicodedata.normalize("NFKD", value) if not unicodedata.combining(ch))
    return _ASCII_NOT_ALPHA.sub("", value)


@functools.lru_cache(maxsize=1)
def _country_index() -> Mapping[str, str]:
    index: dict[str, str] = {}
    for country in pycountry.countries:
        code = country.alpha_2.lower()
        for attribute in ("common_name", "official_name", "name"):
            name = getattr(country, attribute, None)
            if name:
                index[_fold_key(name)] = code
    for country in pycountry.countries:
        # Codes last, so a code always wins over a name that happens to fold to the same letters.
        index[country.alpha_2.lower()] = country.alpha_2.lower()
        index[country.alpha_3.lower()] = country.alpha_2.lower()
    index.update(_COUNTRY_ALIASES)
    return MappingProxyType(index)


@functools.lru_cache(maxsize=4096)
def normalize_country(value: str) -> str:
    """Meta [CI]: ISO 3166-1 alpha-2, lowercase (``United States`` → ``us``).

    Accepts alpha-2 and alpha-3 codes, ISO English names (``Germany``, ``Viet Nam``, accents and
    punctuation ignored) and common English aliases (``UK`` → ``gb``, ``USA`` → ``us``). Local-language
    names (``Deutschland``) are not in pycountry and are rejected rather than guessed.
    """
    key = _fold_key(value)
    if not key:
        if value.strip():
            raise IdentifierError("country", "Not a country: use an ISO 3166-1 code such as 'us' or 'de'.")
        return ""
    code = _country_index().get(key)
    if code is None:
        raise IdentifierError(
            "country",
            f"Unknown country {value.strip()[:60]!r}: use an ISO 3166-1 code such as 'us' or 'de', "
            "or the English country name.",
        )
    return code


def _country_or_none(country: str | None) -> str | None:
    if not country:
        return None
    try:
        return normalize_country(country) or None
    except IdentifierError:
        return None


# --------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _us_states() -> Mapping[str, str]:
    """US state, district and outlying-area names and codes (ISO 3166-2:US) → 2-letter lowercase code."""
    index: dict[str, str] = {}
    for subdivision in pycountry.subdivisions.get(country_code="US"):
        code = subdivision.code.split("-", 1)[1].lower()
        index[_fold_key(subdivision.name)] = code
        index[code] = code
    index["virginislands"] = "vi"  # ISO's name is "Virgin Islands, U.S."
    index["washingtondc"] = "dc"
    return MappingProxyType(index)


@functools.lru_cache(maxsize=65536)
def normalize_state(value: str, country: str | None = None) -> str:
    """Meta [CI]: US states as the 2-letter ANSI code lowercase (``California`` → ``ca``); elsewhere
    lowercase without punctuation, special characters or spaces.

    ``country`` is anything :func:`normalize_country` accepts. When it is the US, or unknown and the
    value names a US state, the code is used; a US state that is not recognised is rejected, since
    only the code matches. Outside the US the value is kept (``Île-de-France`` → ``îledefrance``).
    """
    cleaned = _letters_and_digits(_nfc_lower(value))
    if not cleaned:
        return ""
    country_code = _country_or_none(country)
    if country_code in (None, "us"):
        code = _us_states().get(_fold_key(value))
        if code is not None:
            return code
        if country_code == "us":
            raise IdentifierError(
                "state", "Not a US state: use the two-letter code (e.g. 'CA') or the full state name."
            )
    return cleaned


# --------------------------------------------------------------------------------------------------
# ZIP / postal code
# --------------------------------------------------------------------------------------------------

_US_ZIP = re.compile(r"(\d{5})(?:\d{4})?")
# Decision: with no country known, "12345-6789", "12345 6789" and "123456789" are read as US ZIP+4
# (no other postal system uses a 5+4 shape), so the US rule applies; Japan's "100-0001" (3+4) and
# Brazil's "01310-100" (5+3) do not match and are only stripped of the dash.
_ZIP_PLUS_FOUR = re.compile(r"(\d{5})[\s-]?\d{4}")


@functools.lru_cache(maxsize=65536)
def normalize_zip(value: str, country: str | None = None) -> str:
    """Meta [CI]: lowercase, no spaces and no dash; US ZIPs are the first 5 digits; UK keeps the full
    code (``M1 1AE`` → ``m11ae``).

    For the US (``country``, anything :func:`normalize_country` accepts) the value must be 5 digits,
    optionally followed by the +4 part; for other countries nothing is cut (``100-0001`` → ``1000001``).
    """
    text = _nfc_lower(value)
    compact = _letters_and_digits(text)
    if not compact:
        return ""
    country_code = _country_or_none(country)
    if country_code == "us":
        match = _US_ZIP.fullmatch(compact)
        if match is None:
            raise IdentifierError("zip", "Not a US ZIP code: use 5 digits, optionally followed by -1234.")
        return match[1]
    if country_code is None:
        match = _ZIP_PLUS_FOUR.fullmatch(text)
        if match is not None:
            return match[1]
    return compact


# --------------------------------------------------------------------------------------------------
# Date of birth
# --------------------------------------------------------------------------------------------------

_DOB_YEAR_FIRST = re.compile(r"([0-9]{4})([-/.]?)([0-9]{1,2})\2([0-9]{1,2})")
_DOB_US_SLASH = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_DOB_DOTTED = re.compile(r"([0-9]{1,2})\.([0-9]{1,2})\.([0-9]{4})")
_DOB_DASHED_YEAR_LAST = re.compile(r"[0-9]{1,2}-[0-9]{1,2}-[0-9]{4}")
_EARLIEST_BIRTH_YEAR = 1900  # Meta [CI]: year 1900 to the current year


def normalize_date_of_birth(value: str, *, today: date | None = None) -> str:
    """Meta [CI]: ``YYYYMMDD`` (``2/16/1997`` → ``19970216``), year 1900 to the current year.

    Accepted forms (``today`` defaults to the current UTC date):

    * year first: ``1997-02-16``, ``1997/02/16``, ``1997.02.16``, ``19970216``;
    * slashes with the year last are month/day/year, as in Meta's own example: ``2/16/1997``. A date
      that only makes sense as day/month (``16/02/1997``) is rejected, not silently flipped, because the
      same source's ``05/02/1997`` would then be wrong without anyone noticing;
    * dots with the year last are day.month.year, the European convention: ``16.02.1997``.

    Dashes with the year last (``02-03-1997``) are used both ways and are rejected as ambiguous, as are
    two-digit years.
    """
    text = value.strip()
    if not text:
        return ""
    birth, formatted = _parse_date_of_birth(text)
    today = today or datetime.now(UTC).date()
    if birth.year < _EARLIEST_BIRTH_YEAR or birth > today:
        raise IdentifierError("date_of_birth", f"Not a plausible date of birth: the year must be 1900 to {today.year}.")
    return formatted


@functools.lru_cache(maxsize=65536)
def _parse_date_of_birth(text: str) -> tuple[date, str]:
    if match := _DOB_YEAR_FIRST.fullmatch(text):
        year, month, day = int(match[1]), int(match[3]), int(match[4])
        if not match[2] and len(text) != 8:  # "1997216" has no unambiguous split
            raise IdentifierError("date_of_birth", "Not a date: use YYYY-MM-DD, e.g. 1997-02-16.")
    elif match := _DOB_US_SLASH.fullmatch(text):
        month, day, year = int(match[1]), int(match[2]), int(match[3])
        if month > 12 and day <= 12:
            raise IdentifierError(
                "date_of_birth",
                "Dates with slashes are read as month/day/year, and this one only works as day/month/year; "
                "use YYYY-MM-DD, e.g. 1997-02-16.",
            )
    elif match := _DOB_DOTTED.fullmatch(text):
        day, month, year = int(match[1]), int(match[2]), int(match[3])
    elif _DOB_DASHED_YEAR_LAST.fullmatch(text):
        raise IdentifierError(
            "date_of_birth",
            "Dates like 02-03-1997 are ambiguous (month or day first); use YYYY-MM-DD, e.g. 1997-02-16.",
        )
    else:
        raise IdentifierError("date_of_birth", "Not a date: use YYYY-MM-DD, e.g. 1997-02-16.")
    try:
        birth = date(year, month, day)
    except ValueError:
        raise IdentifierError("date_of_birth", "Not a calendar date (check the month and day).") from None
    # YYYYMMDD: for a calendar date the number's last four digits are MMDD, zero-padded by position,
    # and zfill pads the year to four digits; a fifth of the cost of a format spec per part.
    return birth, str(year * 10000 + month * 100 + day).zfill(8)


# --------------------------------------------------------------------------------------------------
# Gender
# --------------------------------------------------------------------------------------------------

_GENDERS = {"f": "f", "female": "f", "woman": "f", "m": "m", "male": "m", "man": "m"}


def normalize_gender(value: str) -> str:
    """Meta [CI]: ``f`` or ``m``. Anything else (``non-binary``, ``unknown``) is ``""`` — absent, not an
    error: Meta has no code for it, and guessing would be wrong (the Node SDK also drops them)."""
    return _GENDERS.get(value.strip().lower(), "")


# --------------------------------------------------------------------------------------------------
# External ID
# --------------------------------------------------------------------------------------------------


def normalize_external_id(value: str) -> str:
    """The advertiser's own user ID, trimmed, case kept; it is then SHA-256 hashed like the PII keys.

    Meta [EXT] demands the identical format on the Pixel, CAPI and offline channels. The Meta Pixel
    and the Node SDK hash external_id, the Python SDK sends it raw (capi.md §5, §13 item 13); hub uses
    one rule — SHA-256 of the trimmed value — so a browser Pixel sending the same ID yields the same
    value. Case is kept because IDs are often case-sensitive (``AbC`` and ``abc`` may be two people).
    """
    return value.strip()


# --------------------------------------------------------------------------------------------------
# Browser keys: fbp, fbc, IP, user agent (sent plain, never hashed)
# --------------------------------------------------------------------------------------------------

# Meta [FBC]: fb.<subdomain_index>.<creation_time_ms>.<value>; Meta's Parameter Builder may append an
# 8-character appendix (legacy: 2 characters) [PB]. The fbclid is case-sensitive: never altered.
_APPENDIX = r"(?:\.[A-Za-z0-9_-]{8}|\.[A-Za-z0-9_-]{2})?"
_FBC = re.compile(r"fb\.\d{1,2}\.\d{13}\.[^.\s]+" + _APPENDIX)
_FBP = re.compile(r"fb\.\d{1,2}\.\d{13}\.\d+" + _APPENDIX)
_IP_APPENDIX = re.compile(r"(.+)\.([A-Za-z0-9_-]{8})")
# Dotted-quad IPv4 exactly as ipaddress accepts it (0-255, no leading zeros); other forms go to ipaddress.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def normalize_fbc(value: str) -> str:
    """Validate the click-ID cookie shape ``fb.1.1764300000000.AbCdEf[.appendix]``; returned unchanged."""
    text = value.strip()
    if text and _FBC.fullmatch(text) is None:
        raise IdentifierError("fbc", "Not an fbc value: expected fb.<subdomain index>.<creation time in ms>.<fbclid>.")
    return text


def normalize_fbp(value: str) -> str:
    """Validate the browser-ID cookie shape ``fb.1.1764300000000.123456789[.appendix]``; returned unchanged."""
    text = value.strip()
    if text and _FBP.fullmatch(text) is None:
        raise IdentifierError(
            "fbp", "Not an fbp value: expected fb.<subdomain index>.<creation time in ms>.<random number>."
        )
    return text


def fbc_from_url(source_url: str, now: datetime) -> str | None:
    """Build ``fb.1.<ms>.<fbclid>`` from the ``fbclid`` query parameter of a landing-page URL.

    Meta [FBC]: without a ``_fbc`` cookie use subdomain index 1 and the time the fbclid was first seen,
    in milliseconds; the fbclid's case is preserved. ``now`` must be timezone-aware. None when the URL
    has no usable fbclid.
    """
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    try:
        query = urlsplit(source_url).query
    except ValueError:
        return None
    fbclid = next((v for k, v in parse_qsl(query, keep_blank_values=False) if k == "fbclid"), "")
    fbc = f"fb.1.{int(now.timestamp() * 1000)}.{fbclid}"
    if not fbclid or _FBC.fullmatch(fbc) is None:
        return None
    return fbc


def normalize_client_ip_address(value: str) -> str:
    """A valid IPv4 or IPv6 address (Meta [CI]), sent as given; a Parameter Builder appendix is allowed."""
    text = value.strip()
    if not text or _IPV4.fullmatch(text):
        return text
    try:
        ipaddress.ip_address(text)
    except ValueError:
        match = _IP_APPENDIX.fullmatch(text)
        try:
            if match is None or match[2].isdigit():
                raise ValueError
            ipaddress.ip_address(match[1])
        except ValueError:
            raise IdentifierError("ip_address", "Not an IPv4 or IPv6 address.") from None
    return text


def normalize_client_user_agent(value: str) -> str:
    """The browser's user agent, trimmed, otherwise verbatim (Meta [CI]: sent plain)."""
    return value.strip()


# --------------------------------------------------------------------------------------------------
# A whole `user` object
# --------------------------------------------------------------------------------------------------

# CONTRACT `user` key → CAPI user_data key for the hashed identifiers.
HASHED_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "email": "em",
        "phone": "ph",
        "first_name": "fn",
        "last_name": "ln",
        "city": "ct",
        "state": "st",
        "zip": "zp",
        "country": "country",
        "date_of_birth": "db",
        "gender": "ge",
        "external_id": "external_id",
    }
)
# CONTRACT `user` key → CAPI user_data key for the keys sent plain.
BROWSER_KEYS: Mapping[str, str] = MappingProxyType(
    {"fbp": "fbp", "fbc": "fbc", "ip_address": "client_ip_address", "user_agent": "client_user_agent"}
)
USER_FIELDS: frozenset[str] = frozenset(HASHED_KEYS) | frozenset(BROWSER_KEYS)
_INT_ALLOWED = frozenset({"phone", "zip"})
_MD5_MESSAGE = "looks like an MD5 hash; Meta only matches SHA-256 hashes, so send the plain value or its SHA-256"

# An entry is (normalized plaintext, SHA-256 hex); the plaintext is "" for a pre-hashed input, and
# both are "" when the value is absent after normalization.
_Entry = tuple[str, str]
_ABSENT: _Entry = ("", "")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_HASH_LENGTHS = (32, 64)  # MD5 and SHA-256 hex digests; a value of any other length cannot be either
_sha256 = hashlib.sha256
_new_object = object.__new__


def _prehashed(field: str, stripped: str) -> _Entry | None:
    """Meta: never hash twice. 64 hex digits are a SHA-256 already (passed on lowercased); 32 hex
    digits look like MD5, which Meta cannot match (rejected) — except for external_id, where 32 hex
    digits are far more often an ID itself (a UUID without dashes) and get hashed like any ID."""
    if len(stripped) == 64 and is_sha256_hex(stripped):
        return "", stripped.lower()
    if len(stripped) == 32 and field != "external_id" and is_md5_hex(stripped):
        raise IdentifierError(field, _MD5_MESSAGE)
    return None


def _entry(normalized: str) -> _Entry:
    # hashlib directly: the emptiness check sha256_hex makes is the condition here.
    return (normalized, _sha256(normalized.encode("utf-8")).hexdigest()) if normalized else _ABSENT


# Entry functions, one per hashed field, so normalize_user calls each without dispatching on the field.
#
# Names, cities, states, ZIPs, countries and genders repeat across people and events, so their whole
# normalize-and-hash step is cached, keyed by the raw text alone (functools.lru_cache keys a single str
# argument by the string itself, the cheapest lookup it has). Inside, the uncached normalizer
# (``__wrapped__``) is called where the public one has its own cache: the entry cache already remembers
# the outcome, storing it twice would only cost time on every new value.
# E-mails, phones, external IDs and birth dates are close to unique per person and are normalized and
# hashed each time: a cache that mostly misses costs more than it saves, since every miss also adds an
# entry to a table too large to stay in the CPU caches (measured on normalize_user). For the same reason
# a US ZIP+4 is cached by its five digits, not by its raw text.


@functools.lru_cache(maxsize=65536)
def _first_name_entry(text: str) -> _Entry:
    return _prehashed("first_name", text.strip()) or _entry(normalize_name.__wrapped__(text))


@functools.lru_cache(maxsize=65536)
def _last_name_entry(text: str) -> _Entry:
    return _prehashed("last_name", text.strip()) or _entry(normalize_name.__wrapped__(text))


@functools.lru_cache(maxsize=65536)
def _city_entry(text: str) -> _Entry:
    return _prehashed("city", text.strip()) or _entry(normalize_city.__wrapped__(text))


@functools.lru_cache(maxsize=65536)
def _gender_entry(text: str) -> _Entry:
    return _prehashed("gender", text.strip()) or _entry(normalize_gender(text))


@functools.lru_cache(maxsize=4096)
def _country_entry(text: str) -> _Entry:
    return _prehashed("country", text.strip()) or _entry(normalize_country.__wrapped__(text))


@functools.lru_cache(maxsize=65536)
def _state_entry(text: str, country: str) -> _Entry:
    """``country`` is the user's normalized country code, "" when unknown."""
    return _prehashed("state", text.strip()) or _entry(normalize_state.__wrapped__(text, country or None))


def _zip_entry(text: str, country: str) -> _Entry:
    """``country`` is the user's normalized country code, "" when unknown."""
    stripped = text.strip()
    if country == "us" and stripped.isascii():
        # normalize_zip's outcome for the two US shapes that make up nearly all US ZIPs, 12345 and
        # 12345-6789 in ASCII digits: the first five digits (neither length can be a hash). The +4 part
        # makes nearly every raw value new, so only the five digits are worth a cache.
        length = len(stripped)
        if length == 5 and stripped.isdigit():
            return _us_zip_entry(stripped)
        if length == 10 and stripped[5] == "-" and stripped[:5].isdigit() and stripped[6:].isdigit():
            return _us_zip_entry(stripped[:5])
    return _other_zip_entry(text, country)


@functools.lru_cache(maxsize=65536)
def _us_zip_entry(zip5: str) -> _Entry:
    return _entry(zip5)


@functools.lru_cache(maxsize=65536)
def _other_zip_entry(text: str, country: str) -> _Entry:
    return _prehashed("zip", text.strip()) or _entry(normalize_zip.__wrapped__(text, country or None))


def _date_of_birth_entry(text: str) -> _Entry:
    # Not cached: a birth date is nearly as individual as an e-mail address, and parsing it costs about
    # what a miss in a large cache does (measured: the cache made normalize_user slower).
    stripped = text.strip()
    if len(stripped) in _HASH_LENGTHS:
        prehashed = _prehashed("date_of_birth", stripped)
        if prehashed is not None:
            return prehashed
    if not stripped:
        return _ABSENT
    birth, formatted = _parse_date_of_birth.__wrapped__(stripped)
    if birth.year < _EARLIEST_BIRTH_YEAR:
        raise IdentifierError("date_of_birth", "Not a plausible date of birth: the year must be 1900 or later.")
    if (birth.toordinal() - _EPOCH_ORDINAL) * 86400 > time.time():  # the birth date has not begun yet (UTC)
        raise IdentifierError("date_of_birth", "Not a plausible date of birth: it is in the future.")
    return formatted, _sha256(formatted.encode()).hexdigest()


def _email_entry(text: str) -> _Entry:
    stripped = text.strip()
    length = len(stripped)
    if length in _HASH_LENGTHS:
        prehashed = _prehashed("email", stripped)
        if prehashed is not None:
            return prehashed
    # normalize_email's ASCII fast path, inlined: this runs for every user, and each nested call costs
    # about as much as the regex. Anything else takes normalize_email itself.
    email = stripped.lower()
    if email.isascii() and len(email) <= _EMAIL_MAX_LENGTH:
        match = _ASCII_EMAIL.fullmatch(email)
        if match is not None:
            problem = _email_domain_problem(match["domain"])
            if problem is not None:
                raise IdentifierError("email", f"Not a valid e-mail address: {problem}")
            return email, _sha256(email.encode()).hexdigest()
    return _entry(normalize_email(text))


def _phone_entry(text: str, regions: Sequence[str | None]) -> _Entry:
    stripped = text.strip()
    if len(stripped) in _HASH_LENGTHS:
        prehashed = _prehashed("phone", stripped)
        if prehashed is not None:
            return prehashed
    if not stripped:
        return _ABSENT
    phone = _normalize_stripped_phone(stripped, regions)
    return (phone, _sha256(phone.encode()).hexdigest()) if phone else _ABSENT


def _external_id_entry(text: str) -> _Entry:
    stripped = text.strip()  # normalize_external_id, inlined
    # Only SHA-256 counts as pre-hashed here: 32 hex digits are an ID (see _prehashed).
    if len(stripped) == 64 and is_sha256_hex(stripped):
        return "", stripped.lower()
    return (stripped, _sha256(stripped.encode()).hexdigest()) if stripped else _ABSENT


# How normalize_user treats each CONTRACT field, bound once: field → (output key, call shape, function).
# The call shape says which arguments the function takes besides the raw text.
_BY_TEXT = 0  # entry function of the text alone
_BY_TEXT_AND_COUNTRY = 1  # entry function of the text and the user's normalized country (state, ZIP)
_BY_TEXT_AND_REGIONS = 2  # entry function of the text and the phone regions (phone)
_PLAIN = 3  # browser key: a normalizer whose non-empty result is sent unhashed
# A plain dict, not a MappingProxyType: it is private, and looked up for every field of every user.
_FIELD_RULES: dict[str, tuple[str, int, Callable[..., object]]] = {
    "email": (HASHED_KEYS["email"], _BY_TEXT, _email_entry),
    "phone": (HASHED_KEYS["phone"], _BY_TEXT_AND_REGIONS, _phone_entry),
    "first_name": (HASHED_KEYS["first_name"], _BY_TEXT, _first_name_entry),
    "last_name": (HASHED_KEYS["last_name"], _BY_TEXT, _last_name_entry),
    "city": (HASHED_KEYS["city"], _BY_TEXT, _city_entry),
    "state": (HASHED_KEYS["state"], _BY_TEXT_AND_COUNTRY, _state_entry),
    "zip": (HASHED_KEYS["zip"], _BY_TEXT_AND_COUNTRY, _zip_entry),
    "country": (HASHED_KEYS["country"], _BY_TEXT, _country_entry),
    "date_of_birth": (HASHED_KEYS["date_of_birth"], _BY_TEXT, _date_of_birth_entry),
    "gender": (HASHED_KEYS["gender"], _BY_TEXT, _gender_entry),
    "external_id": (HASHED_KEYS["external_id"], _BY_TEXT, _external_id_entry),
    "fbp": (BROWSER_KEYS["fbp"], _PLAIN, normalize_fbp),
    "fbc": (BROWSER_KEYS["fbc"], _PLAIN, normalize_fbc),
    "ip_address": (BROWSER_KEYS["ip_address"], _PLAIN, normalize_client_ip_address),
    # str.strip is normalize_client_user_agent without the Python call (the value is a str here).
    "user_agent": (BROWSER_KEYS["user_agent"], _PLAIN, str.strip),
}


@dataclass(frozen=True)
class NormalizedUser:
    """The outcome of normalizing one CONTRACT ``user`` object (read-only mappings).

    ``values``: CAPI key → normalized plaintext (em, ph, fn, ln, ct, st, zp, country, db, ge,
    external_id); absent keys and pre-hashed inputs are omitted.
    ``hashes``: CAPI key → lowercase SHA-256 hex, the keys of ``values`` plus pre-hashed inputs.
    ``browser``: fbp, fbc, client_ip_address, client_user_agent, plain.
    ``errors``: ``"user.<field>"`` → sentence, for every field that was dropped.
    """

    values: Mapping[str, str]
    hashes: Mapping[str, str]
    browser: Mapping[str, str]
    errors: Mapping[str, str]


def normalize_user(user: Mapping[str, object], *, phone_regions: Sequence[str | None] = ()) -> NormalizedUser:
    """Normalize and hash a CONTRACT ``user`` object; every unusable field is dropped and explained.

    Values are strings (ints are accepted for phone and zip); ``None`` means absent, as does a value
    that is blank after normalization (no error). The user's own country, when valid, is the first
    region for national phone numbers, before ``phone_regions`` (typically the event's
    ``context.region``, then ``HUB_DEFAULT_PHONE_REGION``). A 64-hex value in a hashed field is taken
    as a SHA-256 already and passed on lowercased; a 32-hex (MD5-like) value is rejected, except in
    external_id. Unknown keys are reported as ``"unknown field"``.
    """
    values: dict[str, str] = {}
    hashes: dict[str, str] = {}
    browser: dict[str, str] = {}
    errors: dict[str, str] = {}

    # Country first: it chooses the state and ZIP rules and the first phone region. Its error is
    # recorded here, so it comes first in ``errors``; the loop below meets it again and rewrites the
    # same message in place.
    country = ""
    raw_country = user.get("country")
    if type(raw_country) is str:
        try:
            country = _country_entry(raw_country)[0]
        except IdentifierError as error:
            errors["user.country"] = error.message
    regions = (country, *phone_regions) if country else phone_regions

    for field, raw in user.items():
        try:
            rule = _FIELD_RULES[field]  # (cheaper than .get; an unknown field is the rare case)
        except KeyError:
            errors[f"user.{field}"] = "unknown field"
            continue
        if type(raw) is not str:
            if raw is None:
                continue
            if field in _INT_ALLOWED and isinstance(raw, int) and not isinstance(raw, bool):
                raw = str(raw)
                if field == "zip" and country == "us":
                    # A ZIP stored as a number lost its leading zeros (02134 → 2134); US ZIPs have 5 digits.
                    raw = raw.zfill(5)
            else:
                allowed = "a string or an integer" if field in _INT_ALLOWED else "a string"
                errors[f"user.{field}"] = f"must be {allowed}, not {type(raw).__name__}"
                continue
        key, shape, normalize = rule
        try:
            if shape == _BY_TEXT:
                normalized, digest = normalize(raw)
            elif shape == _PLAIN:
                plain = normalize(raw)
                if plain:
                    browser[key] = plain
                continue
            elif shape == _BY_TEXT_AND_COUNTRY:
                normalized, digest = normalize(raw, country)
            else:
                normalized, digest = normalize(raw, regions)
        except IdentifierError as error:
            errors[f"user.{field}"] = error.message
            continue
        if digest:
            hashes[key] = digest
            if normalized:
                values[key] = normalized

    # Filled in directly rather than through the generated __init__: a frozen dataclass sets each field
    # with object.__setattr__, which costs as much as normalizing two cached fields. Same instance state.
    result = _new_object(NormalizedUser)
    state = result.__dict__
    state["values"] = values
    state["hashes"] = hashes
    state["browser"] = browser
    state["errors"] = errors
    return result
