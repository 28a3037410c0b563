"""The forwarding decision: may this event go to Meta, with LDU or not, and why (DESIGN §4.3 to §4.5).

`decide()` is a pure function of the event's facts, the person's consent ledger, the region rules, the mappings
and the clock. It returns a `Decision` whose `reason_code` is stable (stored, filtered on, counted in metrics) and
whose `explanation` is one sentence naming the rule, the purposes and the times (shown in the UI).

Order of checks: suppressed → unmapped / mapping disabled → grace period → region rule (block / opt-in / opt-out).

Reason codes:

| outcome   | reason_code           | when |
|-----------|-----------------------|------|
| block     | suppressed            | an identifier of the person is on the erasure suppression list |
| block     | unmapped              | no mapping for the source event (CONTRACT: unmapped events are not forwarded) |
| block     | mapping_disabled      | the mapping exists but is disabled |
| wait      | grace_period          | still inside the grace period after receipt (late consent may arrive); not final |
| block     | no_rule               | no rule covers the region and there is no `*` rule |
| block     | rule_invalid          | the selected rule has an unknown mode |
| block     | region_blocked        | the rule's mode is `block` |
| send      | consent_granted       | opt-in: every required purpose granted at the event and still now |
| block     | no_consent            | opt-in: a required purpose was never decided (as of the event and since) |
| block     | granted_after_event   | opt-in: granted only after the event |
| block     | consent_denied        | opt-in: denied as of the event |
| block     | withdrawn_after_event | opt-in: granted at the event, denied at some point since |
| block     | consent_expired       | opt-in: the grant had expired at the event, or has expired since |
| send      | no_opt_out            | opt-out: no opt-out on record, no GPC |
| send_ldu  | ldu_always            | opt-out: no opt-out, but the rule applies LDU to everyone |
| send_ldu  | opted_out_ldu         | opt-out: opted out (CMP/API record) and the rule sends with LDU on opt-out |
| block     | opted_out_blocked     | opt-out: opted out (CMP/API record) and the rule drops opted-out events |
| send_ldu  | gpc_opt_out_ldu       | opt-out: Global Privacy Control (event signal or `gpc` ledger fact); LDU |
| block     | gpc_opt_out_blocked   | opt-out: Global Privacy Control; the rule drops opted-out events |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.consent.policy import OPT_OUT_PURPOSES, PURPOSES, ConsentFact, ConsentLedger
from hub.mappings.apply import MappingDefinition
from hub.rules.regions import RuleTable, ldu_options, normalize_region, normalize_selector, select_rule

MODES: tuple[str, ...] = ("opt_in", "opt_out", "block")
LDU_MODES: tuple[str, ...] = ("never", "on_opt_out", "always")
OUTCOMES: tuple[str, ...] = ("send", "send_ldu", "block", "wait")

# Meta user_data keys (reference/capi.md §5): what a rule's `identifiers` may allow.
USER_DATA_KEYS: tuple[str, ...] = (
    "em",
    "ph",
    "fn",
    "ln",
    "ge",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "fb_login_id",
    "lead_id",
    "anon_id",
    "madid",
    "page_id",
    "page_scoped_user_id",
    "ctwa_clid",
    "ig_account_id",
    "ig_sid",
)

_MODE_LABELS = {"opt_in": "opt-in", "opt_out": "opt-out", "block": "block"}


@dataclass(frozen=True)
class Rule:
    """A forwarding rule for one region selector (CONTRACT "Forwarding rules").

    `ldu`: "never" — an opt-out blocks the event; "on_opt_out" — an opted-out person's events are sent with
    Meta's Limited Data Use; "always" — every event under this rule is sent with LDU. Only meaningful for
    `opt_out` rules (LDU exists for US states only, consent.md §5.2).
    """

    id: str | int
    region: str  # selector: "DE", "US-CA", "EEA", "*"
    mode: str  # "opt_in" | "opt_out" | "block"
    required_purposes: tuple[str, ...] = ("ad_user_data",)  # opt_in: all must be granted
    opt_out_purposes: tuple[str, ...] = OPT_OUT_PURPOSES  # opt_out: any denied = opted out
    ldu: str = "never"  # "never" | "on_opt_out" | "always"
    identifiers: tuple[str, ...] | None = None  # allowed Meta user_data keys; None = all
    destination: str | int | None = None  # destination override


def validate_rule(rule: Rule, *, known_purposes: Sequence[str] = PURPOSES) -> dict[str, str]:
    """Problems with a rule, field path → sentence; empty when it can be saved."""
    problems: dict[str, str] = {}
    if normalize_selector(rule.region) is None:
        problems["region"] = (
            f"{rule.region!r} is not a region: use an ISO country (DE), an ISO subdivision (US-CA), EEA, EU or *"
        )
    if rule.mode not in MODES:
        problems["mode"] = f"mode must be one of {', '.join(MODES)}"
    if rule.ldu not in LDU_MODES:
        problems["ldu"] = f"ldu must be one of {', '.join(LDU_MODES)}"
    if rule.mode == "opt_in" and not rule.required_purposes:
        problems["required_purposes"] = "an opt-in rule needs at least one required purpose (e.g. ad_user_data)"
    if rule.mode == "opt_out" and not rule.opt_out_purposes:
        problems["opt_out_purposes"] = "an opt-out rule needs at least one opt-out purpose (e.g. sale)"
    # Only the purpose list the mode uses is checked: the other keeps its default and is ignored.
    checked = {
        "opt_in": ("required_purposes", rule.required_purposes),
        "opt_out": ("opt_out_purposes", rule.opt_out_purposes),
    }
    if rule.mode in checked:
        name, purposes = checked[rule.mode]
        unknown = [p for p in purposes if p not in known_purposes]
        if unknown:
            problems[name] = f"unknown purposes: {', '.join(unknown)}"
    if rule.ldu != "never" and rule.mode != "opt_out":
        problems["ldu"] = "Limited Data Use only applies to opt-out rules (US states)"
    if rule.identifiers is not None:
        unknown = [key for key in rule.identifiers if key not in USER_DATA_KEYS]
        if unknown:
            problems["identifiers"] = f"not Meta user_data keys: {', '.join(unknown)}"
    return problems


@dataclass(frozen=True)
class EventFacts:
    """What the decision needs to know about one event."""

    event_id: str
    source_event: str
    occurred_at: datetime
    received_at: datetime
    region: str | None  # event context region (ISO code), else None
    profile_region: str | None  # the profile's region
    gpc: bool | None  # Sec-GPC / context.gpc; None = not sent (no preference)
    suppressed: bool  # an identifier is on the erasure suppression list


@dataclass(frozen=True)
class Decision:
    outcome: str  # "send" | "send_ldu" | "block" | "wait"
    reason_code: str
    explanation: str
    rule_id: str | int | None = None
    rule_region: str | None = None  # the selected rule's selector, e.g. "EEA"
    region_used: str | None = None  # the person's region the rule was chosen for; None = unknown
    region_source: str = "default"  # "event" | "profile" | "default" (unknown region → `*` rule)
    consent_record_ids: tuple[int | str, ...] = ()
    ldu: tuple[list[str], int, int] | None = None  # (data_processing_options, _country, _state)
    identifiers: tuple[str, ...] | None = None  # allowed user_data keys from the rule; None = all
    destination: str | int | None = None  # the rule's destination override
    mapping_id: int | str | None = None
    mapping_version: int | None = None

    @property
    def final(self) -> bool:
        """A "wait" decision is re-evaluated later; every other outcome is final."""
        return self.outcome != "wait"

    @property
    def sends(self) -> bool:
        return self.outcome in ("send", "send_ldu")

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form for `events.decision`."""
        return {
            "outcome": self.outcome,
            "reason_code": self.reason_code,
            "explanation": self.explanation,
            "rule_id": self.rule_id,
            "rule_region": self.rule_region,
            "region_used": self.region_used,
            "region_source": self.region_source,
            "consent_record_ids": list(self.consent_record_ids),
            "ldu": None
            if self.ldu is None
            else {
                "data_processing_options": list(self.ldu[0]),
                "data_processing_options_country": self.ldu[1],
                "data_processing_options_state": self.ldu[2],
            },
            "identifiers": None if self.identifiers is None else list(self.identifiers),
            "destination": self.destination,
            "mapping_id": self.mapping_id,
            "mapping_version": self.mapping_version,
        }


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_span(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 60 == 0 and seconds >= 60:
        minutes = seconds // 60
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} and {words[-1]}"


