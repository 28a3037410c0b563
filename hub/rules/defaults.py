"""The region rules hub ships with — reference/consent.md §6 (a product proposal, not legal advice).

Installed on first start and editable in the admin UI / config YAML. Summary:

* EEA, GB, CH: opt-in on `ad_user_data`; no consent → drop (ePrivacy/GDPR; CH by product default).
* US states where Meta honours Limited Data Use (capi.md §7: CA CO CT DE FL MT NE NH NJ OR TX, plus MN MD RI
  which Meta's page added with state codes 1011 to 1013): opt-out; an opted-out person's events go with LDU.
* Rest of the US: opt-out; an opt-out drops the event (Meta does not honour LDU there, consent.md §6).
* Canada: opt-out (PIPEDA implied consent) — except Quebec (Law 25: profiling off by default): opt-in.
* Brazil (LGPD) and other consent-first regimes (CN, IN, JP, KR, TR): opt-in; the latter with minimal identifiers.
* `*` (any other or unknown region): opt-in on `ad_user_data` (CONTRACT: unknown region → strictest).
"""

from __future__ import annotations

from hub.rules.decision import Rule
from hub.rules.regions import LDU_STATE_CODES, ldu_options

__all__ = ["DEFAULT_RULES", "EEA_IDENTIFIERS", "LDU_STATES", "MINIMAL_IDENTIFIERS", "ldu_options"]

# consent.md §6, EEA/UK row: hashed em/ph/fn/ln/ct/st/zp/country/external_id, fbp/fbc, IP, UA (no ge/db).
EEA_IDENTIFIERS: tuple[str, ...] = (
    "em",
    "ph",
    "fn",
    "ln",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
    "fbp",
    "fbc",
    "client_ip_address",
    "client_user_agent",
)
# consent.md §6, "other consent-first regimes" row: minimal — hashed em/ph/external_id.
MINIMAL_IDENTIFIERS: tuple[str, ...] = ("em", "ph", "external_id")

# Every state Meta gives an LDU state code for is a state where LDU takes effect (capi.md §7 [DPO]). consent.md
# §5.1/§8 list only the first eleven from an older copy of Meta's page and ask to re-check MN, MD and RI; the newer
# page (upd. 2026-05-21) covers them (RI effective 2025-11-17), so they get LDU rather than a drop.
LDU_STATES: tuple[str, ...] = tuple(LDU_STATE_CODES)

_OPT_IN = ("ad_user_data",)

DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(id="default:EEA", region="EEA", mode="opt_in", required_purposes=_OPT_IN, identifiers=EEA_IDENTIFIERS),
    Rule(id="default:GB", region="GB", mode="opt_in", required_purposes=_OPT_IN, identifiers=EEA_IDENTIFIERS),
    Rule(id="default:CH", region="CH", mode="opt_in", required_purposes=_OPT_IN, identifiers=EEA_IDENTIFIERS),
    *(Rule(id=f"default:{state}", region=state, mode="opt_out", ldu="on_opt_out") for state in LDU_STATES),
    Rule(id="default:US", region="US", mode="opt_out", ldu="never"),
    Rule(id="default:CA", region="CA", mode="opt_out", ldu="never"),
    Rule(id="default:CA-QC", region="CA-QC", mode="opt_in", required_purposes=_OPT_IN),
    Rule(id="default:BR", region="BR", mode="opt_in", required_purposes=_OPT_IN),
    *(
        Rule(
            id=f"default:{country}",
            region=country,
            mode="opt_in",
            required_purposes=_OPT_IN,
            identifiers=MINIMAL_IDENTIFIERS,
        )
        for country in ("CN", "IN", "JP", "KR", "TR")
    ),
    Rule(id="default:*", region="*", mode="opt_in", required_purposes=_OPT_IN),
)
