"""RuleTable: the batch's rules, answering select() exactly as select_rule does, once per region."""

from __future__ import annotations

import pytest

from hub.rules.decision import Rule
from hub.rules.defaults import DEFAULT_RULES
from hub.rules.regions import RuleTable, select_rule

CUSTOM = (
    Rule(id=1, region="EU", mode="opt_in"),
    Rule(id=2, region="EEA", mode="opt_in"),
    Rule(id=3, region="DE", mode="block"),
    Rule(id=4, region="DE", mode="opt_out"),  # tie with 3: the first one wins
    Rule(id=5, region="not a region", mode="block"),  # invalid selector: never matches
    Rule(id=6, region="us-ca", mode="opt_out"),
)
REGIONS = [None, "", "DE", "de", " de ", "FR", "NO", "GF", "US", "US-CA", "us_ca", "US-NY", "CA-QC", "ZZ", "XX-1", "*"]


@pytest.mark.parametrize("rules", [DEFAULT_RULES, CUSTOM, CUSTOM[:4], ()], ids=["defaults", "custom", "no *", "none"])
@pytest.mark.parametrize("region", REGIONS)
def test_select_equals_select_rule(rules: tuple[Rule, ...], region: str | None) -> None:
    table = RuleTable(rules)
    expected = select_rule(rules, region)
    assert table.select(region) is expected
    assert table.select(region) is expected  # the remembered answer


def test_a_rule_table_is_the_sequence_of_its_rules() -> None:
    table = RuleTable(CUSTOM)
    assert list(table) == list(CUSTOM)
    assert len(table) == len(CUSTOM)
    assert table.select("DE").id == 3
    assert RuleTable([]).select("DE") is None
