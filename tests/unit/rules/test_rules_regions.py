from __future__ import annotations

from dataclasses import dataclass

import pytest

from hub.rules.regions import (
    EEA,
    EU,
    EU_MEMBER_STATES,
    LDU_STATE_CODES,
    ldu_options,
    normalize_region,
    normalize_selector,
    region_matches,
    select_rule,
    specificity,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("DE", "DE"),
        ("de", "DE"),
        ("  fr ", "FR"),
        ("us-ca", "US-CA"),
        ("US_CA", "US-CA"),
        ("ca-qc", "CA-QC"),
        ("FR-973", "FR-973"),
        ("GB-ENG", "GB-ENG"),
        ("UK", "GB"),  # ISO "exceptionally reserved" alias
        ("uk-eng", "GB-ENG"),
        ("EL", "GR"),
        ("ZZ", None),  # not assigned
        ("XK", None),  # Kosovo: user-assigned, not in ISO 3166-1
        ("US-XX", None),
        ("US-", None),
        ("DEU", None),  # alpha-3 is not accepted
        ("EEA", None),  # a group is not a person's region
        ("*", None),
        ("", None),
        ("   ", None),
        (None, None),
        (49, None),
    ],
)
def test_normalize_region(value, expected):
    assert normalize_region(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("*", "*"), (" eea ", "EEA"), ("eu", "EU"), ("us-ca", "US-CA"), ("de", "DE"), ("EUROPE", None), (None, None)],
)
def test_normalize_selector(value, expected):
    assert normalize_selector(value) == expected


def test_groups():
    assert len(EU_MEMBER_STATES) == 27
    assert {"IS", "LI", "NO"} == EEA - EU
    assert "GB" not in EEA
    assert "CH" not in EEA
    assert {"GF", "RE", "AX"} <= EU  # EU territories with their own ISO code


@pytest.mark.parametrize(
    ("selector", "expected"),
    [("US-CA", 3), ("us-ca", 3), ("US", 2), ("DE", 2), ("EEA", 1), ("EU", 1), ("*", 0)],
)
def test_specificity(selector, expected):
    assert specificity(selector) == expected


@pytest.mark.parametrize("selector", ["EUROPE", "US-XX", "", "ZZ"])
def test_specificity_rejects_invalid_selector(selector):
    with pytest.raises(ValueError, match="not a region selector"):
        specificity(selector)


@pytest.mark.parametrize(
    ("selector", "region", "expected"),
    [
        ("*", None, True),
        ("*", "JP", True),
        ("*", "garbage", True),
        ("DE", "DE", True),
        ("de", "de", True),
        ("DE", "DE-BY", True),  # a country covers its subdivisions
        ("US", "US-CA", True),
        ("US-CA", "US-CA", True),
        ("US-CA", "US", False),  # a state rule does not cover "somewhere in the US"
        ("US-CA", "US-CO", False),
        ("CA", "CA-QC", True),
        ("CA", "US-CA", False),  # Canada is not California
        ("EEA", "NO", True),
        ("EEA", "FR-973", True),
        ("EEA", "GF", True),
        ("EU", "NO", False),
        ("EEA", "GB", False),
        ("EEA", "CH", False),
        ("EEA", None, False),
        ("DE", None, False),
        ("DE", "nonsense", False),
        ("EUROPE", "DE", False),  # invalid selector never matches
    ],
)
def test_region_matches(selector, region, expected):
    assert region_matches(selector, region) is expected


@dataclass(frozen=True)
class R:
    id: str
    region: str


RULES = [R("star", "*"), R("eea", "EEA"), R("eu", "EU"), R("de", "DE"), R("us", "US"), R("usca", "US-CA")]


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("DE", "de"),  # country beats groups
        ("DE-BY", "de"),
        ("FR", "eu"),  # EU (27+) is more specific than EEA (30+)
        ("NO", "eea"),
        ("US-CA", "usca"),  # subdivision beats country
        ("US-TX", "us"),
        ("US", "us"),
        ("JP", "star"),
        (None, "star"),
        ("??", "star"),
    ],
)
def test_select_rule_most_specific_wins(region, expected):
    assert select_rule(RULES, region).id == expected
    assert select_rule(list(reversed(RULES)), region).id == expected  # independent of order


def test_select_rule_without_wildcard_returns_none():
    assert select_rule([R("de", "DE")], "FR") is None
    assert select_rule([R("de", "DE")], None) is None
    assert select_rule([], "DE") is None


def test_select_rule_tie_first_wins_and_invalid_selector_ignored():
    assert select_rule([R("a", "DE"), R("b", "de")], "DE").id == "a"
    assert select_rule([R("bad", "EUROPE"), R("star", "*")], "DE").id == "star"


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("US-CA", (["LDU"], 1, 1000)),
        ("us-ca", (["LDU"], 1, 1000)),
        ("US-CO", (["LDU"], 1, 1001)),
        ("US-CT", (["LDU"], 1, 1002)),
        ("US-FL", (["LDU"], 1, 1003)),
        ("US-OR", (["LDU"], 1, 1004)),
        ("US-TX", (["LDU"], 1, 1005)),
        ("US-MT", (["LDU"], 1, 1006)),
        ("US-DE", (["LDU"], 1, 1007)),
        ("US-NE", (["LDU"], 1, 1008)),
        ("US-NH", (["LDU"], 1, 1009)),
        ("US-NJ", (["LDU"], 1, 1010)),
        ("US-MN", (["LDU"], 1, 1011)),
        ("US-MD", (["LDU"], 1, 1012)),
        ("US-RI", (["LDU"], 1, 1013)),
        ("US-VA", (["LDU"], 0, 0)),  # no Meta state code: let Meta geolocate
        ("US", (["LDU"], 0, 0)),  # never a country without a state
        ("DE", (["LDU"], 0, 0)),
        (None, (["LDU"], 0, 0)),
    ],
)
def test_ldu_options(region, expected):
    assert ldu_options(region) == expected


def test_ldu_state_codes_are_unique_and_in_metas_range():
    codes = list(LDU_STATE_CODES.values())
    assert len(set(codes)) == len(codes)
    assert set(codes) == set(range(1000, 1014))  # capi.md §7: 1000..1013
    assert all(normalize_region(state) == state for state in LDU_STATE_CODES)


def test_ldu_options_returns_a_fresh_list():
    first = ldu_options("US-CA")
    first[0].append("X")
    assert ldu_options("US-CA") == (["LDU"], 1, 1000)
