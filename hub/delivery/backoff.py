"""Retry timing for transient CAPI failures (pure; the random source is passed in).

Jitter choice: *equal jitter* — the n-th retry waits a random time in [step/2, step] where
step = min(cap, base * 2**(n-1)). Chosen over the alternatives the usual analysis (AWS, "Exponential Backoff
And Jitter") compares:

- full jitter (uniform in [0, step]) spreads retries best but may retry almost at once; Meta says continued
  calls while limited extend the block (reference/capi.md §10), and the contract promises a first retry after
  about ``HUB_RETRY_BASE_SECONDS``;
- decorrelated jitter needs the previous delay, but the outbox only stores the attempt count, so a pure
  function of (attempt, rng) cannot compute it.

Equal jitter keeps a guaranteed minimum while still de-synchronising batches that failed together (e.g. during a
Meta outage).
"""

from __future__ import annotations

import random
from datetime import datetime

from hub.delivery.payload import MAX_EVENT_AGE, SEND_SAFETY_MARGIN

# 2**62 * base overflows nothing and is far beyond any sane cap; larger exponents are clamped.
_MAX_EXPONENT = 62
# When Meta names a wait (usage headers), many batches receive the same figure; spread them over up to 10 % more
# so they don't all come back in the same second.
FLOOR_SPREAD = 0.10


def next_delay(attempt: int, base: float, cap: float, rng: random.Random, floor: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    ``floor`` is a minimum wait suggested by Meta (see ``errors.parse_usage_headers``); it is honoured even above
    ``cap``, because retrying earlier than Meta asks only extends the throttling.
    """
    if attempt < 1:
        raise ValueError("attempt counts retries and starts at 1")
    if base <= 0 or cap < base:
        raise ValueError("need 0 < base <= cap")
    step = min(cap, base * 2 ** min(attempt - 1, _MAX_EXPONENT))
    delay = rng.uniform(step / 2, step)
    if floor is not None and floor > delay:
        delay = floor + rng.uniform(0, floor * FLOOR_SPREAD)
    return delay


def give_up_at(occurred_at: datetime) -> datetime:
    """The last moment a retry may be sent: Meta's 7-day window minus hub's in-flight safety margin.

    After it, ``build_capi_event`` would refuse the event as ``too_old`` (same constants), so the dispatcher
    dead-letters instead of scheduling a retry that could never be sent (checklist 26).
    """
    if occurred_at.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    return occurred_at + MAX_EVENT_AGE - SEND_SAFETY_MARGIN
