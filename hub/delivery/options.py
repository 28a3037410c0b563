"""Tuning of the scheduler and of retention, from ``Settings.extra`` (tests, embedding) or ``HUB_*`` variables.

* ``HUB_DELIVERY_BATCH_SIZE`` (extra ``delivery_batch_size``, default 1000): events claimed per batch.
* ``HUB_DELIVERY_LEASE_SECONDS`` (``delivery_lease_seconds``, 120): how long a claimed event belongs to its
  worker; after that its send outcome counts as unknown and it is resent (same event_id, counted).
* ``HUB_WORKER_POLL_SECONDS`` (``worker_poll_seconds``, 1): pause between polls when nothing is due.
* ``HUB_RETENTION_CONTEXT_DAYS`` (``retention_context_days``, 30, at least 8): after this many days the IP
  address, user agent and event properties are removed.
* ``HUB_RETENTION_EVENTS_DAYS`` (``retention_events_days``, 90, at least 8): after this many days sent and
  blocked events (and delivery log rows no event points to) are deleted.

The lease must outlast one request: the client's timeouts are derived from it (``request_timeout``: 3 s to
connect and 30 s to read, shortened to a quarter and a half of a shorter lease), so a live worker never loses
its lease in the middle of a request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from hub.config import ConfigError, Settings
from hub.delivery.payload import MAX_EVENTS_PER_REQUEST

MIN_LEASE_SECONDS = 2.0


@dataclass(frozen=True)
class DeliveryOptions:
    batch_size: int = MAX_EVENTS_PER_REQUEST
    lease_seconds: float = 120.0
    poll_seconds: float = 1.0
    retention_context_days: int = 30
    retention_events_days: int = 90

    @property
    def request_timeout(self) -> tuple[float, float]:
        """(connect, read) seconds for one CAPI request: well inside the lease."""
        return (min(3.05, self.lease_seconds / 4), min(30.0, self.lease_seconds / 2))


def _value(settings: Settings, env: Mapping[str, str], key: str, variable: str) -> str | None:
    if key in settings.extra:
        return str(settings.extra[key])
    raw = env.get(variable)
    return raw if raw not in (None, "") else None


def _number(raw: str | None, variable: str, default: float, minimum: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{variable} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{variable} must be at least {minimum:g}, got {raw!r}")
    return value


def delivery_options(settings: Settings, env: Mapping[str, str] | None = None) -> DeliveryOptions:
    """The options for this process; raises ConfigError naming the variable when one is unusable."""
    env = os.environ if env is None else env
    batch = _number(
        _value(settings, env, "delivery_batch_size", "HUB_DELIVERY_BATCH_SIZE"), "HUB_DELIVERY_BATCH_SIZE", 1000, 1
    )
    if batch > 10 * MAX_EVENTS_PER_REQUEST:
        raise ConfigError("HUB_DELIVERY_BATCH_SIZE must be at most 10000")
    lease = _number(
        _value(settings, env, "delivery_lease_seconds", "HUB_DELIVERY_LEASE_SECONDS"),
        "HUB_DELIVERY_LEASE_SECONDS",
        120.0,
        MIN_LEASE_SECONDS,
    )
    poll = _number(
        _value(settings, env, "worker_poll_seconds", "HUB_WORKER_POLL_SECONDS"), "HUB_WORKER_POLL_SECONDS", 1.0, 0.01
    )
    context_days = _number(
        _value(settings, env, "retention_context_days", "HUB_RETENTION_CONTEXT_DAYS"),
        "HUB_RETENTION_CONTEXT_DAYS",
        30,
        8,  # never before Meta's 7-day window has closed: a pending event still needs its IP and user agent
    )
    events_days = _number(
        _value(settings, env, "retention_events_days", "HUB_RETENTION_EVENTS_DAYS"),
        "HUB_RETENTION_EVENTS_DAYS",
        90,
        8,
    )
    return DeliveryOptions(
        batch_size=int(batch),
        lease_seconds=lease,
        poll_seconds=poll,
        retention_context_days=int(context_days),
        retention_events_days=int(events_days),
    )
