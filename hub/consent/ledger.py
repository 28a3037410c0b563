"""Loading a person's consent ledger from the database for the pure policy in ``hub.consent.policy``.

A merged person's ledger is the union of the ledgers of every profile in the cluster (the root and everything
merged into it): records are never moved on merge, so the evidence stays exactly as it was collected. The union
alone would let one device's later grant override another device's denial, so the members' ledgers are combined
with ``policy.combine_on_merge`` (DESIGN §4.2: on merge the most restrictive recent decision wins).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.consent.models import ConsentRecord
from hub.consent.policy import ConsentFact, ConsentLedger, combine_on_merge
from hub.profiles.services import canonical_profile_id, cluster_ids


def fact_from_record(record: ConsentRecord) -> ConsentFact:
    return ConsentFact(
        id=record.id,
        purpose=record.purpose,
        status=record.status,
        collected_at=record.collected_at,
        expires_at=record.expires_at,
        source=record.source,
    )


def combine_cluster(members: Sequence[Iterable[ConsentFact]]) -> ConsentLedger:
    """One ledger for a cluster from each member profile's facts (root first), folding ``combine_on_merge``."""
    if not members:
        return ConsentLedger(())
    combined = ConsentLedger(members[0])
    for facts in members[1:]:
        combined = combine_on_merge(list(combined), facts)
    return combined


def load_ledger(session: Session, profile_id: str) -> ConsentLedger:
    """The consent ledger of the person ``profile_id`` belongs to (any id of a merged cluster works)."""
    root = canonical_profile_id(session, profile_id)
    ids = cluster_ids(session, root)
    rows = session.execute(
        select(
            ConsentRecord.id,
            ConsentRecord.profile_id,
            ConsentRecord.purpose,
            ConsentRecord.status,
            ConsentRecord.collected_at,
            ConsentRecord.expires_at,
            ConsentRecord.source,
        ).where(ConsentRecord.profile_id.in_(ids) if len(ids) > 1 else ConsentRecord.profile_id == root)
    )
    by_profile: dict[str, list[ConsentFact]] = {member: [] for member in ids}
    for row in rows:
        by_profile[row.profile_id].append(
            ConsentFact(
                id=row.id,
                purpose=row.purpose,
                status=row.status,
                collected_at=row.collected_at,
                expires_at=row.expires_at,
                source=row.source,
            )
        )
    return combine_cluster([facts for facts in by_profile.values() if facts])
