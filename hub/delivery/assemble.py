"""From a decided event, its mapping and the person's identifiers to the input of the CAPI payload builder (pure).

Identifiers sent for an event (DESIGN §4.2, reference/capi.md §5):

1. the event's own values, as ingestion stored them (``user_data_encrypted`` = ``{"hashes": {...}, "browser":
   {...}}``: hashes of em/ph/fn/.../external_id, and fbp, fbc, client_ip_address, client_user_agent in clear);
2. enriched with the person's cluster: the stored identities (email → ``em``, phone → ``ph``, external_id →
   ``external_id`` — already SHA-256 of the normalized value) and the profile traits (normalized plaintext,
   hashed here exactly once). An event's own value comes first; multi-valued keys become arrays of distinct
   values (checklist 18). A trait only fills a key the event does not carry (the event describes this moment).
   fbp/fbc identities are hashes of browser ids and cannot be sent (Meta wants them verbatim), so they are not
   used;
3. then the builder keeps only the rule's allowed identifiers (``decision.identifiers``) and applies LDU from the
   decision (``[]`` when none, reference/capi.md §7).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.delivery.payload import HASHED_KEYS, PLAIN_KEYS, CapiEventInput
from hub.mappings.apply import MappedEvent
from hub.profiles.normalize import sha256_hex

# identities.kind → CAPI user_data key (only the kinds whose stored hash is what Meta expects).
IDENTITY_KEYS: Mapping[str, str] = {"email": "em", "phone": "ph", "external_id": "external_id"}
# Profile traits are stored normalized under their CAPI keys (hub.profiles.identifiers.TRAIT_KEYS).
TRAIT_KEYS: tuple[str, ...] = ("fn", "ln", "ge", "db", "ct", "st", "zp", "country")
# Meta accepts several values for these keys; an array holds at most this many (a person has few emails).
MAX_VALUES_PER_KEY = 5

_HASHED = frozenset(HASHED_KEYS)
_PLAIN = frozenset(PLAIN_KEYS)


@dataclass(frozen=True)
class PersonIdentifiers:
    """What the person's profile cluster adds: (kind, value_hash) identities and normalized traits."""

    identities: Sequence[tuple[str, str]] = ()
    traits: Mapping[str, str] | None = None


def merge_identifiers(
    event_user_data: Mapping[str, Any] | None, person: PersonIdentifiers | None
) -> tuple[dict[str, str | list[str]], dict[str, str]]:
    """(hashed, plain) user_data values for one event: its own values enriched with the person's."""
    own_hashes: Mapping[str, Any] = {}
    browser: Mapping[str, Any] = {}
    if event_user_data:
        own_hashes = event_user_data.get("hashes") or {}
        browser = event_user_data.get("browser") or {}
    values: dict[str, list[str]] = {}

    def add(key: str, digest: object) -> None:
        if key not in _HASHED or not isinstance(digest, str) or not digest:
            return
        bucket = values.setdefault(key, [])
        if digest not in bucket and len(bucket) < MAX_VALUES_PER_KEY:
            bucket.append(digest)

    for key, digest in own_hashes.items():
        if isinstance(digest, list | tuple):
            for item in digest:
                add(key, item)
        else:
            add(key, digest)
    if person is not None:
        for kind, digest in person.identities:
            key = IDENTITY_KEYS.get(kind)
            if key is not None:
                add(key, digest)
        for key in TRAIT_KEYS:
            if key in values:
                continue
            trait = (person.traits or {}).get(key)
            if isinstance(trait, str) and trait:
                # Traits are stored normalized (Meta's rules, DESIGN §4.1); hashed here, once.
                add(key, sha256_hex(trait))
    hashed: dict[str, str | list[str]] = {k: v[0] if len(v) == 1 else v for k, v in values.items() if v}
    plain = {k: v for k, v in browser.items() if k in _PLAIN and isinstance(v, str) and v}
    return hashed, plain


def ldu_from_decision(decision: Mapping[str, Any] | None) -> tuple[list[str], int, int] | None:
    """The LDU triple stored in ``events.decision["ldu"]``; None means "no LDU" (sent as ``[]``)."""
    ldu = (decision or {}).get("ldu")
    if not isinstance(ldu, Mapping):
        return None
    options = list(ldu.get("data_processing_options") or [])
    if not options:
        return None
    return (options, ldu.get("data_processing_options_country"), ldu.get("data_processing_options_state"))  # type: ignore[return-value]


def capi_input(
    *,
    event_id: str,
    occurred_at: datetime,
    source_url: str | None,
    mapped: MappedEvent,
    hashed: Mapping[str, str | Sequence[str]],
    plain: Mapping[str, str],
    allowed_identifiers: Iterable[str] | None,
    ldu: tuple[Sequence[str], int, int] | None,
) -> CapiEventInput:
    """The builder's input for one decided event. ``event_id`` is the stored one: the same on every retry."""
    return CapiEventInput(
        event_id=event_id,
        event_name=mapped.event_name,
        occurred_at=occurred_at,
        action_source=mapped.action_source,
        event_source_url=source_url,
        custom_data=mapped.custom_data,
        hashed=hashed,
        plain=plain,
        allowed_identifiers=None if allowed_identifiers is None else tuple(allowed_identifiers),
        ldu=ldu,
    )
