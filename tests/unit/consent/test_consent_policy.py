from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from hub.consent.policy import (
    OPT_OUT_PURPOSES,
    PURPOSES,
    ConsentFact,
    ConsentLedger,
    combine_on_merge,
    merge_denials,
)

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)
MIN = timedelta(minutes=1)
P = "ad_user_data"


def fact(fid, status, at, *, purpose=P, expires=None, source="api"):
    return ConsentFact(id=fid, purpose=purpose, status=status, collected_at=at, expires_at=expires, source=source)


def ids(value):
    return None if value is None else value.id


def test_purpose_catalogue_matches_contract():
    assert PURPOSES == (
        "ad_user_data",
        "ad_personalization",
        "ad_storage",
        "analytics_storage",
        "sale",
        "sharing",
        "targeted_advertising",
    )
    assert set(OPT_OUT_PURPOSES) <= set(PURPOSES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": "opted_out"}, "status must be one of"),
        ({"status": "GRANTED"}, "status must be one of"),
        ({"purpose": ""}, "purpose must not be empty"),
        ({"collected_at": datetime(2026, 11, 28, 10, 0)}, "collected_at must be a timezone-aware"),
        ({"expires_at": datetime(2027, 1, 1)}, "expires_at must be a timezone-aware"),
    ],
)
def test_fact_rejects_invalid_values(kwargs, message):
    base = {"id": 1, "purpose": P, "status": "granted", "collected_at": T0}
    with pytest.raises(ValueError, match=message):
        ConsentFact(**{**base, **kwargs})


def test_naive_query_time_is_rejected():
    ledger = ConsentLedger([fact(1, "granted", T0)])
    with pytest.raises(ValueError, match="when must be a timezone-aware"):
        ledger.at(P, datetime(2026, 11, 28, 10, 0))


# (facts, query time, expected id from at(), expected id from latest())
HISTORY = [fact(1, "granted", T0), fact(2, "denied", T0 + 10 * MIN), fact(3, "granted", T0 + 20 * MIN)]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (T0 - SEC, None),  # before any decision
        (T0, 1),  # exactly at collected_at: inclusive
        (T0 + SEC, 1),
        (T0 + 10 * MIN - SEC, 1),  # just before the withdrawal
        (T0 + 10 * MIN, 2),  # the withdrawal is in force from its own instant
        (T0 + 20 * MIN - SEC, 2),
        (T0 + 20 * MIN, 3),  # re-grant after withdrawal
        (T0 + 1000 * MIN, 3),
    ],
)
def test_at_follows_history(when, expected):
    assert ids(ConsentLedger(HISTORY).at(P, when)) == expected


def test_input_order_does_not_matter():
    shuffled = HISTORY[:]
    for seed in range(20):
        random.Random(seed).shuffle(shuffled)
        ledger = ConsentLedger(shuffled)
        assert [f.id for f in ledger.history(P)] == [1, 2, 3]
        assert ids(ledger.at(P, T0 + 15 * MIN)) == 2


@pytest.mark.parametrize("order", [("granted", "denied"), ("denied", "granted")])
def test_tie_at_same_instant_goes_to_denied(order):
    ledger = ConsentLedger([fact(status, status, T0) for status in order])
    assert ledger.at(P, T0).status == "denied"
    assert ledger.state(T0)[P].status == "denied"


def test_tie_between_grants_goes_to_the_one_expiring_first():
    facts = [
        fact("a", "granted", T0, expires=None),
        fact("b", "granted", T0, expires=T0 + 5 * MIN),
        fact("c", "granted", T0, expires=T0 + 60 * MIN),
    ]
    for seed in range(6):
        random.Random(seed).shuffle(facts)
        assert ConsentLedger(facts).at(P, T0).id == "b"


def test_tie_between_denials_goes_to_the_one_lasting_longest():
    facts = [fact("a", "denied", T0, expires=T0 + 5 * MIN), fact("b", "denied", T0, expires=None)]
    assert ConsentLedger(facts).at(P, T0).id == "b"
    assert ConsentLedger(list(reversed(facts))).at(P, T0).id == "b"