def _unique_ids(facts: Sequence[ConsentFact | None]) -> tuple[int | str, ...]:
    return tuple(dict.fromkeys(f.id for f in facts if f is not None))


def _resolve_region(event: EventFacts) -> tuple[str | None, str]:
    region = normalize_region(event.region)
    if region is not None:
        return region, "event"
    region = normalize_region(event.profile_region)
    if region is not None:
        return region, "profile"
    return None, "default"


@dataclass(frozen=True)
class _PurposeCheck:
    purpose: str
    reason_code: str | None  # None = this purpose allows sending
    sentence: str
    facts: tuple[ConsentFact | None, ...]


def _check_opt_in_purpose(ledger: ConsentLedger, purpose: str, at: datetime, now: datetime) -> _PurposeCheck:
    event_time = _fmt(at)
    fact = ledger.latest(purpose, at)
    if fact is None:
        later = ledger.granted_since(purpose, at, now)
        if later is not None:
            # Consent given after the event does not cover it (DESIGN §4.3: granted *at* occurred_at).
            return _PurposeCheck(
                purpose,
                "granted_after_event",
                f"{purpose} was granted only at {_fmt(later.collected_at)}, after the event at {event_time}",
                (later,),
            )
        return _PurposeCheck(
            purpose, "no_consent", f"no decision on {purpose} was on record at the event ({event_time})", ()
        )
    if fact.denied:
        return _PurposeCheck(
            purpose,
            "consent_denied",
            f"the person denied {purpose} at {_fmt(fact.collected_at)}, "
            + ("at the time of the event" if fact.collected_at == at else f"before the event at {event_time}"),
            (fact,),
        )
    if fact.expired(at):
        return _PurposeCheck(
            purpose,
            "consent_expired",
            f"the {purpose} consent granted at {_fmt(fact.collected_at)} expired at {_fmt(fact.expires_at)}, "
            f"before the event at {event_time}",
            (fact,),
        )
    withdrawal = ledger.withdrawn_since(purpose, at, now)
    if withdrawal is not None:
        return _PurposeCheck(
            purpose,
            "withdrawn_after_event",
            f"{purpose} was granted at {_fmt(fact.collected_at)}, but the person denied it at "
            f"{_fmt(withdrawal.collected_at)}, after the event at {event_time}",
            (fact, withdrawal),
        )
    # No denial since the event, so the decision in force now is `fact` or a later grant; it must not have lapsed.
    current = ledger.latest(purpose, now) or fact
    if current.expired(now):
        expired_at = _fmt(current.expires_at or now)
        if current is fact:
            sentence = (
                f"the {purpose} consent granted at {_fmt(fact.collected_at)} was in force at the event "
                f"({event_time}) but expired at {expired_at}"
            )
        else:
            sentence = (
                f"{purpose} was granted at {_fmt(fact.collected_at)}, in force at the event ({event_time}), but the "
                f"latest grant, given at {_fmt(current.collected_at)}, expired at {expired_at}"
            )
        return _PurposeCheck(purpose, "consent_expired", sentence, (fact, current))
    return _PurposeCheck(
        purpose,
        None,
        f"{purpose} granted at {_fmt(fact.collected_at)}",
        (fact,) if current is fact else (fact, current),
    )


