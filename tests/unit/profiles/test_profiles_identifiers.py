"""Pure identity-resolution policy: candidates, blocklist, limits, traits, region and masking."""

from __future__ import annotations

import pytest

from hub.profiles.identifiers import (
    DEFAULT_LIMITS,
    IdentifierCandidate,
    PolicyError,
    combine_traits,
    identifier_candidates,
    identity_policy,
    mask_identifier,
    parse_region,
    plan_attachments,
    traits_of,
    updated_region,
)
from hub.profiles.normalize import normalize_user, sha256_hex

POLICY = identity_policy()


def candidate(kind: str, value: str) -> IdentifierCandidate:
    return IdentifierCandidate(kind, sha256_hex(value), value)


def test_candidates_strong_first_in_priority_order_then_browser() -> None:
    normalized = normalize_user(
        {
            "fbc": "fb.1.1764300000000.AbCdEf",
            "phone": "+1 650 555 1212",
            "email": "Ann@Example.com",
            "fbp": "fb.1.1764300000000.123456789",
            "external_id": " crm-42 ",
            "first_name": "Ann",
        }
    )
    found = identifier_candidates(normalized)
    assert [(c.kind, c.value) for c in found] == [
        ("external_id", "crm-42"),
        ("email", "ann@example.com"),
        ("phone", "16505551212"),
        ("fbp", "fb.1.1764300000000.123456789"),
        ("fbc", "fb.1.1764300000000.AbCdEf"),
    ]
    assert found[1].value_hash == sha256_hex("ann@example.com")
    assert [c.strong for c in found] == [True, True, True, False, False]
    assert found[3].field == "user.fbp"


def test_pre_hashed_identifier_has_no_plain_value() -> None:
    digest = sha256_hex("ann@example.com")
    (only,) = identifier_candidates(normalize_user({"email": digest.upper()}))
    assert only == IdentifierCandidate("email", digest, None)


def test_no_identifiers_in_traits_only_user() -> None:
    assert identifier_candidates(normalize_user({"first_name": "Ann", "country": "US"})) == ()


@pytest.mark.parametrize(
    ("kind", "value", "blocked"),
    [
        ("email", "test@test.com", True),
        ("email", "example@example.com", True),
        ("email", "ann@example.com", False),
        ("external_id", "undefined", True),
        ("external_id", "NULL", True),
        ("external_id", "[object Object]", True),
        ("external_id", "crm-42", False),
        ("external_id", "0", True),
        ("external_id", "00042", False),
        ("phone", "10000000000", True),  # 0000000000 read as a US number
        ("phone", "491111111111", True),
        ("phone", "11234567890", True),
        ("phone", "12345678901", True),
        ("phone", "19876543210", True),
        ("phone", "16505550123", True),  # NANP fiction range 555-01xx
        ("phone", "16505551212", False),
        ("phone", "4930901820", False),
        ("phone", "33612345678", False),  # French mobile that merely contains 12345678
        ("fbp", "fb.1.1764300000000.123456789", False),
    ],
)
def test_blocklist(kind: str, value: str, blocked: bool) -> None:
    reason = POLICY.blocked_reason(candidate(kind, value))
    assert (reason is not None) is blocked, reason


def test_blocklist_matches_pre_hashed_junk() -> None:
    assert POLICY.blocked_reason(IdentifierCandidate("email", sha256_hex("test@test.com"))) is not None
    assert POLICY.blocked_reason(IdentifierCandidate("external_id", sha256_hex("undefined"))) is not None