def test_timezones_other_than_utc_compare_by_instant():
    cet = timezone(timedelta(hours=1))
    ledger = ConsentLedger([fact(1, "granted", datetime(2026, 11, 28, 11, 0, tzinfo=cet))])  # = 10:00 UTC
    assert ids(ledger.at(P, T0)) == 1
    assert ledger.at(P, T0 - SEC) is None


@pytest.mark.parametrize(
    ("when", "at_expected", "latest_expected"),
    [
        (T0 + 59 * MIN, 1, 1),
        (T0 + 60 * MIN - SEC, 1, 1),
        (T0 + 60 * MIN, None, 1),  # expiry is exclusive: lapsed at expires_at itself
        (T0 + 61 * MIN, None, 1),
    ],
)
def test_expiry_is_exclusive_and_means_no_consent(when, at_expected, latest_expected):
    ledger = ConsentLedger([fact(1, "granted", T0, expires=T0 + 60 * MIN)])
    assert ids(ledger.at(P, when)) == at_expected
    assert ids(ledger.current(P, when)) == at_expected
    assert ids(ledger.latest(P, when)) == latest_expected


def test_expired_latest_fact_does_not_revive_an_older_grant():
    ledger = ConsentLedger([fact(1, "granted", T0), fact(2, "granted", T0 + MIN, expires=T0 + 2 * MIN)])
    assert ledger.at(P, T0 + 3 * MIN) is None


def test_fact_expired_helper():
    f = fact(1, "granted", T0, expires=T0 + MIN)
    assert not f.expired(T0 + MIN - SEC)
    assert f.expired(T0 + MIN)
    assert not fact(2, "granted", T0).expired(T0 + 10_000 * MIN)


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (T0, T0 + 30 * MIN, 2),  # denial inside the window
        (T0 + 10 * MIN, T0 + 30 * MIN, None),  # since is exclusive
        (T0 + 10 * MIN - SEC, T0 + 30 * MIN, 2),
        (T0, T0 + 10 * MIN, 2),  # until is inclusive
        (T0, T0 + 10 * MIN - SEC, None),
        (T0 + 30 * MIN, T0 + 20 * MIN, None),  # empty window
    ],
)
def test_withdrawn_since_window_bounds(since, until, expected):
    assert ids(ConsentLedger(HISTORY).withdrawn_since(P, since, until)) == expected


def test_withdrawal_counts_even_if_regranted_later():
    # Denied at +10, re-granted at +20: a send at +30 of an event at T0 is still blocked (DESIGN §4.3).
    ledger = ConsentLedger(HISTORY)
    assert ledger.at(P, T0 + 30 * MIN).granted
    assert ids(ledger.withdrawn_since(P, T0, T0 + 30 * MIN)) == 2


def test_withdrawn_since_returns_first_denial():
    ledger = ConsentLedger([fact(3, "denied", T0 + 3 * MIN), fact(2, "denied", T0 + 2 * MIN), fact(1, "granted", T0)])
    assert ids(ledger.withdrawn_since(P, T0, T0 + 5 * MIN)) == 2


def test_granted_since():
    ledger = ConsentLedger([fact(1, "denied", T0), fact(2, "granted", T0 + MIN)])
    assert ids(ledger.granted_since(P, T0, T0 + 5 * MIN)) == 2
    assert ledger.granted_since(P, T0 + MIN, T0 + 5 * MIN) is None


def test_unknown_purpose_has_no_decision():
    ledger = ConsentLedger(HISTORY)
    assert ledger.at("sale", T0 + MIN) is None
    assert ledger.withdrawn_since("sale", T0, T0 + MIN) is None
    assert ledger.history("sale") == ()


