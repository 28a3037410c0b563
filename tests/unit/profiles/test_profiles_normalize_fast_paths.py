"""normalize_user's fast paths against the general code they stand in for.

Each entry function of hub.profiles.normalize answers the common shapes of a field (ASCII e-mail
addresses, US ZIPs, birth dates, phone numbers of digits and separators) without the general
normalizer. These tests feed both the same tricky inputs and require the same normalized value, the same
hash and the same rejection (field and message), byte for byte.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, date, datetime

import email_validator
import phonenumbers
import pytest

from hub.profiles import normalize as normalize_module
from hub.profiles.normalize import (
    IdentifierError,
    normalize_email,
    normalize_external_id,
    normalize_phone,
    normalize_zip,
)
from tests.support.normalize_reference import reference_date_of_birth, reference_entry


def _outcome(function: Callable[..., object], *args: object) -> object:
    try:
        return function(*args)
    except IdentifierError as error:
        return ("rejected", error.field, error.message)


# ----------------------------------------------------------------------------------------------
# E-mail
# ----------------------------------------------------------------------------------------------

_EMAILS = [
    "ann@example.com",
    " ANN@EXAMPLE.COM ",
    "\tann.lee@example.com\n",
    "a.b@c.d.e.fr",
    ".a@example.com",
    "a.@example.com",
    "a..b@example.com",
    "a@example..com",
    "a@.example.com",
    "a@example.com.",
    "a@1.2.3.4",
    "a@[1.2.3.4]",
    "a" * 64 + "@example.com",
    "a" * 65 + "@example.com",
    "a@" + "b" * 63 + ".com",
    "a@" + "b" * 64 + ".com",
    "a@" + ("b" * 60 + ".") * 4 + "co",
    "a@" + ("b" * 60 + ".") * 5 + "com",
    "a" * 10 + "@" + "b" * 250,
    "x@ex-ample.io",
    "x@-example.io",
    "x@example-.io",
    "x@ex--ample.com",
    "x@example.c",
    "x@example.123",
    "x@123.com",
    "x@localhost",
    "x@example",
    "x@example.invalid",
    "x@example.local",
    "x@example.test",
    "x@example.onion",
    "x@example.arpa",
    "x@xn--bcher-kva.example",
    "x@xn--example.com",
    "x@exa_mple.com",
    '"quoted"@example.com',
    "a+b@example.com",
    "a/b=c?d^e`f{g|h}i~j@example.com",
    "!#$%&'*+/=?^_`{|}~-@example.com",
    "ann @example.com",
    "ann@ex ample.com",
    "a\x00b@example.com",
    "ann@@example.com",
    "@example.com",
    "ann@",
    "ann",
    "",
    "   ",
    "ann@exämple.com",
    "zoë@example.de",
    unicodedata.normalize("NFD", "zoë@example.de"),
    "İ@example.com",
    "\u212aim@example.com",  # the Kelvin sign lowercases to an ASCII "k"
    "\uff21\uff2e\uff2e@example.com"  # fullwidth letters,
    "ann@example.com\u200b",
    "D41D8CD98F00B204E9800998ECF8427E",
    hashlib.sha256(b"ann@example.com").hexdigest().upper(),
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
]


def _email_corpus() -> list[str]:
    corpus = list(_EMAILS)
    for local in ["a", "ann.lee", "x_y", "1", "-", "a-", "A.B"]:
        for domain in ["gmail.com", "Yahoo.COM", "hotmail.co.uk", "web.de", "a.b", "example", "1.1", "a-.com", "x.y.z"]:
            corpus.append(f"{local}@{domain}")
    return corpus


@pytest.mark.parametrize("value", _email_corpus())
def test_email_entry_agrees_with_normalize_email(value: str) -> None:
    fast = _outcome(normalize_module._email_entry, value)
    assert fast == _outcome(reference_entry, "email", value, normalize_email)


@pytest.mark.parametrize("value", _email_corpus())
def test_ascii_email_shape_is_valid_exactly_when_its_domain_is(value: str) -> None:
    # The premise of the e-mail fast path: for an ASCII dot-atom address within the length limit,
    # email-validator's verdict is its verdict on the domain alone.
    email = value.strip().lower()
    match = normalize_module._ASCII_EMAIL.fullmatch(email)
    if match is None or len(email) > normalize_module._EMAIL_MAX_LENGTH:
        return
    try:
        email_validator.validate_email(email, check_deliverability=False)
        valid = True
    except email_validator.EmailNotValidError:
        valid = False
    assert (normalize_module._email_domain_problem(match["domain"]) is None) is valid


# ----------------------------------------------------------------------------------------------
# ZIP
# ----------------------------------------------------------------------------------------------

_ZIPS = [
    "94105",
    "94105-1234",
    "94105 1234",
    "941051234",
    " 94105 ",
    "\t94105-1234\n",
    "9410",
    "941051",
    "94105-123",
    "94105-12345",
    "94105-",
    "-94105",
    "94105--1234",
    "94105_1234",
    "94105/1234",
    "94105.1234",
    "94105a1234",
    "94105A1234",
    "9410a-1234",
    "94105-123a",
    "94 105",
    "02134",
    "00000",
    "00000-0000",
    "\uff11\uff12\uff13\uff14\uff15"  # fullwidth digits,
    "12345-\uff16\uff17\uff18\uff19",
    "9410\uff15",
    "٩٤١٠٥",
    "abcde",
    "9410a",
    "A1B 2C3",
    "SW1A 1AA",
    "M1 1AE",
    "100-0001",
    "01310-100",
    "",
    "   ",
    "D41D8CD98F00B204E9800998ECF8427E",
    hashlib.sha256(b"94105").hexdigest(),
]


@pytest.mark.parametrize("country", ["us", "gb", "de", "jp", ""])
def test_zip_entry_agrees_with_normalize_zip(country: str) -> None:
    rng = random.Random(3)
    corpus = _ZIPS + [
        f"{rng.randint(0, 99999):05d}"
        + rng.choice(["", f"-{rng.randint(0, 9999):04d}", f" {rng.randint(0, 9999):04d}"])
        for _ in range(300)
    ]
    for value in corpus:
        fast = _outcome(normalize_module._zip_entry, value, country)
        slow = _outcome(reference_entry, "zip", value, lambda text: normalize_zip(text, country or None))
        assert fast == slow, value


# ----------------------------------------------------------------------------------------------
# Date of birth
# ----------------------------------------------------------------------------------------------


def _date_of_birth_corpus() -> list[str]:
    today = datetime.now(UTC).date()
    corpus = [
        "1997-02-16",
        "1997/02/16",
        "1997.02.16",
        "19970216",
        "2/16/1997",
        "02/16/1997",
        "16.02.1997",
        "16.2.1997",
        "16/02/1997",
        "12/13/2000",
        "13/12/2000",
        "13/13/2000",
        "02-03-1997",
        "1997216",
        "1997-2-16",
        "1997-2-1",
        "1997-13-01",
        "1997-02-30",
        "2/29/2000",
        "2/29/1900",
        "29.2.2001",
        "1900-01-01",
        "1899-12-31",
        "0999-01-01",
        "0001-01-01",
        "0000-01-01",
        "9999-12-31",
        "2999-01-01",
        " 1997-02-16 ",
        "1997\u201302\u201316"  # en dashes,
        "\uff11\uff19\uff19\uff17-02-16",
        "١٩٩٧-02-16",
        "1997-02/16",
        "1997-002-16",
        "1997-02-16T00:00",
        "1/1/1",
        "",
        "   ",
        "nope",
        "D41D8CD98F00B204E9800998ECF8427E",
        hashlib.sha256(b"19970216").hexdigest(),
    ]
    for day in (today, date.fromordinal(today.toordinal() - 1), date.fromordinal(today.toordinal() + 1)):
        corpus += [day.isoformat(), day.strftime("%Y%m%d"), f"{day.month}/{day.day}/{day.year}"]
    rng = random.Random(5)
    for _ in range(2000):
        year, month, day = rng.randint(1880, 2030), rng.randint(0, 13), rng.randint(0, 32)
        corpus.append(
            rng.choice(
                [
                    f"{year}-{month:02d}-{day:02d}",
                    f"{month}/{day}/{year}",
                    f"{year}{month:02d}{day:02d}",
                    f"{day}.{month}.{year}",
                    f"{year}/{month}/{day}",
                ]
            )
        )
    return corpus


def test_date_of_birth_entry_agrees_with_normalize_date_of_birth() -> None:
    for value in _date_of_birth_corpus():
        fast = _outcome(normalize_module._date_of_birth_entry, value)
        slow = _outcome(reference_entry, "date_of_birth", value, reference_date_of_birth)
        assert fast == slow, value


@pytest.mark.parametrize("year", [1, 9, 99, 999, 1000, 1900, 1997, 9999])
def test_date_of_birth_is_formatted_as_yyyymmdd_for_every_year(year: int) -> None:
    for month, day in [(1, 1), (2, 9), (10, 10), (12, 31)]:
        _, formatted = normalize_module._parse_date_of_birth.__wrapped__(f"{year:04d}-{month:02d}-{day:02d}")
        assert formatted == f"{year:04d}{month:02d}{day:02d}"


# ----------------------------------------------------------------------------------------------
# External ID
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "crm-1",
        " CRM-1 ",
        "",
        "  ",
        "é",
        "a\u00a0",
        "D41D8CD98F00B204E9800998ECF8427E",
        hashlib.sha256(b"x").hexdigest().upper(),
    ],
)
def test_external_id_entry_agrees_with_normalize_external_id(value: str) -> None:
    fast = _outcome(normalize_module._external_id_entry, value)
    assert fast == _outcome(reference_entry, "external_id", value, normalize_external_id)


# ----------------------------------------------------------------------------------------------
# Phone: the numbering-plan tables the fast path reads
# ----------------------------------------------------------------------------------------------


def test_length_reason_is_phonenumbers_length_test_for_every_calling_code() -> None:
    for country_code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        for length in range(1, 21):
            national = "5" * length
            number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
            expected = phonenumbers.is_possible_number_with_reason(number)
            assert normalize_module._length_reason(country_code, national) == expected, (country_code, length)


def _plans() -> list[normalize_module._NumberingPlan]:
    plans = [normalize_module._region_plan(region) for region in sorted(phonenumbers.SUPPORTED_REGIONS)]
    plans += [normalize_module._calling_code_plan(code) for code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)]
    return [plan for plan in plans if plan is not None]


def _digit_strings() -> list[str]:
    digits = "0123456789"
    strings = [a + b + c + "5555555" for a in digits for b in digits for c in digits]
    strings += ["0" + a + b + c + "55555" for a in digits for b in digits for c in digits]
    strings += ["180020555555", "1800205", "0180020555", "06123456", "8123456", "0011441234", "011441234"]
    return strings


def test_digit_alternatives_match_as_the_metadata_regexes_do() -> None:
    strings = _digit_strings()
    plans = _plans()
    assert any(plan.national_alternatives is not None and len(plan.national_alternatives) > 1 for plan in plans)
    for plan in plans:
        if plan.international_alternatives is not None:
            for text in strings:
                expected = plan.international_prefix.match(text) is not None
                assert text.startswith(plan.international_alternatives) is expected, (plan.country_code, text)
        if plan.national_alternatives is not None:
            for text in strings:
                match = plan.national_prefix.match(text)
                assert text.startswith(plan.national_alternatives) is (match is not None), (plan.country_code, text)
                if match is not None and text[0] == "0" and plan.zero_is_national_prefix:
                    assert match.group() == "0", (plan.country_code, text)
                    assert not match.groups(), (plan.country_code, text)


def test_reading_prefixes_as_digit_strings_is_exact_only_for_plain_digit_patterns() -> None:
    assert normalize_module._digit_alternatives("0|180020") == ("0", "180020")
    assert normalize_module._digit_alternatives("011") == ("011",)
    assert normalize_module._digit_alternatives("0(?:0|11)") is None
    assert normalize_module._digit_alternatives("00[1-9]") is None
    assert normalize_module._digit_alternatives("0|") is None
    assert normalize_module._digit_alternatives(None) is None
    assert re.fullmatch(normalize_module._DIGIT_ALTERNATIVES, "0|1|22")


# ----------------------------------------------------------------------------------------------
# Phone: the fast path against phonenumbers in every region
# ----------------------------------------------------------------------------------------------


def _region_phone_corpus() -> list[tuple[str, str]]:
    """Example numbers of every region in the forms people type them, plus mangled variants."""
    rng = random.Random(11)
    number_types = [phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE]
    formats = [
        phonenumbers.PhoneNumberFormat.NATIONAL,
        phonenumbers.PhoneNumberFormat.INTERNATIONAL,
        phonenumbers.PhoneNumberFormat.E164,
    ]
    corpus = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for number_type in number_types:
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is None:
                continue
            for number_format in formats:
                text = phonenumbers.format_number(example, number_format)
                digits = re.sub(r"\D", "", text)
                variants = [text, digits, "0" + digits, digits[:-1], digits + "7", text[:-2], "+" + digits]
                corpus += [(variant, region) for variant in variants if variant]
        national = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 14)))
        corpus += [(national, region), ("0" + national, region), (f"+{national}", region)]
    # Rwanda's plan matches these with the trunk zero but not without it: parse() keeps the zero.
    corpus += [("06520286", "RW"), ("065 202 86", "RW"), ("+250 06520286", "RW")]
    return corpus


def _phone_outcome(text: str, region: str) -> object:
    return _outcome(normalize_phone, text, [region])


def test_phone_fast_path_agrees_with_phonenumbers_in_every_region(monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _region_phone_corpus()
    fast = [_phone_outcome(text, region) for text, region in corpus]
    used_fast_path = sum(
        normalize_module._fast_phone_parts(text.strip(), None if text.startswith("+") else region) is not None
        for text, region in corpus
    )
    monkeypatch.setattr(normalize_module, "_fast_phone_parts", lambda text, region: None)
    reference = [_phone_outcome(text, region) for text, region in corpus]
    assert used_fast_path > len(corpus) // 3
    mismatches = [(case, a, b) for case, a, b in zip(corpus, fast, reference, strict=True) if a != b]
    assert mismatches == []
