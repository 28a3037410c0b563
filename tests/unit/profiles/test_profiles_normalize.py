"""Identifier normalization and hashing: what reaches Meta.

Expected digests are computed here with hashlib over the expected normalized string, except Meta's
published e-mail digest, which is pinned literally.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from datetime import UTC, date, datetime

import phonenumbers
import pytest

from hub.profiles import normalize as normalize_module
from hub.profiles.normalize import (
    IdentifierError,
    fbc_from_url,
    is_md5_hex,
    is_sha256_hex,
    normalize_city,
    normalize_client_ip_address,
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
