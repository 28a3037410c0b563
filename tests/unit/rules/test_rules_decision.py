"""Table-driven forwarding decisions: region, consent history, timing, GPC, suppression and mapping combined."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from hub.consent.policy import ConsentFact, ConsentLedger
from hub.mappings.apply import MappingDefinition
from hub.rules.decision import Decision, EventFacts, Rule, decide
from hub.rules.defaults import DEFAULT_RULES, EEA_IDENTIFIERS, MINIMAL_IDENTIFIERS

T = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)  # occurred_at
RECEIVED = T + timedelta(seconds=5)
GRACE = timedelta(minutes=2)
AFTER_GRACE = T + timedelta(minutes=10)
INSIDE_GRACE = T + timedelta(minutes=1)
MIN = timedelta(minutes=1)

MAPPINGS = {
    "order_completed": MappingDefinition(
        id=7,
        version=3,
        source_event="order_completed",
        event_name="Purchase",
        action_source="website",
        custom_data={"value": "properties.total", "currency": "properties.currency"},
    ),
    "newsletter_signup": MappingDefinition(
        id=8, version=1, source_event="newsletter_signup", event_name="Lead", action_source="website", enabled=False
    ),
}


def g(fid, at, purpose="ad_user_data", expires=None, source="cmp:didomi"):
    return ConsentFact(fid, purpose, "granted", at, expires, source)


def d(fid, at, purpose="ad_user_data", expires=None, source="cmp:didomi"):
    return ConsentFact(fid, purpose, "denied", at, expires, source)


# Consent histories for the opt-in purpose.
NONE: list[ConsentFact] = []
GRANTED = [g(1, T - MIN)]
DENIED = [d(1, T - MIN)]
WITHDRAWN_AFTER = [g(1, T - MIN), d(2, T + MIN)]
WITHDRAWN_REGRANTED_BEFORE = [g(1, T - 30 * MIN), d(2, T - 20 * MIN), g(3, T - 10 * MIN)]
WITHDRAWN_AFTER_REGRANTED = [g(1, T - MIN), d(2, T + MIN), g(3, T + 2 * MIN)]
DENIED_BEFORE_GRANTED_AFTER = [d(1, T - MIN), g(2, T + MIN)]
GRANTED_AFTER_ONLY = [g(1, T + MIN)]
EXPIRED_BEFORE = [g(1, T - timedelta(days=400), expires=T - timedelta(days=5))]
EXPIRED_SINCE = [g(1, T - MIN, expires=T + 5 * MIN)]
GRANTED_AT_EVENT = [g(1, T)]
TIE_AT_EVENT = [g(1, T), d(2, T)]


@dataclass(frozen=True)
class Case:
    name: str
    region: str | None
    facts: list[ConsentFact]
    outcome: str
    reason: str
    rule: str | None  # the selected rule's region selector
    words: tuple[str, ...]
    profile_region: str | None = None
    gpc: bool | None = None
    suppressed: bool = False
    source_event: str = "order_completed"
    now: datetime = AFTER_GRACE
    occurred_at: datetime = T
    rules: tuple[Rule, ...] = DEFAULT_RULES
    region_source: str | None = None  # defaults to "event" when region is set, else "default"
    ldu: tuple | None = None
    record_ids: tuple | None = None
    identifiers: tuple[str, ...] | str | None = "any"  # "any" = not asserted


CUSTOM_RULES = (
    Rule(id=1, region="RU", mode="block"),
    Rule(id=2, region="US-CA", mode="opt_out", ldu="always"),
    Rule(id=3, region="DE", mode="opt_in", required_purposes=("ad_user_data", "ad_personalization")),
    Rule(id=4, region="AT", mode="allow_all"),
    Rule(id=5, region="*", mode="opt_in"),
)

CASES = [
    # --- EEA opt-in: consent histories -------------------------------------------------------------------------
    Case(
        "de-granted",
        "DE",
        GRANTED,
        "send",
        "consent_granted",
        "EEA",
        (
            "Sent",
            "rule EEA (opt-in)",
            "DE (region from the event)",
            "ad_user_data granted at 2026-11-28 09:59:00 UTC",
            "not withdrawn since",
        ),
        record_ids=(1,),
        identifiers=EEA_IDENTIFIERS,
    ),
    Case(
        "de-none",
        "DE",
        NONE,
        "block",
        "no_consent",
        "EEA",
        (
            "Blocked",
            "rule EEA (opt-in)",
            "requires ad_user_data",
            "no decision on ad_user_data",
            "2026-11-28 10:00:00 UTC",
        ),
        record_ids=(),
    ),
    Case(
        "de-denied",
        "DE",
        DENIED,
        "block",
        "consent_denied",
        "EEA",
        ("denied ad_user_data at 2026-11-28 09:59:00 UTC, before the event at 2026-11-28 10:00:00 UTC",),
        record_ids=(1,),
    ),
    Case(
        "de-withdrawn-after-event",
        "DE",
        WITHDRAWN_AFTER,
        "block",
        "withdrawn_after_event",
        "EEA",
        ("granted at 2026-11-28 09:59:00 UTC", "denied it at 2026-11-28 10:01:00 UTC, after the event"),
        record_ids=(1, 2),
    ),
    Case(
        "de-withdrawn-then-regranted-before-event",
        "DE",
        WITHDRAWN_REGRANTED_BEFORE,
        "send",
        "consent_granted",
        "EEA",
        ("granted at 2026-11-28 09:50:00 UTC",),
        record_ids=(3,),
    ),
    Case(
        "de-withdrawn-after-event-then-regranted",
        "DE",
        WITHDRAWN_AFTER_REGRANTED,
        "block",
        "withdrawn_after_event",
        "EEA",
        ("denied it at 2026-11-28 10:01:00 UTC",),
        record_ids=(1, 2),
    ),
    Case(
        "de-denied-before-granted-after",
        "DE",
        DENIED_BEFORE_GRANTED_AFTER,
        "block",
        "consent_denied",
        "EEA",
        ("denied ad_user_data at 2026-11-28 09:59:00 UTC",),
        record_ids=(1,),
    ),
    Case(
        "de-granted-only-after-event",
        "DE",
        GRANTED_AFTER_ONLY,
        "block",
        "granted_after_event",
        "EEA",
        ("granted only at 2026-11-28 10:01:00 UTC, after the event",),
        record_ids=(1,),
    ),
    Case(
        "de-expired-before-event",
        "DE",
        EXPIRED_BEFORE,
        "block",
        "consent_expired",
        "EEA",
        ("expired at 2026-11-23 10:00:00 UTC", "before the event"),
        record_ids=(1,),
    ),
    Case(
        "de-expired-since-event",
        "DE",
        EXPIRED_SINCE,
        "block",
        "consent_expired",
        "EEA",
        ("in force at the event", "expired at 2026-11-28 10:05:00 UTC"),
        record_ids=(1,),
    ),
    Case(
        "de-granted-exactly-at-event",
        "DE",
        GRANTED_AT_EVENT,
        "send",
        "consent_granted",
        "EEA",
        ("granted at 2026-11-28 10:00:00 UTC",),
    ),
    Case(
        "de-grant-and-denial-at-same-instant",
        "DE",
        TIE_AT_EVENT,
        "block",
        "consent_denied",
        "EEA",
        ("denied ad_user_data at 2026-11-28 10:00:00 UTC, at the time of the event",),
        record_ids=(2,),
    ),
    Case(
        "de-other-purpose-granted-only",
        "DE",
        [g(1, T - MIN, "ad_personalization")],
        "block",
        "no_consent",
        "EEA",
        ("no decision on ad_user_data",),
    ),
    Case("de-gpc-irrelevant-for-opt-in", "DE", GRANTED, "send", "consent_granted", "EEA", ("granted",), gpc=True),
    Case("de-subdivision", "DE-BY", GRANTED, "send", "consent_granted", "EEA", ("DE-BY (region from the event)",)),
    Case("fr-granted", "FR", GRANTED, "send", "consent_granted", "EEA", ("rule EEA (opt-in) for FR",)),
    Case("fr-none", "FR", NONE, "block", "no_consent", "EEA", ("rule EEA (opt-in) for FR",)),
    Case("no-eea-member-granted", "NO", GRANTED, "send", "consent_granted", "EEA", ("rule EEA",)),
    Case(
        "no-eea-member-withdrawn", "NO", WITHDRAWN_AFTER, "block", "withdrawn_after_event", "EEA", ("after the event",)
    ),
    # --- GB, CH, Quebec, Brazil, consent-first regimes ----------------------------------------------------------
    Case(
        "gb-granted", "GB", GRANTED, "send", "consent_granted", "GB", ("rule GB (opt-in)",), identifiers=EEA_IDENTIFIERS
    ),
    Case("gb-none", "GB", NONE, "block", "no_consent", "GB", ("rule GB (opt-in)",)),
    Case("ch-granted", "CH", GRANTED, "send", "consent_granted", "CH", ("rule CH (opt-in)",)),
    Case("ch-denied", "CH", DENIED, "block", "consent_denied", "CH", ("rule CH (opt-in)", "denied")),
    Case("ca-qc-none", "CA-QC", NONE, "block", "no_consent", "CA-QC", ("rule CA-QC (opt-in)",)),
    Case("ca-qc-granted", "CA-QC", GRANTED, "send", "consent_granted", "CA-QC", ("rule CA-QC (opt-in)",)),
    Case("br-none", "BR", NONE, "block", "no_consent", "BR", ("rule BR (opt-in)",)),
    Case("br-granted", "BR", GRANTED, "send", "consent_granted", "BR", ("rule BR (opt-in)",)),
    Case(
        "jp-granted-minimal-identifiers",
        "JP",
        GRANTED,
        "send",
        "consent_granted",
        "JP",
        ("rule JP (opt-in)",),
        identifiers=MINIMAL_IDENTIFIERS,
    ),
    Case("jp-expired-since", "JP", EXPIRED_SINCE, "block", "consent_expired", "JP", ("expired",)),
    # --- unknown region → `*` -----------------------------------------------------------------------------------
    Case("unknown-none", None, NONE, "block", "no_consent", "*", ("rule * (opt-in) for an unknown region",)),
    Case("unknown-granted", None, GRANTED, "send", "consent_granted", "*", ("an unknown region",)),
    Case(
        "invalid-region-code",
        "ZZ",
        GRANTED,
        "send",
        "consent_granted",
        "*",
        ("an unknown region",),
        region_source="default",
    ),
    Case("australia-falls-to-star", "AU", NONE, "block", "no_consent", "*", ("rule * (opt-in) for AU",)),
    # --- region source ------------------------------------------------------------------------------------------
    Case(
        "profile-region-used-when-event-has-none",
        None,
        NONE,
        "send",
        "no_opt_out",
        "US-CA",
        ("US-CA (region from the profile)",),
        profile_region="US-CA",
        region_source="profile",
    ),
    Case(
        "invalid-event-region-falls-back-to-profile",
        "ZZ",
        GRANTED,
        "send",
        "consent_granted",
        "EEA",
        ("DE (region from the profile)",),
        profile_region="DE",
        region_source="profile",
    ),
    Case(
        "event-region-beats-profile",
        "DE",
        NONE,
        "block",
        "no_consent",
        "EEA",
        ("DE (region from the event)",),
        profile_region="US-CA",
    ),
    # --- US LDU states: opt-out with LDU on opt-out ------------------------------------------------------------
    Case(
        "us-ca-no-opt-out",
        "US-CA",
        NONE,
        "send",
        "no_opt_out",
        "US-CA",
        ("Sent", "rule US-CA (opt-out)", "no opt-out of sale, sharing and targeted_advertising", "no GPC"),
        identifiers=None,
    ),
    Case(
        "us-ca-ad-user-data-denied-is-not-an-opt-out", "US-CA", DENIED, "send", "no_opt_out", "US-CA", ("no opt-out",)
    ),
    Case(
        "us-ca-sale-opted-out",
        "US-CA",
        [d(5, T - MIN, "sale")],
        "send_ldu",
        "opted_out_ldu",
        "US-CA",
        (
            "Sent with LDU",
            "opted out of sale at 2026-11-28 09:59:00 UTC, before the event",
            "Limited Data Use (country 1, state 1000)",
        ),
        ldu=(["LDU"], 1, 1000),
        record_ids=(5,),
    ),
    Case(
        "us-ca-gpc-signal",
        "US-CA",
        NONE,
        "send_ldu",
        "gpc_opt_out_ldu",
        "US-CA",
        ("Global Privacy Control", "country 1, state 1000"),
        gpc=True,
        ldu=(["LDU"], 1, 1000),
    ),
    Case("us-ca-gpc-false-is-no-opt-out", "US-CA", NONE, "send", "no_opt_out", "US-CA", ("no GPC",), gpc=False),
    Case(
        "us-ca-gpc-recorded-in-ledger",
        "US-CA",
        [d(9, T - MIN, "sale", source="gpc")],
        "send_ldu",
        "gpc_opt_out_ldu",
        "US-CA",
        ("Global Privacy Control signal recorded at 2026-11-28 09:59:00 UTC",),
        ldu=(["LDU"], 1, 1000),
        record_ids=(9,),
    ),
    Case(
        "us-ca-explicit-opt-out-named-over-gpc",
        "US-CA",
        [d(5, T - MIN, "sharing")],
        "send_ldu",
        "opted_out_ldu",
        "US-CA",
        ("opted out of sharing",),
        gpc=True,
        ldu=(["LDU"], 1, 1000),
    ),
    Case(
        "us-ca-expired-opt-out-still-counts",
        "US-CA",
        [d(5, T - timedelta(days=500), "sale", expires=T - MIN)],
        "send_ldu",
        "opted_out_ldu",
        "US-CA",
        ("opted out of sale",),
        ldu=(["LDU"], 1, 1000),
    ),
    Case(
        "us-co-opt-out-after-event",
        "US-CO",
        [g(1, T - MIN, "sharing"), d(2, T + MIN, "sharing")],
        "send_ldu",
        "opted_out_ldu",
        "US-CO",
        ("opted out of sharing at 2026-11-28 10:01:00 UTC, after the event", "state 1001"),
        ldu=(["LDU"], 1, 1001),
        record_ids=(2,),
    ),
    Case(
        "us-co-opted-back-in-before-event",
        "US-CO",
        [d(1, T - 20 * MIN, "sale"), g(2, T - 10 * MIN, "sale")],
        "send",
        "no_opt_out",
        "US-CO",
        ("no opt-out",),
        record_ids=(2,),
    ),
    Case(
        "us-tx-gpc",
        "US-TX",
        NONE,
        "send_ldu",
        "gpc_opt_out_ldu",
        "US-TX",
        ("state 1005",),
        gpc=True,
        ldu=(["LDU"], 1, 1005),
    ),
    Case(
        "us-nj-targeted-ads-opt-out",
        "US-NJ",
        [d(1, T - MIN, "targeted_advertising")],
        "send_ldu",
        "opted_out_ldu",
        "US-NJ",
        ("targeted_advertising",),
        ldu=(["LDU"], 1, 1010),
    ),
    # --- other US: opt-out drops ---------------------------------------------------------------------------------
    Case("us-va-no-opt-out", "US-VA", NONE, "send", "no_opt_out", "US", ("rule US (opt-out) for US-VA",)),
    Case(
        "us-va-opted-out",
        "US-VA",
        [d(1, T - MIN, "sale")],
        "block",
        "opted_out_blocked",
        "US",
        ("Blocked", "opted out of sale", "drops events of people who opted out"),
        record_ids=(1,),
    ),
    Case("us-va-gpc", "US-VA", NONE, "block", "gpc_opt_out_blocked", "US", ("Global Privacy Control",), gpc=True),
    Case("us-no-state-no-opt-out", "US", NONE, "send", "no_opt_out", "US", ("rule US (opt-out) for US",)),
    Case("us-no-state-gpc", "US", NONE, "block", "gpc_opt_out_blocked", "US", ("Global Privacy Control",), gpc=True),
    # --- Canada outside Quebec: opt-out ---------------------------------------------------------------------------
    Case("ca-on-no-opt-out", "CA-ON", NONE, "send", "no_opt_out", "CA", ("rule CA (opt-out) for CA-ON",)),
    Case(
        "ca-on-opted-out",
        "CA-ON",
        [d(1, T - MIN, "targeted_advertising")],
        "block",
        "opted_out_blocked",
        "CA",
        ("opted out of targeted_advertising",),
    ),
    # --- timing: grace period ----------------------------------------------------------------------------------
    Case(
        "inside-grace-waits",
        "DE",
        GRANTED,
        "wait",
        "grace_period",
        "EEA",
        ("Waiting", "received at 2026-11-28 10:00:05 UTC", "grace period of 2 minutes", "2026-11-28 10:02:05 UTC"),
        now=INSIDE_GRACE,
    ),
    Case(
        "inside-grace-waits-even-without-consent",
        "US-VA",
        NONE,
        "wait",
        "grace_period",
        "US",
        ("Waiting",),
        now=INSIDE_GRACE,
    ),
    Case("grace-boundary-is-decided", "DE", GRANTED, "send", "consent_granted", "EEA", ("Sent",), now=RECEIVED + GRACE),
    Case(
        "just-before-grace-boundary-waits",
        "DE",
        GRANTED,
        "wait",
        "grace_period",
        "EEA",
        ("Waiting",),
        now=RECEIVED + GRACE - timedelta(microseconds=1),
    ),
    Case(
        "late-consent-inside-grace-window-still-too-late",
        "DE",
        [g(1, T + 30 * timedelta(seconds=1))],
        "block",
        "granted_after_event",
        "EEA",
        ("after the event",),
    ),
    Case(
        "future-event-evaluated-as-of-now",
        "DE",
        [g(1, T + 5 * MIN)],
        "send",
        "consent_granted",
        "EEA",
        ("granted at 2026-11-28 10:05:00 UTC",),
        occurred_at=AFTER_GRACE + timedelta(hours=1),
    ),
    # --- suppression and mappings --------------------------------------------------------------------------------
    Case(
        "suppressed-with-consent", "DE", GRANTED, "block", "suppressed", "EEA", ("suppression list",), suppressed=True
    ),
    Case(
        "suppressed-in-opt-out-region",
        "US-CA",
        NONE,
        "block",
        "suppressed",
        "US-CA",
        ("suppression list",),
        suppressed=True,
    ),
    Case(
        "suppressed-inside-grace-is-final",
        "DE",
        GRANTED,
        "block",
        "suppressed",
        "EEA",
        ("suppression list",),
        suppressed=True,
        now=INSIDE_GRACE,
    ),
    Case(
        "suppressed-beats-unmapped",
        "DE",
        GRANTED,
        "block",
        "suppressed",
        "EEA",
        ("suppression list",),
        suppressed=True,
        source_event="page_viewed",
    ),
    Case(
        "unmapped",
        "DE",
        GRANTED,
        "block",
        "unmapped",
        "EEA",
        ("no mapping", "'page_viewed'", "not forwarded"),
        source_event="page_viewed",
    ),
    Case(
        "unmapped-inside-grace-is-final",
        "US-CA",
        NONE,
        "block",
        "unmapped",
        "US-CA",
        ("no mapping",),
        source_event="page_viewed",
        now=INSIDE_GRACE,
    ),
    Case(
        "mapping-disabled",
        "DE",
        GRANTED,
        "block",
        "mapping_disabled",
        "EEA",
        ("'newsletter_signup'", "version 1", "disabled"),
        source_event="newsletter_signup",
    ),
    # --- non-default rules -------------------------------------------------------------------------------------
    Case(
        "block-mode-region",
        "RU",
        GRANTED,
        "block",
        "region_blocked",
        "RU",
        ("rule RU (block)", "stops all"),
        rules=CUSTOM_RULES,
    ),
    Case(
        "ldu-always-without-opt-out",
        "US-CA",
        NONE,
        "send_ldu",
        "ldu_always",
        "US-CA",
        ("always applies Limited Data Use (country 1, state 1000)",),
        rules=CUSTOM_RULES,
        ldu=(["LDU"], 1, 1000),
    ),
    Case(
        "ldu-always-with-opt-out",
        "US-CA",
        [d(1, T - MIN, "sale")],
        "send_ldu",
        "opted_out_ldu",
        "US-CA",
        ("opted out of sale",),
        rules=CUSTOM_RULES,
        ldu=(["LDU"], 1, 1000),
    ),
    Case(
        "two-required-purposes-one-missing",
        "DE",
        GRANTED,
        "block",
        "no_consent",
        "DE",
        ("requires ad_user_data and ad_personalization", "no decision on ad_personalization"),
        rules=CUSTOM_RULES,
        record_ids=(),
    ),
    Case(
        "two-required-purposes-both-granted",
        "DE",
        [*GRANTED, g(2, T - MIN, "ad_personalization")],
        "send",
        "consent_granted",
        "DE",
        ("ad_user_data granted", "ad_personalization granted"),
        rules=CUSTOM_RULES,
        record_ids=(1, 2),
    ),
    Case(
        "unknown-mode-fails-closed",
        "AT",
        GRANTED,
        "block",
        "rule_invalid",
        "AT",
        ("unknown mode 'allow_all'",),
        rules=CUSTOM_RULES,
    ),
    Case(
        "no-rule-and-no-star",
        "FR",
        GRANTED,
        "block",
        "no_rule",
        None,
        ("no forwarding rule covers FR", "'*'"),
        rules=(Rule(id=1, region="DE", mode="opt_in"),),
    ),
]


def run(case: Case) -> Decision:
    event = EventFacts(
        event_id=f"evt-{case.name}",
        source_event=case.source_event,
        occurred_at=case.occurred_at,
        received_at=RECEIVED,
        region=case.region,
        profile_region=case.profile_region,
        gpc=case.gpc,
        suppressed=case.suppressed,
    )
    return decide(event, ConsentLedger(case.facts), case.rules, MAPPINGS, case.now, GRACE)


def test_table_is_large_and_names_are_unique():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decision(case: Case):
    decision = run(case)
    assert (decision.outcome, decision.reason_code) == (case.outcome, case.reason), decision.explanation
    assert decision.rule_region == case.rule
    expected_source = case.region_source or ("event" if case.region else "default")
    assert decision.region_source == expected_source
    for words in case.words:
        assert words in decision.explanation, f"{words!r} not in {decision.explanation!r}"
    assert decision.ldu == case.ldu
    if case.record_ids is not None:
        assert decision.consent_record_ids == case.record_ids
    if case.identifiers != "any":
        assert decision.identifiers == case.identifiers
    assert decision.final is (case.outcome != "wait")


def test_explanation_is_one_sentence_naming_the_rule():
    for case in CASES:
        explanation = run(case).explanation
        assert explanation.endswith("."), case.name
        assert explanation.count("\n") == 0
        if case.reason not in {"suppressed", "unmapped", "mapping_disabled", "grace_period", "no_rule"}:
            assert f"rule {case.rule} (" in explanation, case.name


def test_decision_records_rule_region_and_mapping():
    decision = run(CASES[0])
    assert decision.rule_id == "default:EEA"
    assert decision.region_used == "DE"
    assert (decision.mapping_id, decision.mapping_version) == (7, 3)
    assert decision.sends


def test_unmapped_decision_has_no_mapping_version():
    decision = run(next(case for case in CASES if case.name == "unmapped"))
    assert (decision.mapping_id, decision.mapping_version) == (None, None)
    assert not decision.sends


def test_region_used_is_normalized_and_none_when_unknown():
    case = next(c for c in CASES if c.name == "us-ca-no-opt-out")
    lower = Case(**{**case.__dict__, "region": "us-ca"})
    assert run(lower).region_used == "US-CA"
    assert run(next(c for c in CASES if c.name == "unknown-none")).region_used is None


def test_to_record_is_json_ready():
    import json

    case = next(c for c in CASES if c.name == "us-ca-sale-opted-out")
    record = run(case).to_record()
    assert json.loads(json.dumps(record)) == record
    assert record["ldu"] == {
        "data_processing_options": ["LDU"],
        "data_processing_options_country": 1,
        "data_processing_options_state": 1000,
    }
    assert record["consent_record_ids"] == [5]
    assert record["reason_code"] == "opted_out_ldu"


def test_decisions_do_not_depend_on_fact_order():
    for case in CASES:
        forward = run(case)
        backward = run(Case(**{**case.__dict__, "facts": list(reversed(case.facts))}))
        assert (forward.outcome, forward.reason_code, forward.explanation) == (
            backward.outcome,
            backward.reason_code,
            backward.explanation,
        ), case.name


@pytest.mark.parametrize(
    ("grace", "now", "outcome", "words"),
    [
        (timedelta(seconds=90), RECEIVED + timedelta(seconds=30), "wait", "grace period of 90 seconds"),
        (timedelta(minutes=1), RECEIVED, "wait", "grace period of 1 minute,"),
        (timedelta(0), RECEIVED, "send", "Sent"),  # no grace: decided on receipt
    ],
)
def test_grace_period_length(grace, now, outcome, words):
    event = EventFacts("e", "order_completed", T, RECEIVED, "DE", None, None, False)
    decision = decide(event, ConsentLedger(GRANTED), DEFAULT_RULES, MAPPINGS, now, grace)
    assert decision.outcome == outcome
    assert words in decision.explanation


def test_later_grant_that_lapsed_blocks_although_the_event_was_covered():
    # Granted without expiry before the event, then re-granted with a short expiry that has passed by now:
    # the decision in force now is no consent.
    facts = [g(1, T - MIN), g(2, T + MIN, expires=T + 3 * MIN)]
    event = EventFacts("e", "order_completed", T, RECEIVED, "DE", None, None, False)
    decision = decide(event, ConsentLedger(facts), DEFAULT_RULES, MAPPINGS, AFTER_GRACE, GRACE)
    assert (decision.outcome, decision.reason_code) == ("block", "consent_expired")
    assert (
        "the latest grant, given at 2026-11-28 10:01:00 UTC, expired at 2026-11-28 10:03:00 UTC" in decision.explanation
    )
    assert decision.consent_record_ids == (1, 2)
