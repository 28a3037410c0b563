"""Evaluate a person's consent ledger at a point in time.

The ledger is append-only (DESIGN §3): every decision is a fact with the CMP's own timestamp, and corrections are
new facts. This module answers "what was in force at time t?" over plain frozen dataclasses; it never touches the
database. The service layer loads `ConsentRecord` rows, turns them into `ConsentFact`s and asks these questions.

Semantics, decided here and relied on by `hub.rules.decision`:

* Ordering is by `collected_at` (the CMP's time), never by arrival: webhooks arrive out of order
  (reference/consent.md §0: no CMP documents ordering guarantees).
* A fact is in force from `collected_at` inclusive.
* Ties at the same `collected_at` go to the more restrictive fact: `denied` beats `granted`; between two grants the
  one expiring first wins, between two denials the one expiring last (consent.md §7.1 rule 2: latest row ordered by
  `(collected_at, restrictiveness)`). Remaining ties are broken by `str(id)` so the result never depends on input
  order.
* Expiry is exclusive: a fact with `expires_at` is in force on `[collected_at, expires_at)`; at `expires_at` itself
  it has lapsed. An expired fact counts as no decision at all (consent.md §7.1 rule 2) — it does not revive an
  older one. (consent.md writes `expires_at < now` for "expired"; we lapse at the boundary instant because erring
  towards "no consent" is the safe side.)
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

# Google Consent Mode v2 signals + US opt-out rights (CONTRACT "Consent purposes"). Admins may add custom purposes,
# so the ledger accepts any purpose name; these are the built-ins the rules refer to.
PURPOSES: tuple[str, ...] = (
    "ad_user_data",
    "ad_personalization",
    "ad_storage",
    "analytics_storage",
    "sale",
    "sharing",
    "targeted_advertising",
)
# Purposes that US state laws frame as opt-out rights; GPC is an opt-out of all three (consent.md §3).
OPT_OUT_PURPOSES: tuple[str, ...] = ("sale", "sharing", "targeted_advertising")

GRANTED = "granted"
DENIED = "denied"
STATUSES: tuple[str, ...] = (GRANTED, DENIED)


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC), got naive {value.isoformat()}")


@dataclass(frozen=True)
class ConsentFact:
    """One recorded decision for one purpose: a row of the consent ledger."""

    id: int | str
    purpose: str
    status: str  # "granted" | "denied"
    collected_at: datetime  # the CMP's own time: the ordering key
    expires_at: datetime | None = None
    source: str = ""  # "api", "cmp:<name>", "gpc", "tcf", "gpp", "merge", ...

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        if not self.purpose:
            raise ValueError("purpose must not be empty")
        _require_aware(self.collected_at, "collected_at")
        if self.expires_at is not None:
            _require_aware(self.expires_at, "expires_at")

    @property
    def granted(self) -> bool:
        return self.status == GRANTED

    @property
    def denied(self) -> bool:
        return self.status == DENIED

    def expired(self, when: datetime) -> bool:
        """True once `when` has reached `expires_at` (expiry is exclusive)."""
        return self.expires_at is not None and when >= self.expires_at


def _order_key(fact: ConsentFact) -> tuple[datetime, int, float, str]:
    # Within one instant, the fact sorted *last* is the one in force, so restrictive facts sort last.
    if fact.granted:
        # The grant that expires first is the more restrictive one; "never expires" is the least.
        expiry = -math.inf if fact.expires_at is None else -fact.expires_at.timestamp()
        return (fact.collected_at, 0, expiry, str(fact.id))
    expiry = math.inf if fact.expires_at is None else fact.expires_at.timestamp()
    return (fact.collected_at, 1, expiry, str(fact.id))


class ConsentLedger:
    """All consent facts of one person, indexed per purpose and sorted once."""

    def __init__(self, facts: Iterable[ConsentFact]) -> None:
        by_purpose: dict[str, list[ConsentFact]] = {}
        for fact in facts:
            by_purpose.setdefault(fact.purpose, []).append(fact)
        self._facts: dict[str, tuple[ConsentFact, ...]] = {}
        self._times: dict[str, list[datetime]] = {}
        for purpose, items in by_purpose.items():
            ordered = tuple(sorted(items, key=_order_key))
            self._facts[purpose] = ordered
            self._times[purpose] = [f.collected_at for f in ordered]

    def __iter__(self) -> Iterator[ConsentFact]:
        for purpose in sorted(self._facts):
            yield from self._facts[purpose]

    def __len__(self) -> int:
        return sum(len(items) for items in self._facts.values())

    @property
    def purposes(self) -> frozenset[str]:
        return frozenset(self._facts)

    def history(self, purpose: str) -> tuple[ConsentFact, ...]:
        """Every fact for `purpose`, in force order (oldest first)."""
        return self._facts.get(purpose, ())

    def latest(self, purpose: str, when: datetime) -> ConsentFact | None:
        """The last fact with `collected_at <= when`, whether or not it has expired by `when`.

        Used to tell "never asked" from "asked, but the answer lapsed" when explaining a decision.
        """
        _require_aware(when, "when")
        times = self._times.get(purpose)
        if not times:
            return None
        index = bisect_right(times, when)
        return self._facts[purpose][index - 1] if index else None

    def at(self, purpose: str, when: datetime) -> ConsentFact | None:
        """The decision in force at `when`; None if there is none or it has expired by `when`."""
        fact = self.latest(purpose, when)
        if fact is None or fact.expired(when):
            return None
        return fact

    def current(self, purpose: str, now: datetime) -> ConsentFact | None:
        return self.at(purpose, now)

    def _between(self, purpose: str, since: datetime, until: datetime, status: str) -> ConsentFact | None:
        _require_aware(since, "since")
        _require_aware(until, "until")
        times = self._times.get(purpose)
        if not times:
            return None
        facts = self._facts[purpose]
        for index in range(bisect_right(times, since), len(facts)):
            fact = facts[index]
            if fact.collected_at > until:
                break
            if fact.status == status:
                return fact
        return None

    def withdrawn_since(self, purpose: str, since: datetime, until: datetime) -> ConsentFact | None:
        """The first `denied` fact with `since < collected_at <= until`.

        DESIGN §4.3: an event is sent only if consent was granted at `occurred_at` "and has not been denied or
        withdrawn since". Any denial in the window counts, even if the person granted again later: the send
        happens after the withdrawal, and a later re-grant does not retroactively cover an event the person had
        objected to in between.
        """
        return self._between(purpose, since, until, DENIED)

    def granted_since(self, purpose: str, since: datetime, until: datetime) -> ConsentFact | None:
        """The first `granted` fact with `since < collected_at <= until` (e.g. consent given after an event)."""
        return self._between(purpose, since, until, GRANTED)

    def latest_by_purpose(self) -> dict[str, ConsentFact]:
        """The last fact per purpose regardless of time or expiry: the rows of the `consent_state` projection."""
        return {purpose: facts[-1] for purpose, facts in self._facts.items()}

    def state(self, now: datetime) -> dict[str, ConsentFact]:
        """The effective decision per purpose at `now`; purposes without one (never asked, or lapsed) are absent.

        Facts collected after `now` (a CMP clock running ahead) are not yet in force.
        """
        result: dict[str, ConsentFact] = {}
        for purpose in self._facts:
            fact = self.at(purpose, now)
            if fact is not None:
                result[purpose] = fact
        return result


def merge_denials(a: Iterable[ConsentFact], b: Iterable[ConsentFact]) -> list[ConsentFact]:
    """Derived facts that make the most restrictive side win when two profiles merge (DESIGN §4.2).

    "Recent" means each side's latest decision per purpose (by `collected_at`, whatever its age or expiry). Where
    one side's latest decision is `denied` and the other side's latest is a `granted` collected later, the union
    alone would let the later grant win, although it was given by what we only now know is the same person on
    another device or channel. So the denial is re-asserted at the grant's instant; a tie at the same instant
    resolves to `denied`. Any decision collected after that instant again simply wins — the person can re-grant.

    The service persists these as new ledger rows (source "merge"; the ledger is append-only and the original
    facts are left untouched). Ids are `"merge:<id of the denial>"` until the database assigns real ones.
    """
    latest_a = ConsentLedger(a).latest_by_purpose()
    latest_b = ConsentLedger(b).latest_by_purpose()
    derived: list[ConsentFact] = []
    for purpose in sorted(set(latest_a) & set(latest_b)):
        first, second = latest_a[purpose], latest_b[purpose]
        if first.status == second.status:
            continue
        denial, grant = (first, second) if first.denied else (second, first)
        if grant.collected_at <= denial.collected_at:
            continue  # the denial is already the latest decision of the merged ledger
        if denial.expired(grant.collected_at):
            continue  # the denial had lapsed before the grant: nothing in force to re-assert
        derived.append(
            ConsentFact(
                id=f"merge:{denial.id}",
                purpose=purpose,
                status=DENIED,
                collected_at=grant.collected_at,
                expires_at=denial.expires_at,
                source="merge",
            )
        )
    return derived


def combine_on_merge(a: Iterable[ConsentFact], b: Iterable[ConsentFact]) -> ConsentLedger:
    """The ledger of a merged profile: both histories plus `merge_denials` (most restrictive recent decision)."""
    facts_a, facts_b = list(a), list(b)
    return ConsentLedger([*facts_a, *facts_b, *merge_denials(facts_a, facts_b)])