def test_state_projection_per_purpose():
    ledger = ConsentLedger(
        [
            *HISTORY,
            fact(10, "denied", T0, purpose="sale"),
            fact(11, "granted", T0, purpose="ad_personalization", expires=T0 + 5 * MIN),
            fact(12, "granted", T0 + 60 * MIN, purpose="ad_storage"),  # collected after "now"
        ]
    )
    now = T0 + 30 * MIN
    assert {p: f.id for p, f in ledger.state(now).items()} == {P: 3, "sale": 10}
    assert {p: f.id for p, f in ledger.latest_by_purpose().items()} == {
        P: 3,
        "sale": 10,
        "ad_personalization": 11,
        "ad_storage": 12,
    }
    assert ledger.purposes == {P, "sale", "ad_personalization", "ad_storage"}
    assert len(ledger) == 6


def test_ledger_lookup_scales():
    # 20,000 facts: at() must not scan linearly per call (bisect over facts sorted once).
    facts = [fact(i, "granted" if i % 2 else "denied", T0 + i * SEC) for i in range(20_000)]
    ledger = ConsentLedger(facts)
    for i in range(0, 20_000, 7):
        assert ledger.at(P, T0 + i * SEC).id == i


class TestMerge:
    def test_later_grant_on_one_side_does_not_beat_denial_on_the_other(self):
        a = [fact("a1", "denied", T0)]
        b = [fact("b1", "granted", T0 + 10 * MIN)]
        derived = merge_denials(a, b)
        assert [(f.id, f.status, f.collected_at, f.source) for f in derived] == [
            ("merge:a1", "denied", T0 + 10 * MIN, "merge")
        ]
        ledger = combine_on_merge(a, b)
        assert ledger.at(P, T0 + 20 * MIN).status == "denied"
        # History before the merge instant keeps its own meaning.
        assert ledger.at(P, T0 + 5 * MIN).id == "a1"

    def test_is_symmetric(self):
        a = [fact("a1", "granted", T0 + 10 * MIN)]
        b = [fact("b1", "denied", T0)]
        assert [f.id for f in merge_denials(a, b)] == ["merge:b1"]
        assert combine_on_merge(a, b).at(P, T0 + 20 * MIN).status == "denied"

    def test_new_decision_after_merge_wins(self):
        ledger = ConsentLedger(
            [
                *combine_on_merge([fact("a1", "denied", T0)], [fact("b1", "granted", T0 + MIN)]),
                fact("n", "granted", T0 + 5 * MIN),
            ]
        )
        assert ledger.at(P, T0 + 6 * MIN).id == "n"

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            ([fact("a1", "granted", T0)], [fact("b1", "granted", T0 + MIN)]),  # agree
            ([fact("a1", "denied", T0)], [fact("b1", "denied", T0 + MIN)]),  # agree
            ([fact("a1", "granted", T0)], [fact("b1", "denied", T0 + MIN)]),  # denial already latest
            ([fact("a1", "granted", T0)], []),  # one side never asked
            ([fact("a1", "denied", T0, expires=T0 + MIN)], [fact("b1", "granted", T0 + 2 * MIN)]),  # lapsed denial
        ],
    )
    def test_no_derived_fact_without_conflict(self, a, b):
        assert merge_denials(a, b) == []

    def test_only_latest_decisions_are_compared(self):
        # Side a denied long ago but granted again since: its recent decision is a grant, no conflict.
        a = [fact("a1", "denied", T0), fact("a2", "granted", T0 + MIN)]
        b = [fact("b1", "granted", T0 + 2 * MIN)]
        assert merge_denials(a, b) == []

    def test_per_purpose(self):
        a = [fact("a1", "denied", T0, purpose="sale"), fact("a2", "granted", T0)]
        b = [fact("b1", "granted", T0 + MIN, purpose="sale"), fact("b2", "denied", T0 + MIN)]
        ledger = combine_on_merge(a, b)
        assert [f.purpose for f in merge_denials(a, b)] == ["sale"]
        assert ledger.at("sale", T0 + MIN).status == "denied"
        assert ledger.at(P, T0 + MIN).status == "denied"