def _decide_opt_in(
    ledger: ConsentLedger, rule: Rule, at: datetime, now: datetime, label: str
) -> tuple[str, str, str, tuple]:
    checks = [_check_opt_in_purpose(ledger, purpose, at, now) for purpose in rule.required_purposes]
    required = _join(list(rule.required_purposes))
    failed = [check for check in checks if check.reason_code is not None]
    if failed:
        first = failed[0]
        return (
            "block",
            first.reason_code or "",
            f"Blocked: {label} requires {required}; {first.sentence}.",
            _unique_ids([fact for check in failed for fact in check.facts]),
        )
    granted = "; ".join(check.sentence for check in checks)
    return (
        "send",
        "consent_granted",
        f"Sent: {label} requires {required}; {granted}, in force at the event ({_fmt(at)}) and not withdrawn since.",
        _unique_ids([fact for check in checks for fact in check.facts]),
    )


def _find_opt_outs(
    ledger: ConsentLedger, rule: Rule, at: datetime, now: datetime
) -> tuple[list[ConsentFact], list[ConsentFact]]:
    """(denials in force at the event, denials since the event) over the rule's opt-out purposes.

    An opt-out does not lapse by expiry: `latest()` ignores `expires_at` here, because letting a recorded opt-out
    expire would silently resume sale/sharing (consent.md §7.1 rule 3: for opt-out purposes, deny wins). Only a
    later `granted` fact (the person opting back in) ends it.
    """
    at_event: list[ConsentFact] = []
    since: list[ConsentFact] = []
    for purpose in rule.opt_out_purposes:
        fact = ledger.latest(purpose, at)
        if fact is not None and fact.denied:
            at_event.append(fact)
            continue
        later = ledger.withdrawn_since(purpose, at, now)
        if later is not None:
            since.append(later)
    return at_event, since


