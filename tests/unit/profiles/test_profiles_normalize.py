"""Identifier normalization and hashing: what reaches Meta.

Expected digests are computed here with hashlib over the expected normalized string, except Meta's
published e-mail digest, which is pinned literally.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import random
import unicodedata
from datetime import UTC, date, datetime
from pathlib import Path

import phonenumbers
import pytest

from hub.profiles import normalize as normalize_module
from hub.profiles.normalize import (
    BROWSER_KEYS,
    HASHED_KEYS,
    IdentifierError,
    NormalizedUser,
    fbc_from_url,
    is_md5_hex,
    is_sha256_hex,
    normalize_city,
    normalize_client_ip_address,
    normalize_client_user_agent,
    normalize_country,
    normalize_date_of_birth,
    normalize_email,
    normalize_external_id,
    normalize_fbc,
    normalize_fbp,
    normalize_gender,
    normalize_name,
    normalize_phone,
    normalize_state,
    normalize_user,
    normalize_zip,
    phone_region,
    sha256_hex,
)
from tests.support.normalize_reference import reference_date_of_birth, reference_entry

EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------
# Meta's published examples
# ----------------------------------------------------------------------------------------------


def test_meta_published_email_digest() -> None:
    assert normalize_email("John_Smith@gmail.com") == "john_smith@gmail.com"
    assert (
        sha256_hex(normalize_email("John_Smith@gmail.com"))
        == "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    )


@pytest.mark.parametrize(
    ("function", "value", "expected"),
    [
        (lambda v: normalize_phone(v, ["US"]), "(650)555-1212", "16505551212"),
        (normalize_name, "Valéry", "valéry"),
        (normalize_name, "정", "정"),
        (normalize_date_of_birth, "2/16/1997", "19970216"),
        (normalize_country, "United States", "us"),
        (normalize_state, "California", "ca"),
        (normalize_city, "New York", "newyork"),
        (normalize_zip, "94035-1234", "94035"),
        (normalize_zip, "M1 1AE", "m11ae"),
        (normalize_gender, "Female", "f"),
    ],
)
def test_meta_published_examples(function, value: str, expected: str) -> None:
    assert function(value) == expected
    assert sha256_hex(function(value)) == digest(expected)


def test_valery_digest_is_the_nfc_byte_form() -> None:
    nfd = unicodedata.normalize("NFD", "Valéry")
    assert nfd != "Valéry"
    assert normalize_name(nfd) == "valéry"
    assert sha256_hex(normalize_name(nfd)) == hashlib.sha256("valéry".encode()).hexdigest()
    assert sha256_hex(normalize_name(nfd)) == sha256_hex(normalize_name("Valéry"))


# ----------------------------------------------------------------------------------------------
# Hashing helpers
# ----------------------------------------------------------------------------------------------


def test_sha256_hex_refuses_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        sha256_hex("")


@pytest.mark.parametrize(
    ("value", "sha", "md5"),
    [
        ("a" * 64, True, False),
        ("A" * 64, True, False),
        ("g" * 64, False, False),
        ("a" * 63, False, False),
        ("d41d8cd98f00b204e9800998ecf8427e", False, True),
        ("D41D8CD98F00B204E9800998ECF8427E", False, True),
        ("", False, False),
    ],
)
def test_hex_shapes(value: str, sha: bool, md5: bool) -> None:
    assert is_sha256_hex(value) is sha
    assert is_md5_hex(value) is md5


# ----------------------------------------------------------------------------------------------
# E-mail
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  Ann@Example.COM ", "ann@example.com"),
        ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
        ("O'Neil@example.org", "o'neil@example.org"),
        ("JOSÉ@exämple.de", "josé@exämple.de"),  # Unicode kept as NFC, not IDNA-encoded
        (unicodedata.normalize("NFD", "José@example.com"), "josé@example.com"),
        ("   ", ""),
        ("", ""),
    ],
)
def test_normalize_email(value: str, expected: str) -> None:
    assert normalize_email(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "not-an-email",
        "ann@",
        "@example.com",
        "ann smith@example.com",
        "ann@@example.com",
        ".ann@example.com",
        "ann..lee@example.com",
        "ann@localhost",
        "ann@example",
        "ann@-example.com",
        "ann@" + "a" * 250 + ".com",
    ],
)
def test_normalize_email_rejects(value: str) -> None:
    with pytest.raises(IdentifierError) as raised:
        normalize_email(value)
    assert raised.value.field == "email"
    assert raised.value.message.startswith("Not a valid e-mail address")


@pytest.mark.parametrize(
    "value",
    [
        "ann@example.com",
        "x@ex-ample.io",
        "a.b@c.d.e.fr",
        ".a@example.com",
        "a@example..com",
        "a@1.2.3.4",
        "a" * 65 + "@example.com",  # email-validator enforces the 64-octet local limit only when strict
        "a@" + "b" * 64 + ".com",
        "a@" + ("b" * 60 + ".") * 5 + "com",  # longer than 254
    ],
)
def test_email_fast_path_agrees_with_email_validator(value: str) -> None:
    import email_validator

    try:
        email_validator.validate_email(value, check_deliverability=False)
        valid = True
    except email_validator.EmailNotValidError:
        valid = False
    try:
        normalize_email(value)
        ours = True
    except IdentifierError:
        ours = False
    assert ours is valid


# ----------------------------------------------------------------------------------------------
# Phone
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "regions", "expected"),
    [
        ("(650)555-1212", ["US"], "16505551212"),
        ("+1 650 555 1212", [], "16505551212"),
        ("+16505551212", [None, ""], "16505551212"),
        ("650.555.1212", ["US"], "16505551212"),
        ("650-555-1212 ext 99", ["US"], "16505551212"),
        ("650 555 1212 x99", ["US-CA"], "16505551212"),
        ("1-650-555-1212", ["US"], "16505551212"),
        ("1-800-FLOWERS", ["US"], "18003569377"),  # keypad letters, documented choice
        ("+44 (0)20 7946 0958", [], "442079460958"),
        ("+44 20 7946 0958", [], "442079460958"),
        ("020 7946 0958", ["GB"], "442079460958"),
        ("020 7946 0958", ["uk"], "442079460958"),
        ("07700 900123", ["GB"], "447700900123"),
        ("0044 20 7946 0958", [], "442079460958"),
        ("0044 20 7946 0958", ["US"], "442079460958"),  # US dials out with 011; "00" read as "+"
        ("0011 44 20 7946 0958", ["AU"], "442079460958"),  # Australia's own international prefix
        ("030 1234567", ["DE"], "49301234567"),
        ("+39 06 1234 5678", [], "390612345678"),  # Italian leading zero kept
        ("(650)555-1212", ["", None, "EEA", "US"], "16505551212"),  # first region naming a country
        ("(650)555-1212", ["GB", "US"], "446505551212"),  # the first region wins, even if wrong
        ("  ", ["US"], ""),
    ],
)
def test_normalize_phone(value: str, regions: list[str | None], expected: str | None) -> None:
    if expected is None:
        with pytest.raises(IdentifierError):
            normalize_phone(value, regions)
    else:
        assert normalize_phone(value, regions) == expected


@pytest.mark.parametrize(
    ("value", "regions", "reason"),
    [
        ("6505551212", [], "no country code"),  # 10-digit national number, no region
        ("(650)555-1212", [None, "", "*"], "no country code"),
        ("555-1212", ["US"], "area code"),
        ("+1 650 555", [], "too few digits"),
        ("+1 650 555 1212 9999", [], "too many digits"),
        ("+999 1234567", [], "calling code"),
        ("hello", ["US"], "does not look like a phone number"),
        ("12", ["US"], "phone number"),
    ],
)
def test_normalize_phone_rejects_with_reason(value: str, regions: list[str | None], reason: str) -> None:
    with pytest.raises(IdentifierError) as raised:
        normalize_phone(value, regions)
    assert raised.value.field == "phone"
    assert reason in raised.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("US-CA", "US"), ("us", "US"), ("GB", "GB"), ("UK", "GB"), ("EEA", None), ("*", None), ("", None), (None, None)],
)
def test_phone_region(value: str | None, expected: str | None) -> None:
    assert phone_region(value) == expected


def _phone_corpus(count: int) -> list[tuple[str, str]]:
    rng = random.Random(20261128)
    regions = ["US", "CA", "GB", "JE", "DE", "FR", "IT", "AU", "JP", "BR", "AR", "MX", "IN", "ES", "NL", "CH"]
    regions += ["KR", "CN", "RU", "SE", "SG", "HK", "NZ", "ZA", "AE"]
    corpus = []
    for _ in range(count):
        region = rng.choice(regions)
        calling_code = phonenumbers.country_code_for_region(region)
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 15)))
        if rng.random() < 0.3:
            digits = "0" + digits
        shape = rng.randrange(8)
        text = [
            f"+{calling_code} {digits}",
            f"+{calling_code} (0){digits}",
            f"{calling_code}{digits}",
            f"({digits[:3]}) {digits[3:6]}-{digits[6:]}",
            f"{digits[:3]}.{digits[3:]}",
            f"+{digits}",
            digits,
            f"{calling_code}-{digits[:3]}-{digits[3:]}",
        ][shape]
        corpus.append((text, rng.choice(regions) if rng.random() < 0.3 else region))
    return corpus


def _phone_outcome(text: str, region: str) -> str:
    try:
        return normalize_phone(text, [region])
    except IdentifierError as error:
        return "rejected: " + error.message


def test_phone_fast_path_agrees_with_phonenumbers(monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _phone_corpus(20_000)
    fast = [_phone_outcome(text, region) for text, region in corpus]
    used_fast_path = sum(
        normalize_module._fast_phone_parts(text, None if text.startswith("+") else region) is not None
        for text, region in corpus
    )
    monkeypatch.setattr(normalize_module, "_fast_phone_parts", lambda text, region: None)
    reference = [_phone_outcome(text, region) for text, region in corpus]
    assert used_fast_path > len(corpus) // 3  # the comparison exercises the fast path substantially
    assert sum(not outcome.startswith("rejected") for outcome in reference) > len(corpus) // 10
    mismatches = [(case, a, b) for case, a, b in zip(corpus, fast, reference, strict=True) if a != b]
    assert mismatches == []


@pytest.mark.parametrize(
    ("text", "region", "fast_parts"),
    [
        ("+1 650 555 1212", None, (1, "6505551212")),
        ("(650)\u00a0555-1212", "US", (1, "6505551212")),  # non-ASCII whitespace: the regex route
        ("650\u2013555\u20131212", "US", None),  # en dashes are not separators: left to phonenumbers
        ("++16505551212", None, None),
        ("+1 650 555 1212+", None, None),
        ("650-555-1212x", "US", None),
        ("+", None, None),
        ("()", "US", None),
        ("+1 (0)", None, None),
    ],
)
def test_phone_fast_path_separators(
    monkeypatch: pytest.MonkeyPatch, text: str, region: str | None, fast_parts: tuple[int, str] | None
) -> None:
    assert normalize_module._fast_phone_parts(text, region) == fast_parts
    fast = _phone_outcome(text, region)
    monkeypatch.setattr(normalize_module, "_fast_phone_parts", lambda text, region: None)
    assert fast == _phone_outcome(text, region)


@pytest.mark.parametrize("separator", ["\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", " ", "\u2009"])
def test_phone_fast_path_reads_every_whitespace_as_a_separator(separator: str) -> None:
    # The ASCII route (bytes.translate) and the regex route (\s) agree on what whitespace is.
    # (phonenumbers itself refuses control characters and thin spaces; the fast path has always
    # accepted them as separators.)
    assert normalize_module._fast_phone_parts(f"+1 650{separator}555 1212", None) == (1, "6505551212")
    assert normalize_module._fast_phone_parts(f"(650){separator}555-1212", "US") == (1, "6505551212")


# ----------------------------------------------------------------------------------------------
# Names, city, state, zip, country
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Valéry", "valéry"),
        ("  JOHN ", "john"),
        ("O'Brien", "obrien"),
        ("Mary-Jane", "maryjane"),
        ("Mary Ann", "maryann"),  # whitespace removed, as Meta's Parameter Builder does
        ("García-López", "garcíalópez"),
        ("Zoë", "zoë"),
        (unicodedata.normalize("NFD", "Zoë"), "zoë"),
        ("정", "정"),
        ("राम", "राम"),  # Devanagari vowel sign (a combining mark) is kept
        ("Louis 14", "louis14"),
        ("...", ""),
        ("   ", ""),
    ],
)
def test_normalize_name(value: str, expected: str) -> None:
    assert normalize_name(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("New York", "newyork"),
        ("O'Fallon", "ofallon"),
        ("St. Louis", "stlouis"),
        ("Winston-Salem", "winstonsalem"),
        ("München", "münchen"),
        ("Paris 15", "paris"),
        ("  ", ""),
    ],
)
def test_normalize_city(value: str, expected: str) -> None:
    assert normalize_city(value) == expected


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        ("California", None, "ca"),
        ("CA", None, "ca"),
        ("ca", "us", "ca"),
        ("New York", "United States", "ny"),
        ("district of columbia", "US", "dc"),
        ("Puerto Rico", None, "pr"),
        ("Bayern", "de", "bayern"),
        ("Île-de-France", "FR", "îledefrance"),
        ("Ontario", "CA", "ontario"),
        ("Georgia", "GE", "georgia"),  # the country Georgia's regions are not US states
        ("Georgia", None, "ga"),
        ("Bayern", None, "bayern"),
        ("  ", "us", ""),
    ],
)
def test_normalize_state(value: str, country: str | None, expected: str) -> None:
    assert normalize_state(value, country) == expected


def test_normalize_state_rejects_unknown_us_state() -> None:
    with pytest.raises(IdentifierError) as raised:
        normalize_state("Calif.", "us")
    assert raised.value.field == "state"


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        ("94035-1234", None, "94035"),
        ("94035 1234", None, "94035"),
        ("940351234", None, "94035"),
        ("94035", "us", "94035"),
        ("94035-1234", "US", "94035"),
        ("M1 1AE", None, "m11ae"),
        ("SW1A 1AA", "gb", "sw1a1aa"),
        ("100-0001", "jp", "1000001"),
        ("100-0001", None, "1000001"),
        ("01310-100", "BR", "01310100"),
        ("H-1051", "hu", "h1051"),
        ("12345-6789", "de", "123456789"),  # only the US rule cuts
        ("  ", "us", ""),
    ],
)
def test_normalize_zip(value: str, country: str | None, expected: str) -> None:
    assert normalize_zip(value, country) == expected


@pytest.mark.parametrize("value", ["9403", "ABCDE", "94035-12"])
def test_normalize_zip_rejects_malformed_us_zip(value: str) -> None:
    with pytest.raises(IdentifierError) as raised:
        normalize_zip(value, "us")
    assert raised.value.field == "zip"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("United States", "us"),
        ("US", "us"),
        ("usa", "us"),
        ("U.S.A.", "us"),
        ("United States of America", "us"),
        ("UK", "gb"),
        ("United Kingdom", "gb"),
        ("GBR", "gb"),
        ("Germany", "de"),
        ("DEU", "de"),
        ("Viet Nam", "vn"),
        ("Côte d'Ivoire", "ci"),
        ("Turkey", "tr"),
        ("Türkiye", "tr"),
        ("  fr ", "fr"),
        ("", ""),
    ],
)
def test_normalize_country(value: str, expected: str) -> None:
    assert normalize_country(value) == expected


@pytest.mark.parametrize("value", ["Deutschland", "XX", "EU", "Atlantis", "123"])
def test_normalize_country_rejects(value: str) -> None:
    with pytest.raises(IdentifierError) as raised:
        normalize_country(value)
    assert raised.value.field == "country"


# ----------------------------------------------------------------------------------------------
# Date of birth, gender, external_id
# ----------------------------------------------------------------------------------------------

TODAY = date(2026, 11, 28)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1997-02-16", "19970216"),
        ("2/16/1997", "19970216"),
        ("02/16/1997", "19970216"),
        ("16.02.1997", "19970216"),
        ("19970216", "19970216"),
        ("1997/02/16", "19970216"),
        ("1997.2.6", "19970206"),
        ("1900-01-01", "19000101"),
        ("2026-11-28", "20261128"),
        ("  ", ""),
    ],
)
def test_normalize_date_of_birth(value: str, expected: str) -> None:
    assert normalize_date_of_birth(value, today=TODAY) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("16/02/1997", "month/day/year"),
        ("02-03-1997", "ambiguous"),
        ("1899-12-31", "1900"),
        ("2026-11-29", "1900 to 2026"),
        ("2027-01-01", "1900 to 2026"),
        ("1997-02-30", "calendar"),
        ("2/16/97", "YYYY-MM-DD"),
        ("1997216", "YYYY-MM-DD"),
        ("February 16, 1997", "YYYY-MM-DD"),
    ],
)
def test_normalize_date_of_birth_rejects(value: str, reason: str) -> None:
    with pytest.raises(IdentifierError) as raised:
        normalize_date_of_birth(value, today=TODAY)
    assert raised.value.field == "date_of_birth"
    assert reason in raised.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("f", "f"),
        ("F", "f"),
        ("Female", "f"),
        (" woman ", "f"),
        ("m", "m"),
        ("MALE", "m"),
        ("Man", "m"),
        ("non-binary", ""),
        ("unknown", ""),
        ("", ""),
    ],
)
def test_normalize_gender(value: str, expected: str) -> None:
    assert normalize_gender(value) == expected


@pytest.mark.parametrize(("value", "expected"), [("  crm-42 ", "crm-42"), ("AbC", "AbC"), ("   ", "")])
def test_normalize_external_id_trims_and_keeps_case(value: str, expected: str) -> None:
    assert normalize_external_id(value) == expected


# ----------------------------------------------------------------------------------------------
# Browser keys
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "fb.1.1764300000000.AbCdEf",
        "fb.2.1764300000000.IwAR2xYz_-Q",
        "fb.1.1764300000000.AbCdEf.AQICAQMC",
        "fb.1.1764300000000.AbCdEf.Bg",
    ],
)
def test_normalize_fbc_keeps_value_unchanged(value: str) -> None:
    assert normalize_fbc(f" {value} ") == value


@pytest.mark.parametrize(
    "value",
    ["AbCdEf", "fb.1.1764300000.AbCdEf", "fb.x.1764300000000.AbCdEf", "fb.1.1764300000000.", "fb.1.1764300000000.a b"],
)
def test_normalize_fbc_rejects(value: str) -> None:
    with pytest.raises(IdentifierError) as raised:
        normalize_fbc(value)
    assert raised.value.field == "fbc"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("fb.1.1764300000000.123456789", True),
        ("fb.1.1764300000000.123456789.AQICAQMC", True),
        ("fb.1.1764300000000.abc", False),
        ("fb.1.176430000000.123456789", False),
    ],
)
def test_normalize_fbp(value: str, valid: bool) -> None:
    if valid:
        assert normalize_fbp(value) == value
    else:
        with pytest.raises(IdentifierError):
            normalize_fbp(value)


def test_fbc_from_url_preserves_fbclid_case() -> None:
    now = datetime(2026, 11, 28, 10, 0, 0, 123000, tzinfo=UTC)
    fbc = fbc_from_url("https://shop.example/p?utm_source=fb&fbclid=IwAR2xYz_-QaBc&x=1", now)
    assert fbc == f"fb.1.{int(now.timestamp() * 1000)}.IwAR2xYz_-QaBc"
    assert fbc == "fb.1.1795860000123.IwAR2xYz_-QaBc"


@pytest.mark.parametrize(
    "url", ["https://shop.example/p", "https://shop.example/p?fbclid=", "https://shop.example/p?fbclid=a.b", "::"]
)
def test_fbc_from_url_without_usable_fbclid(url: str) -> None:
    assert fbc_from_url(url, datetime(2026, 11, 28, tzinfo=UTC)) is None


def test_fbc_from_url_requires_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        fbc_from_url("https://x.example/?fbclid=A", datetime(2026, 11, 28))


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("203.0.113.7", True),
        ("2001:db8::1", True),
        ("::ffff:203.0.113.7", True),
        ("203.0.113.7.AQICAQMC", True),  # Parameter Builder appendix
        ("2001:db8::1.AQICAQMC", True),
        ("256.0.0.1", False),
        ("203.0.113.07", False),
        ("203.0.113", False),
        ("203.0.113.7.12345678", False),
        ("localhost", False),
    ],
)
def test_normalize_client_ip_address(value: str, valid: bool) -> None:
    if valid:
        assert normalize_client_ip_address(f" {value}") == value
    else:
        with pytest.raises(IdentifierError) as raised:
            normalize_client_ip_address(value)
        assert raised.value.field == "ip_address"


# ----------------------------------------------------------------------------------------------
# normalize_user
# ----------------------------------------------------------------------------------------------


def test_normalize_user_contract_example() -> None:
    result = normalize_user(
        {
            "email": "Ann@Example.com",
            "phone": "+1 650 555 1212",
            "external_id": "crm-42",
            "first_name": "Ann",
            "last_name": "Lee",
            "city": "San Francisco",
            "state": "CA",
            "zip": "94105",
            "country": "US",
            "date_of_birth": "1990-02-16",
            "gender": "female",
            "fbp": "fb.1.1764300000000.123456789",
            "fbc": "fb.1.1764300000000.AbCdEf",
            "ip_address": "203.0.113.7",
            "user_agent": "Mozilla/5.0 ...",
        }
    )
    expected_values = {
        "em": "ann@example.com",
        "ph": "16505551212",
        "external_id": "crm-42",
        "fn": "ann",
        "ln": "lee",
        "ct": "sanfrancisco",
        "st": "ca",
        "zp": "94105",
        "country": "us",
        "db": "19900216",
        "ge": "f",
    }
    assert result.errors == {}
    assert dict(result.values) == expected_values
    assert dict(result.hashes) == {key: digest(value) for key, value in expected_values.items()}
    assert dict(result.browser) == {
        "fbp": "fb.1.1764300000000.123456789",
        "fbc": "fb.1.1764300000000.AbCdEf",
        "client_ip_address": "203.0.113.7",
        "client_user_agent": "Mozilla/5.0 ...",
    }


def test_normalize_user_phone_region_order() -> None:
    national = {"phone": "020 7946 0958"}
    assert normalize_user(national, phone_regions=["GB"]).values["ph"] == "442079460958"
    # The profile's own country comes before the event's region.
    assert normalize_user({**national, "country": "United Kingdom"}, phone_regions=["US"]).values == {
        "ph": "442079460958",
        "country": "gb",
    }
    rejected = normalize_user({"phone": "6505551212"})
    assert "ph" not in rejected.hashes
    assert "country code" in rejected.errors["user.phone"]
    # An invalid country is reported and does not serve as the phone region.
    bad_country = normalize_user({"phone": "(650)555-1212", "country": "Atlantis"}, phone_regions=["US"])
    assert bad_country.values == {"ph": "16505551212"}
    assert set(bad_country.errors) == {"user.country"}


def test_normalize_user_prehashed_and_md5() -> None:
    upper = hashlib.sha256(b"ann@example.com").hexdigest().upper()
    result = normalize_user(
        {
            "email": f" {upper} ",
            "first_name": "D41D8CD98F00B204E9800998ECF8427E",
            "external_id": "0123456789abcdef0123456789abcdef",
        }
    )
    assert result.hashes["em"] == upper.lower()  # passed through, never hashed twice
    assert "em" not in result.values  # no plaintext for pre-hashed input
    assert "fn" not in result.hashes
    assert "MD5" in result.errors["user.first_name"]
    # 32 hex digits are an ordinary ID in external_id (a UUID without dashes): hashed.
    assert result.hashes["external_id"] == digest("0123456789abcdef0123456789abcdef")


def test_normalize_user_never_hashes_empty_values() -> None:
    result = normalize_user(
        {"email": "  ", "first_name": "   ", "last_name": "--", "city": "", "gender": "other", "user_agent": " "}
    )
    assert result.values == {}
    assert result.hashes == {}
    assert result.browser == {}
    assert result.errors == {}
    assert EMPTY_DIGEST not in result.hashes.values()


def test_normalize_user_errors_name_the_field() -> None:
    result = normalize_user(
        {
            "email": "nope",
            "shoe_size": "42",
            "first_name": 7,
            "phone": ["+16505551212"],
            "zip": True,
            "date_of_birth": "31/12/1990",
            "fbc": "AbCdEf",
            "ip_address": "999.1.1.1",
            "last_name": None,
        }
    )
    assert set(result.errors) == {
        "user.email",
        "user.shoe_size",
        "user.first_name",
        "user.phone",
        "user.zip",
        "user.date_of_birth",
        "user.fbc",
        "user.ip_address",
    }
    assert result.errors["user.shoe_size"] == "unknown field"
    assert result.errors["user.first_name"] == "must be a string, not int"
    assert result.errors["user.phone"] == "must be a string or an integer, not list"
    assert result.hashes == {}
    assert result.browser == {}


def test_normalize_user_integers_for_phone_and_zip() -> None:
    result = normalize_user({"phone": 16505551212, "zip": 2134, "country": "us"})
    assert result.values == {"ph": "16505551212", "zp": "02134", "country": "us"}


def test_normalize_user_rejects_future_birth_date() -> None:
    result = normalize_user({"date_of_birth": "2999-01-01"})
    assert "db" not in result.hashes
    assert "future" in result.errors["user.date_of_birth"]


def test_normalize_user_state_and_zip_follow_country() -> None:
    result = normalize_user({"state": "Bayern", "zip": "12345-6789", "country": "Germany"})
    assert result.values == {"st": "bayern", "zp": "123456789", "country": "de"}
    us = normalize_user({"state": "New York", "zip": "10001 1234", "country": "USA"})
    assert us.values == {"st": "ny", "zp": "10001", "country": "us"}


# ----------------------------------------------------------------------------------------------
# normalize_user against a straightforward reference
# ----------------------------------------------------------------------------------------------

# normalize_user is optimized (one bound entry function per field, cached normalize-and-hash steps);
# this reference spells the contract out with the public normalize_* functions and sha256_hex, and
# the two must agree value for value, error for error, in the same order.

_REFERENCE_NORMALIZERS = {
    "email": lambda text, country, regions: normalize_email(text),
    "phone": lambda text, country, regions: normalize_phone(text, regions),
    "first_name": lambda text, country, regions: normalize_name(text),
    "last_name": lambda text, country, regions: normalize_name(text),
    "city": lambda text, country, regions: normalize_city(text),
    "state": lambda text, country, regions: normalize_state(text, country or None),
    "zip": lambda text, country, regions: normalize_zip(text, country or None),
    "country": lambda text, country, regions: normalize_country(text),
    "gender": lambda text, country, regions: normalize_gender(text),
    "external_id": lambda text, country, regions: normalize_external_id(text),
}
_REFERENCE_BROWSER = {
    "fbp": normalize_fbp,
    "fbc": normalize_fbc,
    "ip_address": normalize_client_ip_address,
    "user_agent": normalize_client_user_agent,
}


def _reference_hashed(field: str, text: str, country: str, regions: list) -> tuple[str, str]:
    if field == "date_of_birth":
        return reference_entry(field, text, reference_date_of_birth)
    return reference_entry(field, text, lambda value: _REFERENCE_NORMALIZERS[field](value, country, regions))


def _reference_normalize_user(user: dict, phone_regions: list) -> tuple[list, list, list, list]:
    values, hashes, browser, errors = {}, {}, {}, {}
    country = ""
    if type(user.get("country")) is str:
        try:
            country = _reference_hashed("country", user["country"], "", [])[0]
        except IdentifierError as error:
            errors["user.country"] = error.message
    regions = [country, *phone_regions] if country else list(phone_regions)
    for field, raw in user.items():
        if field not in HASHED_KEYS and field not in BROWSER_KEYS:
            errors[f"user.{field}"] = "unknown field"
            continue
        if raw is None:
            continue
        if type(raw) is int and field in ("phone", "zip"):
            raw = str(raw).zfill(5) if field == "zip" and country == "us" else str(raw)
        elif type(raw) is not str:
            allowed = "a string or an integer" if field in ("phone", "zip") else "a string"
            errors[f"user.{field}"] = f"must be {allowed}, not {type(raw).__name__}"
            continue
        try:
            if field in BROWSER_KEYS:
                plain = _REFERENCE_BROWSER[field](raw)
                if plain:
                    browser[BROWSER_KEYS[field]] = plain
                continue
            normalized, hashed = _reference_hashed(field, raw, country, regions)
        except IdentifierError as error:
            errors[f"user.{field}"] = error.message
            continue
        if hashed:
            hashes[HASHED_KEYS[field]] = hashed
        if normalized:
            values[HASHED_KEYS[field]] = normalized
    return [list(mapping.items()) for mapping in (values, hashes, browser, errors)]


# A small copy of bench/identity.py's generator, plus awkward values mixed in at random.
_FIRST = ["Ann", "John", "Valéry", "Zoë", "O'Neil", "Mary-Jane", "José", "Łukasz", "Chloé", "Ahmed", "Mei", "정"]
_LAST = ["Lee", "Smith", "O'Brien", "García-López", "Müller", "Nguyen", "Kowalski", "Dupont", "Rossi", "Kim"]
_PLACES = {
    "US": [("San Francisco", "CA", "94105"), ("New York", "New York", "10001-1234"), ("Boston", "MA", "02134")],
    "GB": [("London", "", "SW1A 1AA"), ("Manchester", "", "M1 1AE")],
    "DE": [("Berlin", "Berlin", "10115"), ("München", "Bayern", "80331")],
}
_COUNTRY_SPELLINGS = {"US": ["US", "us", "United States", "USA"], "GB": ["GB", "UK", "United Kingdom"], "DE": ["de"]}
_PHONES = {
    "US": ["+1 {a} {b} {c}", "({a}){b}-{c}", "{a}.{b}.{c}", "+1{a}{b}{c}", "1-{a}-{b}-{c}", "011 49 30 {c}{c}"],
    "GB": ["+44 7700 9{c}1", "07700 9{c}1", "+44 (0)20 79{c}", "0044 20 7946 {c}"],
    "DE": ["+49 30 {b}{c}", "030 {b}{c}", "0030 {b}"],
}
_AWKWARD = [
    None,
    "",
    "   ",
    42,
    2134,
    True,
    ["x"],
    1.5,
    "D41D8CD98F00B204E9800998ECF8427E",
    hashlib.sha256(b"ann@example.com").hexdigest().upper(),
    "0123456789abcdef0123456789abcdef",
    "Atlantis",
    "Deutschland",
    "2999-01-01",
    "1899-12-31",
    "31/12/1990",
    "02-03-1997",
    "1997216",
    "nope",
    "ann@@example.com",
    "Ann@Exämple.com",
    "1-800-FLOWERS",
    "+1 650 555 1212 ext 9",
    "+1\t650\x1f555\x0b1212",
    "(650)\u00a0555-1212",
    "650\u2013555\u20131212",
    "++16505551212",
    "12",
    "Île-de-France",
    unicodedata.normalize("NFD", "Zoë"),
    "İstanbul",
    "fb.1.1764300000000.AbCdEf",
    "fb.1.1764300000000.123456789.AbCdEfGh",
    "999.1.1.1",
    "2001:db8::1",
    "203.0.113.7.AbCdEfGh",
    "female",
    "nonbinary",
    "12345 6789",
    "100-0001",
]


def _random_user(rng: random.Random, n: int) -> tuple[dict, list]:
    market = rng.choice(list(_PLACES))
    city, state, zip_code = rng.choice(_PLACES[market])
    a, b, c = rng.choice(["415", "650", "212"]), f"{rng.randint(200, 999)}", f"{rng.randint(0, 9999):04d}"
    year, month, day = rng.randint(1890, 2030), rng.randint(1, 12), rng.randint(1, 28)
    user: dict = {
        "email": rng.choice([f"ann.lee{n}@example.com", f"  ANN.LEE{n}@GMAIL.COM ", f"zoë{n}@example.de"]),
        "phone": rng.choice(_PHONES[market]).format(a=a, b=b, c=c),
        "external_id": rng.choice([f"crm-{n}", f" CRM-{n} "]),
        "first_name": rng.choice(_FIRST),
        "last_name": rng.choice(_LAST),
        "city": city,
        "state": state,
        "zip": zip_code,
        "country": rng.choice(_COUNTRY_SPELLINGS[market]),
        "date_of_birth": rng.choice(
            [f"{year}-{month:02d}-{day:02d}", f"{month}/{day}/{year}", f"{day}.{month}.{year}"]
        ),
        "gender": rng.choice(["f", "m", "Female", "male", "F", "woman", "nonbinary", ""]),
        "fbp": f"fb.1.17643{rng.randint(10**7, 10**8 - 1)}.{rng.randint(10**9, 10**10 - 1)}",
        "fbc": f"fb.1.17643{rng.randint(10**7, 10**8 - 1)}.IwAR{rng.getrandbits(64):x}",
        "ip_address": f"203.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "user_agent": "Mozilla/5.0",
    }
    for field in list(user):
        roll = rng.random()
        if roll < 0.1:
            del user[field]
        elif roll < 0.25:
            user[field] = rng.choice(_AWKWARD)
    if rng.random() < 0.05:
        user["shoe_size"] = rng.choice(["42", None, 42])
    # Shuffle the key order too: outputs follow it, and the country is read first wherever it is.
    items = list(user.items())
    rng.shuffle(items)
    phone_regions = rng.choice([[], ["US-CA"], ["GB"], [None, "EEA", "DE"], ["*"]])
    return dict(items), phone_regions


def test_normalize_user_agrees_with_reference_on_random_users() -> None:
    rng = random.Random(20261128)
    users = [_random_user(rng, n) for n in range(3000)]
    outcomes = []
    for user, phone_regions in users:
        result = normalize_user(user, phone_regions=phone_regions)
        actual = [list(mapping.items()) for mapping in (result.values, result.hashes, result.browser, result.errors)]
        expected = _reference_normalize_user(user, phone_regions)
        assert actual == expected, user
        assert result == NormalizedUser(*(dict(items) for items in expected))
        outcomes.append(result)
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcomes[0].values = {}  # type: ignore[misc]
    # The corpus exercises both accepted values and every kind of rejection.
    assert sum(len(outcome.values) for outcome in outcomes) > 15_000
    rejected = {field for outcome in outcomes for field in outcome.errors}
    assert rejected == {f"user.{field}" for field in (*HASHED_KEYS, *BROWSER_KEYS, "shoe_size")}


def test_normalize_user_agrees_with_reference_on_the_benchmark_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # The rows bench/identity.py times: the speed it reports is that of these exact outputs.
    bench = Path(__file__).resolve().parents[3] / "bench"
    monkeypatch.syspath_prepend(str(bench))  # identity.py imports its sibling identity_db
    spec = importlib.util.spec_from_file_location("bench_identity_for_tests", bench / "identity.py")
    assert spec is not None
    assert spec.loader is not None
    identity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(identity)
    rows = identity.synthetic_users(3000, 20261128)
    for user, region in rows:
        result = normalize_user(user, phone_regions=(region,))
        actual = [list(mapping.items()) for mapping in (result.values, result.hashes, result.browser, result.errors)]
        assert actual == _reference_normalize_user(user, [region]), user
    assert sum("em" in normalize_user(user).values for user, _ in rows) == len(rows)
