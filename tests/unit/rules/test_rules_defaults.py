from __future__ import annotations

import pytest

from hub.rules.decision import Rule, validate_rule
from hub.rules.defaults import DEFAULT_RULES, EEA_IDENTIFIERS, LDU_STATES, MINIMAL_IDENTIFIERS, ldu_options
from hub.rules.regions import select_rule

CONSENT_MD_LDU_STATES = {"CA", "CO", "CT", "DE", "FL", "MT", "NE", "NH", "NJ", "OR", "TX"}


def test_every_default_rule_is_valid_and_unique():
    for rule in DEFAULT_RULES:
        assert validate_rule(rule) == {}, rule
    assert len({rule.region for rule in DEFAULT_RULES}) == len(DEFAULT_RULES)
    assert len({rule.id for rule in DEFAULT_RULES}) == len(DEFAULT_RULES)


def test_ldu_states_cover_consent_md_list():
    assert {state.removeprefix("US-") for state in LDU_STATES} >= CONSENT_MD_LDU_STATES


@pytest.mark.parametrize(
    ("region", "rule_region", "mode", "ldu", "identifiers"),
    [
        ("DE", "EEA", "opt_in", "never", EEA_IDENTIFIERS),
        ("FR", "EEA", "opt_in", "never", EEA_IDENTIFIERS),
        ("NO", "EEA", "opt_in", "never", EEA_IDENTIFIERS),
        ("IS", "EEA", "opt_in", "never", EEA_IDENTIFIERS),
        ("GB", "GB", "opt_in", "never", EEA_IDENTIFIERS),
        ("GB-SCT", "GB", "opt_in", "never", EEA_IDENTIFIERS),
        ("CH", "CH", "opt_in", "never", EEA_IDENTIFIERS),
        *[(f"US-{s}", f"US-{s}", "opt_out", "on_opt_out", None) for s in sorted(CONSENT_MD_LDU_STATES)],
        ("US-MN", "US-MN", "opt_out", "on_opt_out", None),
        ("US-VA", "US", "opt_out", "never", None),
        ("US-UT", "US", "opt_out", "never", None),
        ("US", "US", "opt_out", "never", None),
        ("CA-ON", "CA", "opt_out", "never", None),
        ("CA", "CA", "opt_out", "never", None),
        ("CA-QC", "CA-QC", "opt_in", "never", None),
        ("BR", "BR", "opt_in", "never", None),
        ("BR-SP", "BR", "opt_in", "never", None),
        ("JP", "JP", "opt_in", "never", MINIMAL_IDENTIFIERS),
        ("KR", "KR", "opt_in", "never", MINIMAL_IDENTIFIERS),
        ("AU", "*", "opt_in", "never", None),
        (None, "*", "opt_in", "never", None),
    ],
)
def test_default_rule_for_region(region, rule_region, mode, ldu, identifiers):
    rule = select_rule(DEFAULT_RULES, region)
    assert (rule.region, rule.mode, rule.ldu, rule.identifiers) == (rule_region, mode, ldu, identifiers)
    if mode == "opt_in":
        assert rule.required_purposes == ("ad_user_data",)
    if mode == "opt_out":
        assert set(rule.opt_out_purposes) == {"sale", "sharing", "targeted_advertising"}


def test_ldu_options_reexported():
    assert ldu_options("US-CA") == (["LDU"], 1, 1000)


@pytest.mark.parametrize(
    ("rule", "field", "words"),
    [
        (Rule(id=1, region="EUROPE", mode="opt_in"), "region", "not a region"),
        (Rule(id=1, region="DE", mode="allow"), "mode", "mode must be one of"),
        (Rule(id=1, region="US", mode="opt_out", ldu="sometimes"), "ldu", "ldu must be one of"),
        (Rule(id=1, region="DE", mode="opt_in", required_purposes=()), "required_purposes", "at least one"),
        (Rule(id=1, region="DE", mode="opt_in", required_purposes=("adds",)), "required_purposes", "unknown"),
        (Rule(id=1, region="US", mode="opt_out", opt_out_purposes=()), "opt_out_purposes", "at least one"),
        (Rule(id=1, region="DE", mode="opt_in", ldu="always"), "ldu", "only applies to opt-out"),
        (Rule(id=1, region="DE", mode="opt_in", identifiers=("email",)), "identifiers", "email"),
    ],
)
def test_validate_rule_problems(rule, field, words):
    problems = validate_rule(rule)
    assert field in problems
    assert words in problems[field]


def test_validate_rule_accepts_custom_purposes_when_known():
    rule = Rule(id=1, region="DE", mode="opt_in", required_purposes=("email_marketing",))
    assert validate_rule(rule, known_purposes=("ad_user_data", "email_marketing")) == {}