def test_blocklist_extended_from_settings_normalizes_entries() -> None:
    policy = identity_policy(
        {"identity_blocklist": {"email": [" Info@Shop.Example "], "phone": ["+49 30 901820"], "external_id": ["X-1"]}}
    )
    assert policy.blocked_reason(candidate("email", "info@shop.example")) is not None
    assert policy.blocked_reason(candidate("phone", "4930901820")) is not None
    assert policy.blocked_reason(candidate("external_id", "X-1")) is not None
    assert policy.blocked_reason(candidate("external_id", "x-1")) is None  # external ids keep their case
    assert POLICY.blocked_reason(candidate("email", "info@shop.example")) is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"identity_blocklist": ["test@test.com"]}, "must map an identifier kind"),
        ({"identity_blocklist": {"mail": ["a@b.co"]}}, "unknown identifier kind 'mail'"),
        ({"identity_blocklist": {"email": "a@b.co"}}, "must be a list"),
        ({"identity_blocklist": {"email": ["not an email"]}}, "Not a valid e-mail"),
        ({"identity_blocklist": {"phone": ["030 901820"]}}, "no country code"),
        ({"identity_limits": {"email": 0}}, "at least 1"),
        ({"identity_limits": {"email": True}}, "at least 1"),
        ({"identity_limits": {"Email!": 2}}, "not an identifier kind"),
    ],
)
def test_invalid_policy_settings_name_the_entry(extra: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        identity_policy(extra)


def test_limits_default_and_override() -> None:
    assert POLICY.limit_for("email") == DEFAULT_LIMITS["email"] == 5
    assert POLICY.limit_for("external_id") == 1
    assert POLICY.limit_for("cmp:didomi") == 10
    assert identity_policy({"identity_limits": {"email": 2, "cmp:didomi": 1}}).limit_for("cmp:didomi") == 1


def test_plan_attachments_counts_what_is_held_and_what_it_adds() -> None:
    new = [candidate("email", "a@x.co"), candidate("email", "b@x.co"), candidate("external_id", "crm-2")]
    plan = plan_attachments(new, {"email": 4, "external_id": 1}, POLICY)
    assert [c.value for c in plan.attach] == ["a@x.co"]
    assert [c.value for c in plan.over_limit] == ["b@x.co", "crm-2"]
    assert plan_attachments([], {}, POLICY).attach == ()


def test_traits_and_combination() -> None:
    normalized = normalize_user(
        {"email": "a@x.co", "first_name": "Ann", "gender": "nonbinary", "country": "Germany", "zip": "10115"}
    )
    assert traits_of(normalized) == {"fn": "ann", "country": "de", "zp": "10115"}
    assert combine_traits({"fn": "ann", "ct": "oslo"}, None, {"fn": "anne", "ct": ""}, {"ln": "lee"}) == {
        "fn": "anne",
        "ct": "oslo",
        "ln": "lee",
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("de", "DE"), (" us-ca ", "US-CA"), ("UK", "GB"), ("us_ny", "US-NY")],
)
def test_parse_region(value: str, expected: str) -> None:
    assert parse_region(value) == expected


@pytest.mark.parametrize("value", ["EEA", "*", "XX", "US-ZZ", "", 49, None])
def test_parse_region_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"ISO 3166|must be a string"):
        parse_region(value)


@pytest.mark.parametrize(
    ("current", "context", "country", "expected"),
    [
        (None, None, None, None),
        (None, "US-CA", "us", "US-CA"),
        ("US-CA", None, "us", "US-CA"),
        ("US-CA", None, "de", "DE"),
        ("DE", "FR", "de", "FR"),
        ("DE", None, None, "DE"),
        (None, None, "de", "DE"),
    ],
)
def test_updated_region(current: str | None, context: str | None, country: str | None, expected: str | None) -> None:
    assert updated_region(current, context, country) == expected


@pytest.mark.parametrize(
    ("kind", "value", "masked"),
    [
        ("email", "ann@example.com", "a***@example.com"),
        ("phone", "16505551212", "*******1212"),
        ("phone", "12345", "***2345"),
        ("external_id", "crm-000042", "cr***42"),
        ("external_id", "short", "***"),
        ("fbp", "fb.1.1764300000000.123456789", "fb.1.1764300000000.***6789"),
        ("cmp:didomi", "0f1e2d3c-aaaa", "0f***aa"),
        ("email", None, None),
    ],
)
def test_mask_identifier(kind: str, value: str | None, masked: str | None) -> None:
    assert mask_identifier(kind, value) == masked


def test_junk_phone_shortcut_gives_the_parsed_answer() -> None:
    import random

    from hub.profiles.identifiers import _junk_phone_reason, _junk_phone_reason_parsed

    rng = random.Random(7)
    numbers = [
        "10000000000",
        "491111111111",
        "11234567890",
        "12345678901",
        "19876543210",
        "16505550123",
        "16505551212",
        "4930901820",
        "33612345678",
        "35311111111",
        "3531111111",
        "8801111111",
        "88012345678",
        "2120123456789",
        "9989876543",
        "15555550100",
    ]
    for _ in range(3000):
        length = rng.randint(7, 15)
        pattern = rng.random()
        if pattern < 0.3:  # a country code then one repeated digit
            prefix = str(rng.choice([1, 7, 33, 44, 49, 212, 353, 880, 998]))
            numbers.append(prefix + str(rng.randint(0, 9)) * (length - len(prefix)))
        elif pattern < 0.5:  # a country code then a counting run
            prefix = str(rng.choice([1, 7, 33, 44, 49, 212, 353, 880, 998]))
            run = rng.choice(_COUNTING_RUNS)
            start = rng.randint(0, 9)
            numbers.append(prefix + run[start : start + length - len(prefix)])
        elif pattern < 0.6:  # NANP 555 numbers
            numbers.append(f"1{rng.randint(200, 999)}555{rng.randint(0, 9999):04d}")
        else:
            numbers.append(str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(length - 1)))
    for digits in numbers:
        assert _junk_phone_reason(digits) == _junk_phone_reason_parsed(digits), digits


_COUNTING_RUNS = ("0123456789" * 3, "9876543210" * 3)
