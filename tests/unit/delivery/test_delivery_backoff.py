import random
from datetime import UTC, datetime, timedelta

import pytest

from hub.delivery.backoff import FLOOR_SPREAD, give_up_at, next_delay
from hub.delivery.payload import CapiEventInput, PayloadRejected, build_capi_event


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 15, 30), (2, 30, 60), (3, 60, 120), (5, 240, 480), (7, 960, 1920), (8, 1800, 3600), (50, 1800, 3600)],
)
def test_equal_jitter_bounds(attempt, low, high):
    rng = random.Random(attempt)
    delays = [next_delay(attempt, 30, 3600, rng) for _ in range(2000)]
    assert min(delays) >= low
    assert max(delays) <= high
    # really jittered: spread over most of the interval, not a constant
    assert max(delays) - min(delays) > (high - low) * 0.8


def test_huge_attempt_does_not_overflow():
    assert next_delay(10_000, 30, 3600, random.Random(1)) <= 3600


def test_deterministic_with_seeded_rng():
    a = [next_delay(n, 30, 3600, random.Random(7)) for n in range(1, 6)]
    b = [next_delay(n, 30, 3600, random.Random(7)) for n in range(1, 6)]
    assert a == b


def test_floor_is_honoured_above_cap_with_spread():
    rng = random.Random(3)
    delays = [next_delay(1, 30, 3600, rng, floor=7200) for _ in range(500)]
    assert min(delays) >= 7200
    assert max(delays) <= 7200 * (1 + FLOOR_SPREAD)
    assert len({round(d) for d in delays}) > 50


def test_floor_below_delay_changes_nothing():
    d1 = next_delay(6, 30, 3600, random.Random(5), floor=1)
    d2 = next_delay(6, 30, 3600, random.Random(5))
    assert d1 == d2


@pytest.mark.parametrize(
    ("attempt", "base", "cap"),
    [(0, 30, 3600), (-1, 30, 3600), (1, 0, 3600), (1, 30, 10)],
)
def test_bad_arguments(attempt, base, cap):
    with pytest.raises(ValueError):  # noqa: PT011
        next_delay(attempt, base, cap, random.Random(0))


def test_give_up_at_agrees_with_payload_window():
    occurred = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    deadline = give_up_at(occurred)
    assert occurred + timedelta(days=6, hours=23) < deadline < occurred + timedelta(days=7)
    ev = CapiEventInput(
        event_id="e",
        event_name="Lead",
        occurred_at=occurred,
        action_source="email",
        event_source_url=None,
        custom_data={},
        hashed={"external_id": "a" * 64},
        plain={},
        allowed_identifiers=None,
        ldu=None,
    )
    build_capi_event(ev, deadline)  # still sendable at the deadline
    with pytest.raises(PayloadRejected) as info:
        build_capi_event(ev, deadline + timedelta(seconds=1))
    assert info.value.code == "too_old"


def test_give_up_at_needs_aware_time():
    with pytest.raises(ValueError, match="timezone-aware"):
        give_up_at(datetime(2026, 11, 1))
