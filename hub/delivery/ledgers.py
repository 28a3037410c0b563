"""What the forwarding decision needs to know about the people of a whole batch, read in a few statements.

``decide_stored_event`` reads, per event, the root of the person's merged cluster
(``hub.profiles.services.canonical_profile_id``), the root's region and the cluster's consent ledger
(``hub.consent.ledger.load_ledger``): three or more round trips per event. The scheduler decides a batch of up to
1,000 events at once, so it reads the same facts for every person of the batch here: the profiles (following
merge chains hop by hop for the whole batch), the members of every cluster, and every member's consent records.

Same semantics as the per-event reads: the root is found by following ``merged_into_id`` at most 8 hops (a longer
or broken chain counts as an unknown person); a cluster is the root then the profiles merged into it, oldest first;
the ledger is the union of the members' facts (``combine_cluster``; merge denials are stored rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.consent.ledger import combine_cluster, fact_from_record
from hub.consent.models import ConsentRecord
from hub.consent.policy import ConsentFact, ConsentLedger
from hub.profiles.models import Profile

# canonical_profile_id's bound: flattened merges make one hop; more than this is a corrupted chain.
MAX_MERGE_HOPS = 8
# Ids per IN list: well below every driver's parameter limit (SQLite's is 32,766).
IN_CHUNK = 1000


@dataclass(frozen=True)
class PersonConsent:
    """One person as the decision sees them: their cluster's root, the root's region and the cluster's ledger."""

    root_id: str
    region: str | None
    ledger: ConsentLedger


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


def load_people_consent(session: Session, profile_ids: Iterable[str]) -> dict[str, PersonConsent]:
    """``PersonConsent`` for each profile id that leads to an existing root; ids that do not (erased and removed,
    or a broken merge chain) are absent — the decision treats them as an unknown person with no consent."""
    wanted = list(dict.fromkeys(profile_ids))
    if not wanted:
        return {}
    # id → (merged_into_id, region), read hop by hop for the whole batch.
    profiles: dict[str, tuple[str | None, str | None]] = {}
    ask = wanted
    for _ in range(MAX_MERGE_HOPS):
        for chunk in _chunks(ask):
            rows = session.execute(
                select(Profile.id, Profile.merged_into_id, Profile.region).where(Profile.id.in_(chunk))
            )
            for row in rows:
                profiles[row.id] = (row.merged_into_id, row.region)
        ask = list(
            {
                parent
                for parent, _region in (profiles[pid] for pid in ask if pid in profiles)
                if parent is not None and parent not in profiles
            }
        )
        if not ask:
            break

    root_of: dict[str, str] = {}
    for pid in wanted:
        current = pid
        for _ in range(MAX_MERGE_HOPS):
            known = profiles.get(current)
            if known is None:
                break  # not found: ProfileNotFound for the per-event read
            if known[0] is None:
                root_of[pid] = current
                break
            current = known[0]
    roots = sorted(set(root_of.values()))
    if not roots:
        return {}

    members: dict[str, list[str]] = {root: [root] for root in roots}
    for chunk in _chunks(roots):
        rows = session.execute(
            select(Profile.id, Profile.merged_into_id)
            .where(Profile.merged_into_id.in_(chunk))
            .order_by(Profile.created_at, Profile.id)
        )
        for row in rows:
            members[row.merged_into_id].append(row.id)

    facts: dict[str, list[ConsentFact]] = {}
    everyone = [member for cluster in members.values() for member in cluster]
    for chunk in _chunks(everyone):
        rows = session.execute(
            select(
                ConsentRecord.id,
                ConsentRecord.profile_id,
                ConsentRecord.purpose,
                ConsentRecord.status,
                ConsentRecord.collected_at,
                ConsentRecord.expires_at,
                ConsentRecord.source,
            )
            .where(ConsentRecord.profile_id.in_(chunk))
            .order_by(ConsentRecord.id)
        )
        for row in rows:
            facts.setdefault(row.profile_id, []).append(fact_from_record(row))

    people: dict[str, PersonConsent] = {}
    for root in roots:
        ledger = combine_cluster([facts[member] for member in members[root] if facts.get(member)])
        people[root] = PersonConsent(root_id=root, region=profiles[root][1], ledger=ledger)
    return {pid: people[root] for pid, root in root_of.items()}
