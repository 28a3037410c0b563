"""Region codes and region-rule selection.

A person's region is an ISO 3166-1 alpha-2 country (`DE`) or an ISO 3166-2 subdivision (`US-CA`). A rule's
selector may also be a group (`EEA`, `EU`) or `*` (everyone, including people whose region is unknown). The most
specific matching selector wins: subdivision (3) > country (2) > group (1) > `*` (0); between two groups the one
with fewer members wins (`EU` is more specific than `EEA`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import pycountry

WILDCARD = "*"

EU_MEMBER_STATES: frozenset[str] = frozenset(
    {"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE"}
    | {"IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"}
)
# Territories with their own ISO 3166-1 code that are part of the EU (outermost regions of France, and the Åland
# Islands of Finland): GDPR applies there, and geo-IP databases report these codes rather than FR/FI.
EU_TERRITORIES: frozenset[str] = frozenset({"GF", "GP", "MQ", "RE", "YT", "MF", "AX"})
EU: frozenset[str] = EU_MEMBER_STATES | EU_TERRITORIES
# EEA = EU + Iceland, Liechtenstein, Norway (consent.md §6).
EEA: frozenset[str] = EU | {"IS", "LI", "NO"}

GROUPS: dict[str, frozenset[str]] = {"EU": EU, "EEA": EEA}

# ISO 3166-1 "exceptionally reserved" codes people use in practice: UK for GB, EL (EU usage) for GR.
_COUNTRY_ALIASES = {"UK": "GB", "EL": "GR"}

SPECIFICITY_WILDCARD = 0
SPECIFICITY_GROUP = 1
SPECIFICITY_COUNTRY = 2
SPECIFICITY_SUBDIVISION = 3


@lru_cache(maxsize=4096)
def normalize_region(value: str | None) -> str | None:
    """A person's region as `DE` or `US-CA`, or None when absent or not a real ISO 3166 code.

    Case and surrounding space are ignored and `_` is accepted for `-` (`us_ca` → `US-CA`). Groups and `*` are
    not regions (use `normalize_selector` for rule selectors).
    """
    if not isinstance(value, str):
        return None
    code = value.strip().upper().replace("_", "-")
    if not code:
        return None
    if "-" in code:
        country, _, rest = code.partition("-")
        code = f"{_COUNTRY_ALIASES.get(country, country)}-{rest}"
        return code if pycountry.subdivisions.get(code=code) is not None else None
    code = _COUNTRY_ALIASES.get(code, code)
    if len(code) == 2 and pycountry.countries.get(alpha_2=code) is not None:
        return code
    return None


def normalize_selector(value: str | None) -> str | None:
    """A rule selector: `*`, a group name (`EEA`, `EU`), a country or a subdivision; None when invalid."""
    if not isinstance(value, str):
        return None
    return _normalize_selector_text(value)


@lru_cache(maxsize=4096)
def _normalize_selector_text(value: str) -> str | None:
    # Cached: the scheduler asks for every rule's selector for every event it decides.
    code = value.strip().upper()
    if code == WILDCARD or code in GROUPS:
        return code
    return normalize_region(code)


def country_of(region: str) -> str:
    """`US-CA` → `US`; `DE` → `DE`."""
    return region.partition("-")[0]


def specificity(selector: str) -> int:
    """subdivision 3 > country 2 > group 1 > `*` 0. Raises ValueError for an invalid selector."""
    code = normalize_selector(selector)
    if code is None:
        raise ValueError(f"{selector!r} is not a region selector (ISO country, ISO subdivision, EEA, EU or *)")
    if code == WILDCARD:
        return SPECIFICITY_WILDCARD
    if code in GROUPS:
        return SPECIFICITY_GROUP
    return SPECIFICITY_SUBDIVISION if "-" in code else SPECIFICITY_COUNTRY


def region_matches(selector: str, region: str | None) -> bool:
    """Whether a rule for `selector` covers a person in `region` (None = unknown: only `*` covers it)."""
    code = normalize_selector(selector)
    if code is None:
        return False
    if code == WILDCARD:
        return True
    person = normalize_region(region)
    if person is None:
        return False
    if code in GROUPS:
        return country_of(person) in GROUPS[code]
    if "-" in code:
        return person == code
    return country_of(person) == code


class RegionSelected(Protocol):
    @property
    def region(self) -> str: ...


RuleT = TypeVar("RuleT", bound=RegionSelected)


@lru_cache(maxsize=4096)
def _rank(selector: str) -> tuple[int, int]:
    code = normalize_selector(selector) or WILDCARD
    # Among groups, fewer members = more specific; negate so that max() prefers the smaller group.
    return (specificity(code), -len(GROUPS.get(code, ())))


def select_rule(rules: Iterable[RuleT], region: str | None) -> RuleT | None:
    """The most specific rule covering `region`; an unknown or invalid region gets the `*` rule.

    Returns None when nothing matches (no `*` rule configured); callers must treat that as "do not send". Rules
    with invalid selectors never match. On an exact tie (two rules with the same selector) the first one wins.
    """
    best: RuleT | None = None
    best_rank: tuple[int, int] | None = None
    for rule in rules:
        if not region_matches(rule.region, region):
            continue
        rank = _rank(rule.region)
        if best_rank is None or rank > best_rank:
            best, best_rank = rule, rank
    return best


class RuleTable(tuple):  # type: ignore[type-arg]
    """An ordered collection of rules that remembers `select_rule`'s answer for each region it was asked about.

    A scheduler batch decides many events against the same rules, and events come from few regions: selecting
    once per region instead of scanning every rule's selector for every event. It is a tuple of the rules, so it
    goes wherever a sequence of rules does; the answers are exactly `select_rule(rules, region)`'s.
    """

    _selected: dict[str | None, Any]

    def __new__(cls, rules: Iterable[object]) -> RuleTable:
        table = super().__new__(cls, rules)
        table._selected = {}
        return table

    def select(self, region: str | None) -> Any:
        """`select_rule(self, region)`, computed once per region."""
        try:
            return self._selected[region]
        except KeyError:
            rule = self._selected[region] = select_rule(self, region)
            return rule


# Meta's `data_processing_options_state` codes (reference/capi.md §7 [DPO], upd. 2026-05-21). Meta applies LDU
# only for people in these states; elsewhere LDU has no effect.
LDU_STATE_CODES: dict[str, int] = {
    "US-CA": 1000,
    "US-CO": 1001,
    "US-CT": 1002,
    "US-FL": 1003,
    "US-OR": 1004,
    "US-TX": 1005,
    "US-MT": 1006,
    "US-DE": 1007,
    "US-NE": 1008,
    "US-NH": 1009,
    "US-NJ": 1010,
    "US-MN": 1011,
    "US-MD": 1012,
    "US-RI": 1013,
}
LDU_COUNTRY_US = 1
LDU_GEOLOCATE = 0


def ldu_options(region: str | None) -> tuple[list[str], int, int]:
    """`(data_processing_options, _country, _state)` for a person in `region`.

    A covered state gets explicit codes (`US-CA` → `(["LDU"], 1, 1000)`); anything else gets `(["LDU"], 0, 0)`,
    which asks Meta to geolocate. Meta: country and state are sent together, and the state is required when LDU
    is sent without client_ip_address (capi.md §7), so we never send a country without a state.
    """
    code = LDU_STATE_CODES.get(normalize_region(region) or "")
    if code is None:
        return (["LDU"], LDU_GEOLOCATE, LDU_GEOLOCATE)
    return (["LDU"], LDU_COUNTRY_US, code)