def _decide_opt_out(
    ledger: ConsentLedger, rule: Rule, event: EventFacts, region: str | None, at: datetime, now: datetime, label: str
) -> tuple[str, str, str, tuple, tuple[list[str], int, int] | None]:
    at_event, since = _find_opt_outs(ledger, rule, at, now)
    denials = at_event + since
    ldu = ldu_options(region)
    ldu_words = f"Limited Data Use (country {ldu[1]}, state {ldu[2]})"
    purposes = _join(list(rule.opt_out_purposes))
    if not denials and not event.gpc:
        consulted = _unique_ids([ledger.latest(p, at) for p in rule.opt_out_purposes])
        base = f"no opt-out of {purposes} on record at the event ({_fmt(at)}) or since, and no GPC signal"
        if rule.ldu == "always":
            return (
                "send_ldu",
                "ldu_always",
                f"Sent with LDU: {label}; {base}; the rule always applies {ldu_words}.",
                consulted,
                ldu,
            )
        return ("send", "no_opt_out", f"Sent: {label}; {base}.", consulted, None)

    # Which evidence names the reason: an explicit CMP/API record first, then a recorded GPC fact, then the
    # event's own GPC signal (consent.md §3: GPC = opt-out of sale, sharing and targeted advertising).
    explicit = [fact for fact in denials if fact.source != "gpc"]
    if explicit:
        fact = explicit[0]
        when = "before" if fact in at_event else "after"
        if fact.collected_at == at:
            when = "at the time of"
        cause = f"the person opted out of {fact.purpose} at {_fmt(fact.collected_at)}, {when} the event"
        gpc_reason = False
    elif denials:
        recorded = _fmt(denials[0].collected_at)
        cause = f"a Global Privacy Control signal recorded at {recorded} opts the person out of {purposes}"
        gpc_reason = True
    else:
        cause = f"the event carried a Global Privacy Control signal, an opt-out of {purposes}"
        gpc_reason = True
    prefix = "gpc_opt_out" if gpc_reason else "opted_out"
    ids = _unique_ids(denials)
    if rule.ldu in ("on_opt_out", "always"):
        return (
            "send_ldu",
            f"{prefix}_ldu",
            f"Sent with LDU: {label}; {cause}, so the event carries {ldu_words}.",
            ids,
            ldu,
        )
    return (
        "block",
        f"{prefix}_blocked",
        f"Blocked: {label}; {cause}, and this rule drops events of people who opted out.",
        ids,
        None,
    )


def decide(
    event: EventFacts,
    ledger: ConsentLedger,
    rules: Sequence[Rule],
    mappings: Mapping[str, MappingDefinition],
    now: datetime,
    grace: timedelta,
) -> Decision:
    """Decide whether `event` may be forwarded to Meta now (see the module docstring for the reason codes).

    Consent is evaluated as of the event *and* as of now (DESIGN §4.3; consent.md §6 "both must allow"). An event
    stamped in the future (client clock skew) is evaluated as of `now`, never against decisions not yet made.
    `rules` may be a `RuleTable` (a batch deciding many events selects each region's rule once).
    """
    region, region_source = _resolve_region(event)
    rule = rules.select(region) if isinstance(rules, RuleTable) else select_rule(rules, region)
    mapping = mappings.get(event.source_event)
    region_words = f"{region} (region from the {region_source})" if region else "an unknown region"

    def decision(outcome: str, reason: str, explanation: str, ids: tuple = (), ldu=None) -> Decision:
        return Decision(
            outcome=outcome,
            reason_code=reason,
            explanation=explanation,
            rule_id=rule.id if rule else None,
            rule_region=rule.region if rule else None,
            region_used=region,
            region_source=region_source,
            consent_record_ids=ids,
            ldu=ldu,
            identifiers=rule.identifiers if rule else None,
            destination=rule.destination if rule else None,
            mapping_id=mapping.id if mapping else None,
            mapping_version=mapping.version if mapping else None,
        )

    if event.suppressed:
        # Erasure (CONTRACT DELETE /profiles): the person must not re-enter Meta through later events.
        return decision(
            "block",
            "suppressed",
            "Blocked: an identifier of this person is on the erasure suppression list; nothing is forwarded for them.",
        )
    if mapping is None:
        return decision(
            "block",
            "unmapped",
            f"Blocked: no mapping exists for the source event {event.source_event!r}; "
            "unmapped events are not forwarded.",
        )
    if not mapping.enabled:
        return decision(
            "block",
            "mapping_disabled",
            f"Blocked: the mapping for {event.source_event!r} (version {mapping.version}) is disabled.",
        )
    decide_after = event.received_at + grace
    if now < decide_after:
        # DESIGN §4.4: CMP webhooks race the events they cover; wait for late consent before deciding.
        return decision(
            "wait",
            "grace_period",
            f"Waiting: received at {_fmt(event.received_at)}; consent is decided after a grace period of "
            f"{_fmt_span(grace)}, at {_fmt(decide_after)}.",
        )
    if rule is None:
        return decision(
            "block",
            "no_rule",
            f"Blocked: no forwarding rule covers {region_words} and there is no '*' rule.",
        )
    label = f"rule {rule.region} ({_MODE_LABELS.get(rule.mode, rule.mode)}) for {region_words}"
    if rule.mode == "block":
        return decision("block", "region_blocked", f"Blocked: {label} stops all forwarding for this region.")
    at = min(event.occurred_at, now)
    if rule.mode == "opt_in":
        outcome, reason, explanation, ids = _decide_opt_in(ledger, rule, at, now, label)
        return decision(outcome, reason, explanation, ids)
    if rule.mode == "opt_out":
        outcome, reason, explanation, ids, ldu = _decide_opt_out(ledger, rule, event, region, at, now, label)
        return decision(outcome, reason, explanation, ids, ldu)
    return decision("block", "rule_invalid", f"Blocked: {label} has the unknown mode {rule.mode!r}; fix the rule.")
